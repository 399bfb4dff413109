"""The review queue: uncertainty items ranked by their score, with reasons in words.

The scores come from ``workbench.pseudolabel.scoring`` (imported here so the queue keeps working until
this module moves to the review wing). ``rank`` never serves an item whose label set version a reviewer
already decided (a ``review`` row on the same scan, class and label set that was not undone).
"""

from __future__ import annotations

import json

import pandas as pd

from storage.workspace import Workspace
from workbench.pseudolabel.scoring import (  # noqa: F401 (re-exported until the review wing moves this module)
    DEFAULT_LONG_TAIL_BOOST,
    MIN_RUN_ITEMS,
    REASON_SEVERITY,
    WEIGHTS,
    _volume_z,
    add_run_statistics,
    assess,
    rescore,
    severities,
)


def annotated_counts(ws: Workspace) -> dict[str, int]:
    """Class name -> scans whose current original labels annotate it (present or absent)."""
    df = ws.catalog.long_tail()
    return {str(r["class_name"]): int(r["annotated"]) for r in df.to_dict("records")}


def rank(
    ws: Workspace,
    run_id: str | None = None,
    *,
    long_tail_boost: float = DEFAULT_LONG_TAIL_BOOST,
    limit: int | None = None,
    include_decided: bool = False,
) -> pd.DataFrame:
    """The review queue: uncertainty items scored from their stored signals, highest first.

    Args:
        ws: the workspace.
        run_id: only items of this pseudo-label run (default: every run).
        long_tail_boost: see :func:`assess`.
        limit: at most this many items.
        include_decided: also list items a reviewer already decided (for audits); never in the default.

    Returns:
        DataFrame with ``scan_id, class_name, run_id, label_set_id, score, reasons`` (list of str),
        ``summary`` (``"kidney_left: volume 3.1 sd above the catalog mean; 2 components"``) and ``signals``
        (dict), sorted by score (then scan, class).
    """
    where, params = [], []
    if run_id is not None:
        where.append("u.run_id = ?")
        params.append(run_id)
    if not include_decided:
        where.append("d.scan_id IS NULL")
    sql = f"""
        WITH standing AS (
            SELECT DISTINCT r.scan_id, r.class_name, r.label_set_id FROM review r
            WHERE r.decision <> 'undo'
              AND r.id NOT IN (SELECT undo_of FROM review WHERE decision = 'undo' AND undo_of IS NOT NULL)
        )
        SELECT u.scan_id, u.class_name, u.run_id, u.label_set_id, u.signals
        FROM uncertainty u
        LEFT JOIN standing d
          ON d.scan_id = u.scan_id AND d.class_name = u.class_name AND d.label_set_id = u.label_set_id
        {"WHERE " + " AND ".join(where) if where else ""}
    """
    df = ws.catalog.query(sql, params)
    counts = annotated_counts(ws)
    records = df.to_dict("records")
    for r in records:
        r["signals"] = json.loads(r["signals"]) if r["signals"] else {}
    add_run_statistics(records)
    rows = []
    for r in records:
        signals = r["signals"]
        score, reasons = assess(r["class_name"], signals, counts.get(r["class_name"], 0), long_tail_boost)
        summary = r["class_name"] + (": " + "; ".join(reasons) if reasons else ": no specific finding")
        rows.append({**r, "signals": signals, "score": score, "reasons": reasons, "summary": summary})
    cols = ["scan_id", "class_name", "run_id", "label_set_id", "score", "reasons", "summary", "signals"]
    out = pd.DataFrame(rows, columns=cols)
    out = out.sort_values(["score", "scan_id", "class_name"], ascending=[False, True, True], kind="stable")
    out = out.reset_index(drop=True)
    return out.head(limit) if limit is not None else out


def format_queue(df: pd.DataFrame, top: int) -> list[str]:
    """Printable lines: rank, score, scan and the item's summary."""
    lines = []
    for i, r in enumerate(df.head(top).to_dict("records"), start=1):
        lines.append(f"{i:4d}  {r['score']:.3f}  {r['scan_id']}  {r['summary']}")
    return lines or ["the queue is empty (no undecided uncertainty items)"]
