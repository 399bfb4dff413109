"""Decisions: a reviewer's verdict on one scan x class of one label set version, the history, and undo.

* A decision (``accept`` / ``reject`` / ``needs_correction`` / ``skip``) is one ``review`` row naming the
  scan, the class, the label set version it judged, the reviewer and the time.
* Undo is an ``undo`` review row (``undo_of`` = the reversed review). Undoing a decision puts the item
  back in the queue. Undoing a correction writes one more ``revised`` label set (parent = the undone
  one) that restores the class as it was current just before the correction (same mask and coverage
  state), so the previous content is current again under the per-class priority rule without deleting
  the undone version. The restored class then carries origin ``revised`` (a reviewer's explicit choice).
  A double-read reader's correction that does not count yet (``held_revision``: the item has no
  ``corrected`` verdict) never became current, so its undo is one ``undo`` row, like a decision's.

The current label of a scan x class (:func:`current_label_set`) follows the training-set rule: the newest
label set of the highest-priority origin whose coverage knows the class (the catalog's ``current_label``
view).

Example:
    >>> rid = record_decision(ws, "kits23:00001", "liver", "ls-abc", "accept", "Dr Ada", "")  # doctest: +SKIP
    >>> undo(ws, rid, "Dr Ada")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import ANNOTATED_PRESENT
from storage.catalog import ReviewRecord
from storage.workspace import Workspace
from workbench.review.corrections import write_revised
from workbench.review.validation import (
    check_class,
    label_set_row,
    scan_row,
    validate_comment,
    validate_reviewer,
)

DECISIONS = ("accept", "reject", "needs_correction", "skip")
#: Every value of ``review.decision``: the four above, plus what corrections and undo record.
ALL_DECISIONS = (*DECISIONS, "corrected", "undo")


def current_label_set(ws: Workspace, scan_id: str, class_name: str) -> str | None:
    """The label set that is current for one scan x class.

    Args:
        ws: the workspace.
        scan_id / class_name: the scan x class.

    Returns:
        The id of the label set with the highest origin priority (revised > original > pseudo), newest
        version, among label sets whose coverage knows the class; None when none does.
    """
    return ws.catalog.current_label_set(scan_id, class_name)


def record_decision(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    label_set_id: str,
    decision: str,
    reviewer: str,
    comment: str | None = "",
    *,
    keep_long_tail: bool = True,
) -> str:
    """Record a reviewer's decision on one scan x class of one label set version.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.
        class_name: universal class name.
        label_set_id: the label set version that was judged (must belong to the scan).
        decision: one of :data:`DECISIONS`.
        reviewer: who decided (validated by :func:`~workbench.review.validation.validate_reviewer`).
        comment: free text (validated by :func:`~workbench.review.validation.validate_comment`).
        keep_long_tail: False leaves the long tail's upkeep to the caller (``ws.catalog.keep_long_tail()``
            once it answered what could not wait; until then the next reader of the long tail refreshes
            it).

    Returns:
        The review id.

    Raises:
        HarmonizeError: unknown decision, class, scan or label set; a bad reviewer name or comment.
            Nothing is stored then.
    """
    if decision not in DECISIONS:
        raise HarmonizeError(ws.catalog.path, f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    name = validate_reviewer(ws, reviewer)
    text = validate_comment(ws, comment)
    class_name = check_class(ws, class_name)
    label_set_row(ws, label_set_id, scan_id)
    return ws.catalog.add_review(
        scan_id, class_name, label_set_id, decision, text, name, keep_long_tail=keep_long_tail
    )


def reviews(ws: Workspace, scan_id: str | None = None, class_name: str | None = None) -> pd.DataFrame:
    """The review history.

    Args:
        ws: the workspace.
        scan_id / class_name: keep only rows of this scan / class (None: all).

    Returns:
        Review rows (newest first) with ``undone`` (bool: a later undo reversed it).
    """
    return ws.catalog.reviews(scan_id, class_name)


def undo(ws: Workspace, review_id: str, reviewer: str, comment: str | None = "") -> str:
    """Reverse one decision or correction.

    A decision stops counting (the item is pending again). A correction is reversed by a new ``revised``
    label set restoring the class as it was current just before the correction; only the newest standing
    correction of a scan x class can be undone (undo later ones first).

    Args:
        ws: the workspace.
        review_id: the review row to reverse.
        reviewer / comment: who undoes it, and why.

    Returns:
        The id of the ``undo`` review row.

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
    if row["decision"] == "corrected" and not ws.catalog.is_held_revision(
        str(row["result_label_set_id"]), class_name
    ):
        produced = str(row["result_label_set_id"])
        if current_label_set(ws, scan_id, class_name) != produced:
            raise HarmonizeError(
                ws.catalog.path,
                f"correction {review_id} of {class_name} is no longer the current label: undo the later "
                "correction first",
            )
        scan = scan_row(ws, scan_id)
        produced_row = label_set_row(ws, produced, scan_id)
        before = ws.catalog.current_label_before(scan_id, class_name, int(produced_row["version"]))
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
        undo_row = ReviewRecord(scan_id, class_name, base_id, "undo", text, name, undo_of=review_id)
        write_revised(ws, scan, produced_row, class_name, mask, state, name, note, None, undo_row)
        return undo_row.id
    return ws.catalog.add_review(scan_id, class_name, base_id, "undo", text, name, undo_of=review_id)
