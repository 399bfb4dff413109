"""Review of labels: decisions, corrections, quick fixes, undo, the ranked queue, 3D Slicer round trips.

Every write keeps history; nothing is overwritten or deleted:

* A decision (``accept`` / ``reject`` / ``needs_correction`` / ``skip``) is one ``review`` row naming the
  scan, the class, the label set version it judged, the reviewer and the time.
* A correction is a NEW label set of origin ``revised`` (``parent_id`` = the label set it corrects) plus a
  ``corrected`` review row pointing at it (``result_label_set_id``). The revised set holds the corrected
  class and, when the base is an ``original`` or ``revised`` set, a copy of the base's other classes
  (masks, coverage, statistics), so it is a complete version. Classes of a ``pseudo`` base are NOT copied
  (they stay ``not_annotated`` in the revised set): a correction of one class must not promote the
  model's other, unreviewed guesses above the original labels (training priority is revised > original >
  pseudo, per class).
* Undo is an ``undo`` review row (``undo_of`` = the reversed review). Undoing a decision puts the item
  back in the queue. Undoing a correction writes one more ``revised`` label set (parent = the undone
  one) that restores the class as it was current just before the correction (same mask and coverage
  state), so the previous content is current again under the per-class priority rule without deleting
  the undone version. The restored class then carries origin ``revised`` (a reviewer's explicit choice).

The current label of a scan x class (:func:`current_label_set`) follows the training-set rule: the newest
label set of the highest-priority origin whose coverage knows the class.

Each write is one short catalog transaction (the catalog retries while another process holds the DuckDB
lock), so two reviewers and a background pseudo-labelling job never lose a decision.

Example:
    >>> rid = record_decision(ws, "kits23:00001", "liver", "ls-abc", "accept", "Dr Ada", "")  # doctest: +SKIP
    >>> undo(ws, rid, "Dr Ada")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import html
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.readers import read_volume
from harmonize.stats import class_stats
from harmonize.taxonomy import class_by_name, class_names
from storage.catalog import LabelSetRecord, utc_now
from storage.workspace import Workspace

DECISIONS = ("accept", "reject", "needs_correction", "skip")
#: Every value of ``review.decision``: the four above, plus what corrections and undo record.
ALL_DECISIONS = (*DECISIONS, "corrected", "undo")
#: Queue status filter values: ``pending`` (no standing decision on that label set version), ``decided``
#: (any standing decision), ``all``, or one standing decision.
QUEUE_STATUSES = ("pending", "decided", "all", *DECISIONS, "corrected")
#: Affine entries of an imported correction may differ from the scan's by this much (mm).
GEOMETRY_TOLERANCE_MM = 1e-2
MAX_REVIEWER_LEN = 64
MAX_COMMENT_LEN = 2000

# Letters (any script), digits, space and . ' - _ @ only: no markup, quotes or control characters.
_REVIEWER_RE = re.compile(r"[^\W][\w .'@-]*", re.UNICODE)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_VERSION_RETRIES = 8


@dataclass(frozen=True)
class Correction:
    """What :func:`correct` wrote: the ``corrected`` review row and the new ``revised`` label set."""

    review_id: str
    label_set_id: str


# ---------------------------------------------------------------------------------------- validation


def validate_reviewer(ws: Workspace, reviewer: str) -> str:
    """The reviewer name stripped, or :class:`HarmonizeError` (naming the catalog) when it is empty, longer
    than :data:`MAX_REVIEWER_LEN`, or holds markup, quotes, slashes or control characters."""
    name = reviewer.strip() if isinstance(reviewer, str) else ""
    if not name or len(name) > MAX_REVIEWER_LEN or not _REVIEWER_RE.fullmatch(name):
        raise HarmonizeError(
            ws.catalog.path,
            f"reviewer name {reviewer!r} is not allowed: use 1-{MAX_REVIEWER_LEN} letters, digits, spaces "
            "and . ' - _ @ (no markup, quotes, slashes or control characters)",
        )
    return name


def validate_comment(ws: Workspace, comment: str | None) -> str:
    """The comment stripped ('' for None); refuses control characters (tab and newline are fine) and
    more than :data:`MAX_COMMENT_LEN` characters. Markup is kept as text: displays escape it."""
    text = (comment or "").strip()
    if len(text) > MAX_COMMENT_LEN or _CONTROL_RE.search(text):
        raise HarmonizeError(
            ws.catalog.path,
            f"comment is not allowed: at most {MAX_COMMENT_LEN} characters, no control characters",
        )
    return text


def escape(text: object) -> str:
    """HTML-escape anything a reviewer typed before it is shown in a page."""
    return html.escape("" if text is None else str(text), quote=True)


def _check_class(ws: Workspace, class_name: str) -> str:
    try:
        return class_by_name(class_name).name
    except KeyError as e:
        raise HarmonizeError(ws.catalog.path, str(e.args[0])) from None


def _label_set_row(ws: Workspace, label_set_id: str, scan_id: str | None = None) -> dict[str, Any]:
    df = ws.catalog.query("SELECT * FROM label_set WHERE id = ?", [label_set_id])
    if df.empty:
        raise HarmonizeError(ws.catalog.path, f"no label set {label_set_id!r} in the catalog")
    row = df.iloc[0].to_dict()
    if scan_id is not None and row["scan_id"] != scan_id:
        raise HarmonizeError(
            ws.catalog.path, f"label set {label_set_id!r} belongs to scan {row['scan_id']}, not {scan_id}"
        )
    return row


def scan_row(ws: Workspace, scan_id: str) -> dict[str, Any]:
    """The catalog row of ``scan_id`` (``shape``, ``affine`` as 16 row-major floats, ``image_path``, ...)."""
    df = ws.catalog.query("SELECT * FROM scan WHERE id = ?", [scan_id])
    if df.empty:
        raise HarmonizeError(ws.catalog.path, f"no scan {scan_id!r} in the catalog")
    return df.iloc[0].to_dict()


def scan_affine(row: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) voxel -> RAS+ mm affine of a scan row."""
    return np.asarray(list(row["affine"]), dtype=np.float64).reshape(4, 4)


def current_label_set(ws: Workspace, scan_id: str, class_name: str) -> str | None:
    """The label set that is current for one scan x class: highest origin priority (revised > original >
    pseudo), newest version, among label sets whose coverage knows the class; None when none does."""
    df = ws.catalog.query(
        """
        SELECT l.id FROM label_set l JOIN class_coverage c ON c.label_set_id = l.id
        WHERE l.scan_id = ? AND c.class_name = ? AND c.state <> 'not_annotated'
        ORDER BY CASE l.origin WHEN 'revised' THEN 3 WHEN 'original' THEN 2 ELSE 1 END DESC, l.version DESC
        LIMIT 1
        """,
        [scan_id, class_name],
    )
    return None if df.empty else str(df["id"].iloc[0])


# ------------------------------------------------------------------------------------------ decisions


def _insert_review(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    label_set_id: str,
    decision: str,
    comment: str,
    reviewer: str,
    result_label_set_id: str | None = None,
    undo_of: str | None = None,
) -> str:
    review_id = "rv-" + uuid.uuid4().hex[:20]
    with ws.catalog.transaction() as con:
        con.execute(
            "INSERT INTO review (id, scan_id, class_name, label_set_id, decision, comment, reviewer, "
            "result_label_set_id, created_at, undo_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                review_id,
                scan_id,
                class_name,
                label_set_id,
                decision,
                comment,
                reviewer,
                result_label_set_id,
                utc_now(),
                undo_of,
            ],
        )
    return review_id


def record_decision(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    label_set_id: str,
    decision: str,
    reviewer: str,
    comment: str | None = "",
) -> str:
    """Record a reviewer's decision on one scan x class of one label set version; returns the review id.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.
        class_name: universal class name.
        label_set_id: the label set version that was judged (must belong to the scan).
        decision: one of :data:`DECISIONS`.
        reviewer: who decided (validated by :func:`validate_reviewer`).
        comment: free text (validated by :func:`validate_comment`).

    Raises:
        HarmonizeError: unknown decision, class, scan or label set; a bad reviewer name or comment.
            Nothing is stored then.
    """
    if decision not in DECISIONS:
        raise HarmonizeError(ws.catalog.path, f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    name = validate_reviewer(ws, reviewer)
    text = validate_comment(ws, comment)
    class_name = _check_class(ws, class_name)
    _label_set_row(ws, label_set_id, scan_id)
    return _insert_review(ws, scan_id, class_name, label_set_id, decision, text, name)


def reviews(ws: Workspace, scan_id: str | None = None, class_name: str | None = None) -> pd.DataFrame:
    """Review rows (newest first) with ``undone`` (bool: a later undo reversed it)."""
    where, params = [], []
    if scan_id is not None:
        where.append("r.scan_id = ?")
        params.append(scan_id)
    if class_name is not None:
        where.append("r.class_name = ?")
        params.append(class_name)
    sql = (
        "SELECT r.*, r.id IN (SELECT undo_of FROM review WHERE decision = 'undo') AS undone FROM review r"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY r.created_at DESC, r.id DESC"
    )
    return ws.catalog.query(sql, params)


# -------------------------------------------------------------------------------------- corrections


def _stats_rows(ws: Workspace, label_set_id: str, exclude: str) -> list[dict[str, Any]]:
    df = ws.catalog.query(
        "SELECT * FROM class_stats WHERE label_set_id = ? AND class_name <> ?", [label_set_id, exclude]
    )
    return [
        {
            "name": r["class_name"],
            "voxels": int(r["voxels"]),
            "volume_ml": float(r["volume_ml"]),
            "components": int(r["components"]),
            "bbox": [int(v) for v in r["bbox"]],
            "centroid_mm": [float(v) for v in r["centroid_mm"]],
            "hu_mean": float("nan") if pd.isna(r["hu_mean"]) else float(r["hu_mean"]),
            "hu_std": float("nan") if pd.isna(r["hu_std"]) else float(r["hu_std"]),
        }
        for r in df.to_dict("records")
    ]


def _write_revised(
    ws: Workspace,
    scan: Mapping[str, Any],
    base: Mapping[str, Any],
    class_name: str,
    mask: np.ndarray,
    state: str,
    author: str,
    note: str,
    image: np.ndarray | None,
) -> str:
    """Write a revised label set: ``class_name`` = ``mask`` with ``state``; the base's other classes
    copied unless the base is pseudo. Masks first (atomic file), then one catalog transaction."""
    shape = tuple(int(s) for s in scan["shape"])
    affine = scan_affine(scan)
    base_cov = ws.catalog.coverage(str(base["id"]))
    copy_others = base["origin"] != "pseudo"
    coverage = {n: NOT_ANNOTATED for n in class_names()}
    masks: dict[str, np.ndarray] = {}
    stats: list[dict[str, Any]] = []
    if copy_others:
        coverage.update({n: s for n, s in base_cov.items() if n != class_name})
        stored = set(ws.masks.names(str(base["mask_key"])))
        others = [n for n in class_names() if n != class_name and coverage[n] == ANNOTATED_PRESENT]
        masks.update(ws.masks.read_many(str(base["mask_key"]), [n for n in others if n in stored]))
        stats += _stats_rows(ws, str(base["id"]), class_name)
    coverage[class_name] = state
    if state == ANNOTATED_PRESENT:
        masks[class_name] = mask
        stats.append(class_stats(class_name, mask, affine, image).as_dict())
    ls_id = "ls-" + uuid.uuid4().hex[:20]
    ws.masks.write_label_set(ls_id, masks, shape)  # type: ignore[arg-type]
    try:
        for attempt in range(_VERSION_RETRIES):
            version = int(
                ws.catalog.query(
                    "SELECT coalesce(max(version), 0) AS v FROM label_set WHERE scan_id = ?", [scan["id"]]
                )["v"].iloc[0]
            )
            record = LabelSetRecord(
                id=ls_id,
                scan_id=str(scan["id"]),
                version=version + 1,
                origin="revised",
                mask_key=ls_id,
                parent_id=str(base["id"]),
                author=author,
                midline_x_mm=None if pd.isna(base.get("midline_x_mm")) else float(base["midline_x_mm"]),
                notes=(note,),
            )
            try:
                ws.catalog.add_label_set(record, coverage, stats)
                break
            except duckdb.ConstraintException:
                # Another reviewer took this version number between our read and our write: take the next.
                if attempt == _VERSION_RETRIES - 1:
                    raise
    except BaseException:
        ws.masks.delete(ls_id)  # the catalog refused: leave no orphan mask file
        raise
    return ls_id


def correct(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    new_mask: np.ndarray,
    reviewer: str,
    comment: str | None = "",
    base_label_set_id: str | None = None,
    *,
    image: np.ndarray | None = None,
) -> Correction:
    """Store a corrected mask of one class as a new ``revised`` label set and a ``corrected`` review row.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.
        class_name: the corrected universal class.
        new_mask: (i, j, k) bool (or 0/1 integer) mask on the scan's grid, in file voxel order; an empty
            mask records the class as ``annotated_absent``.
        reviewer: who corrected it.
        comment: free text.
        base_label_set_id: the label set that was corrected (default: :func:`current_label_set`, else the
            scan's newest label set).
        image: the (i, j, k) CT in HU, for the HU statistics of the class (NaN without it).

    Returns:
        The :class:`Correction` (review id, new label set id).

    Raises:
        HarmonizeError: bad reviewer/comment, unknown scan, class or label set, or a mask of the wrong
            shape or values. Nothing is stored then.
    """
    name = validate_reviewer(ws, reviewer)
    text = validate_comment(ws, comment)
    class_name = _check_class(ws, class_name)
    scan = scan_row(ws, scan_id)
    shape = tuple(int(s) for s in scan["shape"])
    mask = np.asarray(new_mask)
    if mask.shape != shape:
        raise HarmonizeError(ws.catalog.path, f"corrected mask shape {mask.shape} != scan shape {shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or (mask.size and (mask.min() < 0 or mask.max() > 1)):
            raise HarmonizeError(ws.catalog.path, "corrected mask must be bool or hold only 0 and 1")
        mask = mask.astype(bool)
    if base_label_set_id is None:
        base_label_set_id = current_label_set(ws, scan_id, class_name)
    if base_label_set_id is None:
        latest = ws.catalog.label_sets(scan_id)
        if latest.empty:
            raise HarmonizeError(ws.catalog.path, f"scan {scan_id} has no label set to correct")
        base_label_set_id = str(latest["id"].iloc[-1])
    base = _label_set_row(ws, base_label_set_id, scan_id)
    state = ANNOTATED_PRESENT if mask.any() else ANNOTATED_ABSENT
    note = f"correction of {class_name} by {name} (base {base_label_set_id}, origin {base['origin']})"
    ls_id = _write_revised(ws, scan, base, class_name, mask, state, name, note, image)
    review_id = _insert_review(ws, scan_id, class_name, base_label_set_id, "corrected", text, name, ls_id)
    return Correction(review_id, ls_id)


def remove_component(mask: np.ndarray, voxel: Sequence[int]) -> np.ndarray:
    """A copy of ``mask`` without the 26-connected component that contains ``voxel``.

    Args:
        mask: (i, j, k) bool mask.
        voxel: (i, j, k) index of a voxel of the component to remove.

    Raises:
        ValueError: ``voxel`` lies outside the volume or is not in the mask.
    """
    m = np.asarray(mask, dtype=bool)
    v = tuple(int(x) for x in voxel)
    if len(v) != m.ndim or any(x < 0 or x >= s for x, s in zip(v, m.shape)):
        raise ValueError(f"voxel {v} lies outside the volume of shape {m.shape}")
    if not m[v]:
        raise ValueError(f"voxel {v} is not in the mask: pick a voxel of the component to remove")
    labels, _ = ndimage.label(m, structure=_STRUCT26)
    return m & (labels != labels[v])


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """A copy of the (i, j, k) bool ``mask`` with only its largest 26-connected component (empty stays
    empty; of equal-sized components the first in label order is kept)."""
    m = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(m, structure=_STRUCT26)
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


# ------------------------------------------------------------------------------------------------ undo


def undo(ws: Workspace, review_id: str, reviewer: str, comment: str | None = "") -> str:
    """Reverse one decision or correction; returns the id of the ``undo`` review row.

    A decision stops counting (the item is pending again). A correction is reversed by a new ``revised``
    label set restoring the class as it was current just before the correction; only the newest standing
    correction of a scan x class can be undone (undo later ones first).

    Raises:
        HarmonizeError: unknown review id, an undo row, a review already undone, a correction that is no
            longer current, or a bad reviewer name.
    """
    name = validate_reviewer(ws, reviewer)
    text = validate_comment(ws, comment)
    df = reviews(ws).set_index("id")
    if review_id not in df.index:
        raise HarmonizeError(ws.catalog.path, f"no review {review_id!r} in the catalog")
    row = df.loc[review_id]
    if row["decision"] == "undo":
        raise HarmonizeError(ws.catalog.path, f"review {review_id} is itself an undo; it cannot be undone")
    if bool(row["undone"]):
        raise HarmonizeError(ws.catalog.path, f"review {review_id} was already undone")
    scan_id, class_name, base_id = str(row["scan_id"]), str(row["class_name"]), str(row["label_set_id"])
    result = None
    if row["decision"] == "corrected":
        produced = str(row["result_label_set_id"])
        if current_label_set(ws, scan_id, class_name) != produced:
            raise HarmonizeError(
                ws.catalog.path,
                f"correction {review_id} of {class_name} is no longer the current label: undo the later "
                "correction first",
            )
        scan = scan_row(ws, scan_id)
        produced_row = _label_set_row(ws, produced, scan_id)
        before = _current_before(ws, scan_id, class_name, int(produced_row["version"]))
        if before is None:
            raise HarmonizeError(
                ws.catalog.path,
                f"no label set knew {class_name} of {scan_id} before correction {review_id}, so there is no "
                "earlier state to restore; record a new correction instead",
            )
        state = ws.catalog.coverage(str(before["id"]))[class_name]
        mask = (
            ws.masks.read(str(before["mask_key"]), class_name)
            if state == ANNOTATED_PRESENT
            else np.zeros(tuple(int(s) for s in scan["shape"]), bool)
        )
        note = f"undo of correction {review_id} by {name}: {class_name} restored from {before['id']}"
        # Parent = the undone set, other classes copied from it: the history reads as one chain.
        result = _write_revised(ws, scan, produced_row, class_name, mask, state, name, note, None)
    return _insert_review(ws, scan_id, class_name, base_id, "undo", text, name, result, undo_of=review_id)


def _current_before(ws: Workspace, scan_id: str, class_name: str, version: int) -> dict[str, Any] | None:
    """The label set that was current for scan x class among versions older than ``version``."""
    df = ws.catalog.query(
        """
        SELECT l.* FROM label_set l JOIN class_coverage c ON c.label_set_id = l.id
        WHERE l.scan_id = ? AND c.class_name = ? AND c.state <> 'not_annotated' AND l.version < ?
        ORDER BY CASE l.origin WHEN 'revised' THEN 3 WHEN 'original' THEN 2 ELSE 1 END DESC, l.version DESC
        LIMIT 1
        """,
        [scan_id, class_name, version],
    )
    return None if df.empty else df.iloc[0].to_dict()


# ----------------------------------------------------------------------------------------------- queue


def queue(
    ws: Workspace,
    *,
    classes: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    reasons: Sequence[str] | None = None,
    status: str = "pending",
    reviewer: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The ranked review queue: uncertainty items (highest score first) with their scan and standing
    decision.

    One row per scan x class x run of the ``uncertainty`` table, with ``source_id``, ``case_id``,
    ``origin`` and ``version`` of the judged label set, ``score``, ``signals`` (JSON text), ``reasons``
    (list), and the standing decision on THAT label set version: ``status`` (``pending`` or the decision),
    ``decided_by``, ``decided_at``, ``review_id``. A decision that was undone does not stand.

    Args:
        ws: the workspace.
        classes / sources: keep only these (None: all).
        reasons: keep items with at least one of these reasons.
        status: one of :data:`QUEUE_STATUSES`; ``pending`` (default) leaves out items already decided for
            the same label set version.
        reviewer: keep items whose standing decision is by this reviewer.
        limit: at most this many rows.
    """
    if status not in QUEUE_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(QUEUE_STATUSES)}")
    where: list[str] = []
    params: list[Any] = []
    if classes:
        where.append("u.class_name IN (SELECT unnest(?))")
        params.append(list(classes))
    if sources:
        where.append("s.source_id IN (SELECT unnest(?))")
        params.append(list(sources))
    if reasons:
        where.append("len(list_intersect(coalesce(u.reasons, []), ?)) > 0")
        params.append(list(reasons))
    if status == "pending":
        where.append("d.decision IS NULL")
    elif status == "decided":
        where.append("d.decision IS NOT NULL")
    elif status != "all":
        where.append("d.decision = ?")
        params.append(status)
    if reviewer:
        where.append("d.reviewer = ?")
        params.append(reviewer)
    sql = f"""
        WITH standing AS (
            SELECT * FROM review r
            WHERE r.decision <> 'undo'
              AND r.id NOT IN (SELECT undo_of FROM review WHERE decision = 'undo' AND undo_of IS NOT NULL)
            QUALIFY row_number() OVER (
                PARTITION BY r.scan_id, r.class_name, r.label_set_id ORDER BY r.created_at DESC, r.id DESC
            ) = 1
        )
        SELECT u.scan_id, s.source_id, s.case_id, u.class_name, u.run_id, u.label_set_id,
               l.origin, l.version, u.score, u.signals, u.reasons,
               coalesce(d.decision, 'pending') AS status, d.reviewer AS decided_by,
               d.created_at AS decided_at, d.id AS review_id
        FROM uncertainty u
        JOIN scan s ON s.id = u.scan_id
        LEFT JOIN label_set l ON l.id = u.label_set_id
        LEFT JOIN standing d
          ON d.scan_id = u.scan_id AND d.class_name = u.class_name AND d.label_set_id = u.label_set_id
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY u.score DESC, u.scan_id, u.class_name, u.run_id
        {"LIMIT " + str(int(limit)) if limit is not None else ""}
    """
    df = ws.catalog.query(sql, params)
    df["reasons"] = df["reasons"].map(lambda r: [] if r is None else list(r))
    return df


def queue_reasons(ws: Workspace) -> list[str]:
    """Every distinct reason in the uncertainty table, sorted (for the queue's filter)."""
    df = ws.catalog.query("SELECT DISTINCT unnest(reasons) AS r FROM uncertainty ORDER BY r")
    return [str(r) for r in df["r"]]


# ----------------------------------------------------------------------------- 3D Slicer / ITK-SNAP


def _check_upload_name(ws: Workspace, name: str) -> str:
    base = name if isinstance(name, str) else ""
    if (
        not base
        or base != Path(base).name
        or "/" in base
        or "\\" in base
        or ".." in base
        or base.startswith(".")
        or _CONTROL_RE.search(base)
        or len(base) > 200
        or not base.lower().endswith(_NIFTI_SUFFIXES)
    ):
        raise HarmonizeError(
            name if isinstance(name, str) else "upload",
            "not accepted as a correction file name: give a plain NIfTI file name ending in .nii or .nii.gz "
            "(no folders, '..' or control characters)",
        )
    return base


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """Load ``path`` as NIfTI-1/2 or raise one clear HarmonizeError (checks the magic, not the suffix)."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            header = f.read(348 + 4)
    except (OSError, EOFError) as e:
        raise HarmonizeError(path, f"cannot read the file: {e}") from None
    magic_ok = len(header) >= 348 and (
        header[344:348] in (b"n+1\x00", b"ni1\x00") or header[4:8] == b"n+2\x00"
    )
    if not magic_ok:
        raise HarmonizeError(path, "not a NIfTI file (no NIfTI header magic)")
    try:
        img: Any = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force the read: a truncated file fails here, not later
    except Exception as e:  # nibabel raises many types for broken files
        raise HarmonizeError(path, f"not a readable NIfTI file: {e}") from None
    if len(img.shape) != 3:
        raise HarmonizeError(path, f"label image must be 3D, got shape {img.shape}")
    return img  # type: ignore[return-value]


def label_values_to_mask(
    path: str | Path, data: np.ndarray, class_name: str, value_map: Mapping[int, int] | None = None
) -> np.ndarray:
    """Turn an imported label image into one class's bool mask.

    Rules: with ``value_map`` (label value -> 0/1) every value in the file must be in the map. Without it,
    a file holding only 0 and 1 is a binary mask; otherwise it is a label map in the convention of
    :func:`export_case_for_slicer` (value = universal class index, 1-based): the class's own index is
    foreground, other class indices are background.

    Raises:
        HarmonizeError: non-integral values, or values the rule does not cover (listed).
    """
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise HarmonizeError(path, "label values are not integers")
        arr = arr.astype(np.int64)
    values = {int(v) for v in np.unique(arr)}
    if value_map is not None:
        mapped = {int(k): int(v) for k, v in value_map.items()}
        bad = sorted(values - set(mapped))
        if bad or any(v not in (0, 1) for v in mapped.values()):
            raise HarmonizeError(path, f"label values {bad} are not in the value map {mapped} (0/1 targets)")
        fg = [k for k, v in mapped.items() if v == 1]
        return np.isin(arr, fg)
    if values <= {0, 1}:
        return arr == 1
    index = class_by_name(class_name).index
    bad = sorted(v for v in values if v != 0 and not 1 <= v <= len(class_names()))
    if bad:
        raise HarmonizeError(
            path,
            f"label values {bad} are neither 0/1 nor universal class indices 1-{len(class_names())}; "
            "pass a value map",
        )
    return arr == index


def import_correction(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    nifti_path: str | Path,
    reviewer: str,
    comment: str | None = "",
    *,
    value_map: Mapping[int, int] | None = None,
    base_label_set_id: str | None = None,
) -> Correction:
    """Import a corrected label NIfTI (from 3D Slicer or ITK-SNAP) for one class as a correction.

    Args:
        ws: the workspace.
        scan_id / class_name: what was corrected.
        nifti_path: the edited NIfTI (e.g. the ``labels.nii.gz`` of :func:`export_case_for_slicer`).
        reviewer / comment: as in :func:`correct`.
        value_map: label value -> 0/1 (see :func:`label_values_to_mask`).
        base_label_set_id: as in :func:`correct`.

    Checks (each failure is one HarmonizeError naming the file, and nothing is stored): NIfTI content
    (header magic, readable voxels), shape equal to the scan's and affine within
    :data:`GEOMETRY_TOLERANCE_MM` of it, label values. Writes only to the workspace's catalog and store.
    """
    path = Path(nifti_path)
    validate_reviewer(ws, reviewer)
    validate_comment(ws, comment)
    class_name = _check_class(ws, class_name)
    scan = scan_row(ws, scan_id)
    img = _load_nifti(path)
    shape = tuple(int(s) for s in scan["shape"])
    if tuple(img.shape) != shape:
        raise HarmonizeError(path, f"shape {tuple(img.shape)} differs from scan {scan_id}'s shape {shape}")
    diff = float(np.abs(np.asarray(img.affine) - scan_affine(scan)).max())
    if diff > GEOMETRY_TOLERANCE_MM:
        raise HarmonizeError(
            path,
            f"affine differs from scan {scan_id}'s by up to {diff:.4g} mm (tolerance "
            f"{GEOMETRY_TOLERANCE_MM} mm): the file is not on the scan's voxel grid",
        )
    mask = label_values_to_mask(path, np.asanyarray(img.dataobj), class_name, value_map)
    return correct(ws, scan_id, class_name, mask, reviewer, comment, base_label_set_id)


def import_correction_upload(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    file_name: str,
    data: bytes,
    reviewer: str,
    comment: str | None = "",
    *,
    value_map: Mapping[int, int] | None = None,
    base_label_set_id: str | None = None,
) -> Correction:
    """:func:`import_correction` for uploaded bytes (the app): the name must be a plain ``.nii``/``.nii.gz``
    file name; the bytes are staged in ``<workspace>/imports/`` and removed afterwards."""
    name = _check_upload_name(ws, file_name)
    staging = ws.root / "imports"
    staging.mkdir(exist_ok=True)
    suffix = ".nii.gz" if name.lower().endswith(".gz") else ".nii"
    tmp = staging / f"upload-{uuid.uuid4().hex[:16]}{suffix}"
    tmp.write_bytes(data)
    try:
        return import_correction(
            ws,
            scan_id,
            class_name,
            tmp,
            reviewer,
            comment,
            value_map=value_map,
            base_label_set_id=base_label_set_id,
        )
    except HarmonizeError as e:
        raise HarmonizeError(name, e.problem) from None
    finally:
        tmp.unlink(missing_ok=True)


def paint_order(names: Sequence[str]) -> list[str]:
    """Classes in the order they are painted into ONE label map, later wins where masks overlap: organs
    and vessels first, then structures inside an organ (hepatic vessel), then tumours and cysts; ties in
    universal index order. So a liver tumour stays visible inside the liver."""

    def key(n: str) -> tuple[int, int]:
        c = class_by_name(n)
        depth = 2 if c.is_tumor else (1 if c.parents else 0)
        return depth, c.index

    return sorted(names, key=key)


def slicer_color_table(names: Sequence[str]) -> str:
    """A 3D Slicer color table (``.ctbl``: ``value name R G B A``) for universal class indices."""
    from workbench.app_data import class_color

    lines = [
        "# 3D Slicer color table: value name R G B A (value = universal class index)",
        "0 background 0 0 0 0",
    ]
    for n in names:
        r, g, b = class_color(n)
        lines.append(f"{class_by_name(n).index} {n} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def itksnap_label_description(names: Sequence[str]) -> str:
    """An ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``) for the same values."""
    from workbench.app_data import class_color

    lines = ['    0     0    0    0        0  0  0    "Clear Label"']
    for n in names:
        r, g, b = class_color(n)
        lines.append(f'{class_by_name(n).index:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{n}"')
    return "\n".join(lines) + "\n"


def export_case_for_slicer(ws: Workspace, scan_id: str, out_dir: str | Path) -> dict[str, Path]:
    """Write one scan for editing in 3D Slicer or ITK-SNAP.

    Files in ``out_dir`` (created): ``ct.nii.gz`` (the CT on its own grid), ``labels.nii.gz`` (uint8 label
    map of the scan's current labels per class, value = universal class index, overlaps resolved by
    :func:`paint_order`), ``labels.ctbl`` (3D Slicer color table), ``itksnap_labels.txt`` (ITK-SNAP label
    descriptions) and ``labels.json`` (value -> class, and each class's label set and origin).

    Returns:
        name -> path of every file written.
    """
    from workbench.export import ct_array, save_nifti
    from workbench.training_set import assemble_training_set

    scan = scan_row(ws, scan_id)
    image = read_volume(scan["image_path"], kind="image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = assemble_training_set(ws, scan_ids=[scan_id])
    labels = np.zeros(image.shape, np.uint8)
    meta: dict[str, Any] = {"scan_id": scan_id, "values": {}, "label_sets": {}, "origins": {}}
    if entries:
        e = entries[0]
        for n in paint_order(e.present):
            labels[e.masks[n]] = class_by_name(n).index
        meta["label_sets"], meta["origins"] = e.label_sets, e.origins
        present = paint_order(e.present)
    else:
        present = []
    meta["values"] = {str(class_by_name(n).index): n for n in present}
    files = {
        "ct.nii.gz": out / "ct.nii.gz",
        "labels.nii.gz": out / "labels.nii.gz",
        "labels.ctbl": out / "labels.ctbl",
        "itksnap_labels.txt": out / "itksnap_labels.txt",
        "labels.json": out / "labels.json",
    }
    save_nifti(ct_array(image.array), image.affine, files["ct.nii.gz"])
    save_nifti(labels, image.affine, files["labels.nii.gz"])
    files["labels.ctbl"].write_text(slicer_color_table(present))
    files["itksnap_labels.txt"].write_text(itksnap_label_description(present))
    files["labels.json"].write_text(json.dumps(meta, indent=1))
    return files
