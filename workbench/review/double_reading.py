"""Double reading: a share of the queue is judged by two reviewers blind to each other, their agreement is
measured per class, and an adjudicator settles what they disagree on.

* **Which items**: an item (label set x class) is double-read when a hash of its scan x class falls below
  the workspace's share (:func:`set_share`, default :data:`DEFAULT_SHARE`, 10 %): stable across runs and
  processes. Each item is planned once (``reading_plan``), when it enters the queue; changing the share
  plans only items not yet planned, so nobody's reading changes meaning afterwards.
* **Readers**: the first two reviewers with a standing decision (not ``skip``) on a double-read item are its
  readers; ``record_decision`` needs nothing more. Reader B's queue (``queue(ws, reader="B")``) does not show
  A's decision, and the item stays pending for B until B decides. While only one has read, or while they
  disagree, the item has no verdict, so the assembly rule treats it as undecided; a reader's correction
  (a ``revised`` label set) counts only once the item's verdict is ``corrected`` (``held_revision``).
* **Agreement**: equal decisions agree; two corrections agree when the Dice of the two readers' masks is at
  least :data:`DEFAULT_AGREEMENT_DICE` (stored with the pair, ``reading_dice``). The readers' common
  decision is the verdict.
* **Adjudication**: disagreements form the adjudication list (:func:`adjudication_list`); a third reviewer's
  decision on the item (:func:`adjudicate`) is its verdict.

Example:
    >>> set_share(ws, 0.2)  # doctest: +SKIP
    >>> agreement(ws)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pandas as pd

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench.review.decisions import record_decision
from workbench.review.requeue import check_requeue, class_mask, masks_dice
from workbench.review.validation import validate_reviewer

#: Share of items read by two reviewers unless the workspace sets another (:func:`set_share`).
DEFAULT_SHARE = 0.10

#: Two readers' corrections agree when the Dice of their masks is at least this.
DEFAULT_AGREEMENT_DICE = 0.9

#: Columns of :func:`agreement`.
AGREEMENT_COLUMNS = (
    "class_name",
    "pairs",
    "agreement",
    "kappa",
    "corrected_pairs",
    "inter_reader_dice",
    "disagreements",
    "adjudicated",
)


def chosen(scan_id: str, class_name: str, share: float) -> bool:
    """Whether a scan x class is double-read at ``share``: the first 8 bytes of SHA-256 of
    ``"<scan_id>|<class_name>"``, read as a fraction of 2**64, fall below it.

    Args:
        scan_id / class_name: the scan x class.
        share: the double-read share, 0..1.

    Returns:
        True for about ``share`` of all scan x class pairs, the same ones every time.
    """
    digest = hashlib.sha256(f"{scan_id}|{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def share(ws: Workspace) -> float:
    """The workspace's double-read share (:data:`DEFAULT_SHARE` until :func:`set_share` stores another)."""
    stored = ws.catalog.double_read_share()
    return DEFAULT_SHARE if stored is None else stored


def set_share(ws: Workspace, value: float) -> int:
    """Store the double-read share and plan the items not planned yet with it.

    Args:
        ws: the workspace.
        value: the share of items two reviewers read, 0..1.

    Returns:
        How many of the newly planned items are double-read.

    Raises:
        HarmonizeError: ``value`` is outside 0..1.
    """
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
        raise HarmonizeError(ws.catalog.path, f"double-read share must be between 0 and 1, got {value!r}")
    ws.catalog.set_double_read_share(float(value))
    return plan_items(ws)


def plan_items(ws: Workspace, label_set_ids: Sequence[str] | None = None) -> int:
    """Plan the queue items that have no plan and no review yet: double-read or single (one transaction).

    Args:
        ws: the workspace.
        label_set_ids: only items of these label sets (the run driver passes the one it wrote).

    Returns:
        How many of them are double-read.
    """
    todo = ws.catalog.unplanned_items(label_set_ids)
    if todo.empty:
        return 0
    at = share(ws)
    rows = [
        {**r, "double_read": chosen(str(r["scan_id"]), str(r["class_name"]), at), "share": at}
        for r in todo.to_dict("records")
    ]
    ws.catalog.add_reading_plan(rows)
    return sum(bool(r["double_read"]) for r in rows)


def measure_pairs(ws: Workspace, threshold: float = DEFAULT_AGREEMENT_DICE) -> int:
    """Compute the inter-reader Dice of every pair of corrections not measured yet (one transaction).

    Args:
        ws: the workspace.
        threshold: the agreement threshold stored with each pair.

    Returns:
        The number of pairs measured.
    """
    rows = []
    for r in ws.catalog.unmeasured_reading_pairs().to_dict("records"):
        cls = str(r["class_name"])
        a = class_mask(ws, str(r["mask_a"]), str(r["state_a"]), cls)
        b = class_mask(ws, str(r["mask_b"]), str(r["state_b"]), cls)
        rows.append({**r, "dice": masks_dice(a, b), "threshold": float(threshold)})
    ws.catalog.add_reading_dice(rows)
    return len(rows)


def items(ws: Workspace, class_name: str | None = None) -> pd.DataFrame:
    """Every double-read item with its two readings, inter-reader Dice, adjudication and ``state``
    (``reading``, ``agreed``, ``disagreed``, ``adjudicated``); pairs are measured first.

    Args:
        ws: the workspace.
        class_name: only this class (None: all).

    Returns:
        The rows of ``Catalog.double_read_items``.
    """
    measure_pairs(ws)
    return ws.catalog.double_read_items(class_name)


def adjudication_list(ws: Workspace) -> pd.DataFrame:
    """The double-read items whose readers disagree and that no adjudicator has decided yet.

    Returns:
        The rows of :func:`items` whose ``state`` is ``disagreed``.
    """
    df = items(ws)
    return df[df["state"] == "disagreed"].reset_index(drop=True)


def adjudicate(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    label_set_id: str,
    decision: str,
    reviewer: str,
    comment: str | None = "",
) -> str:
    """Settle a disagreement: the adjudicator's decision becomes the item's verdict.

    Args:
        ws: the workspace.
        scan_id / class_name / label_set_id: the double-read item.
        decision: ``accept``, ``reject``, ``needs_correction`` (a correction: ``review.correct`` by the
            adjudicator on the same item).
        reviewer: the adjudicator, not one of the two readers.
        comment: why.

    Returns:
        The review id.

    Raises:
        HarmonizeError: the item is not on the adjudication list, or the adjudicator is one of its readers.
    """
    name = validate_reviewer(ws, reviewer)
    df = items(ws)
    row = df[(df["label_set_id"] == label_set_id) & (df["class_name"] == class_name)]
    if row.empty or row["state"].iloc[0] != "disagreed":
        raise HarmonizeError(
            ws.catalog.path,
            f"{class_name} of {scan_id} ({label_set_id}) is not on the adjudication list: its two readers "
            "have not both read it, or they agree",
        )
    readers = {str(row["reader_a"].iloc[0]), str(row["reader_b"].iloc[0])}
    if name in readers:
        raise HarmonizeError(
            ws.catalog.path, f"{name} read {class_name} of {scan_id}; a third reviewer must adjudicate it"
        )
    return record_decision(ws, scan_id, class_name, label_set_id, decision, name, comment)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two readers' categorical decisions on the same items.

    Args:
        a / b: one decision per item for reader A and reader B (same length, > 0).

    Returns:
        ``(p_o - p_e) / (1 - p_e)``; 1.0 when both readers used one and the same category throughout, NaN
        for no items.
    """
    n = len(a)
    if n == 0 or n != len(b):
        return math.nan
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in set(a) | set(b))
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else math.nan
    return (observed - expected) / (1.0 - expected)


def agreement(ws: Workspace) -> pd.DataFrame:
    """Inter-reader agreement per class over the double-read items both readers read, plus an ``all`` row.

    Returns:
        Columns :data:`AGREEMENT_COLUMNS`: ``pairs`` (items with two readings), ``agreement`` (share of
        pairs with the same decision), ``kappa`` (Cohen's kappa over the decisions), ``corrected_pairs``
        and ``inter_reader_dice`` (mean Dice of the two readers' masks where both corrected; NaN without
        such pairs), ``disagreements`` (pairs that do not agree, Dice included), ``adjudicated``. Empty
        without any pair.
    """
    df = items(ws)
    df = df[df["readings"] >= 2]
    rows = [_agreement_row(str(cls), g) for cls, g in df.groupby("class_name", sort=True)]
    if rows:
        rows.append(_agreement_row("all", df))
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def _agreement_row(class_name: str, g: pd.DataFrame) -> dict[str, object]:
    corrected = g[(g["decision_a"] == "corrected") & (g["decision_b"] == "corrected")]
    dice = pd.to_numeric(corrected["reading_dice"], errors="coerce").dropna()
    same = g["decision_a"] == g["decision_b"]
    return {
        "class_name": class_name,
        "pairs": len(g),
        "agreement": float(same.mean()),
        "kappa": cohen_kappa(g["decision_a"].astype(str).tolist(), g["decision_b"].astype(str).tolist()),
        "corrected_pairs": len(corrected),
        "inter_reader_dice": float(dice.mean()) if len(dice) else math.nan,
        "disagreements": int((g["state"] == "disagreed").sum() + (g["state"] == "adjudicated").sum()),
        "adjudicated": int((g["state"] == "adjudicated").sum()),
    }


def agreement_line(ws: Workspace) -> str:
    """One summary line of :func:`agreement` (the demo's and the CLI's), e.g. ``double reading: 12 pairs,
    decisions agree 0.83, kappa 0.61, inter-reader Dice 0.91 (5 corrected pairs), 2 disagreements, 1
    adjudicated``."""
    df = agreement(ws)
    if df.empty:
        return f"double reading: no item read twice yet (share {share(ws):.0%})"
    r = df[df["class_name"] == "all"].iloc[0]
    dice = "n/a" if math.isnan(float(r["inter_reader_dice"])) else f"{float(r['inter_reader_dice']):.2f}"
    kappa = "n/a" if math.isnan(float(r["kappa"])) else f"{float(r['kappa']):.2f}"
    return (
        f"double reading (share {share(ws):.0%}): {int(r['pairs'])} pairs, "
        f"decisions agree {float(r['agreement']):.2f}, "
        f"kappa {kappa}, inter-reader Dice {dice} ({int(r['corrected_pairs'])} corrected pairs), "
        f"{int(r['disagreements'])} disagreements, {int(r['adjudicated'])} adjudicated"
    )


def upkeep(ws: Workspace) -> None:
    """What the queue needs before it lists: plan new items, measure new pairs of corrections, check items
    of decided scan x classes against the decision (``requeue.check_requeue``). Each step writes only when
    it finds work, in one transaction."""
    plan_items(ws)
    measure_pairs(ws)
    check_requeue(ws)


def enter_queue(ws: Workspace, label_set_id: str) -> None:
    """What the pseudo-label run driver calls once a label set's queue items are stored: plan them for
    single or double reading and check them against earlier decisions of their scan x classes."""
    plan_items(ws, [label_set_id])
    check_requeue(ws, label_set_ids=[label_set_id])
