"""The queue never re-serves a decision: a later item of a decided scan x class is compared with the label
the reviewer decided, and comes back only when it differs materially.

When a scan x class has a decision (accept, reject, corrected, needs_correction) on an older label set
version, a newer pseudo-label of it (a later run's item) is served again only when its mask's Dice against
the decided label is below a threshold (:data:`DEFAULT_REQUEUE_DICE`, stored with each check). The decided
label is the corrected mask for ``corrected``, else the judged label set's mask. The Dice is computed once per
item and decision and stored (``requeue_check``): at pseudo-label time by the run driver (the item's masks
were just written) and, for an item that is new to a decision made later, lazily by :func:`check_requeue`,
which the queue calls before it lists. An item with a prior decision but no check yet waits (it is never
shown by mistake). A later prediction that matches a rejected label (Dice at or above the threshold)
inherits the reject in the ``verdict`` view, so it trains nothing either.

Example:
    >>> check_requeue(ws)  # doctest: +SKIP
    3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harmonize.harmonizer import ANNOTATED_PRESENT, NOT_ANNOTATED
from storage.workspace import Workspace

#: A later item of a decided scan x class is re-queued when its Dice against the decided label is below this.
DEFAULT_REQUEUE_DICE = 0.9

#: How the app and the CLI name the decided label, per decision.
_DECIDED_LABEL = {
    "accept": "the label {who} accepted",
    "corrected": "the label {who} corrected",
    "reject": "the label {who} rejected",
    "needs_correction": "the label {who} sent back for correction",
}


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks of one shape: ``2 |a & b| / (|a| + |b|)``, 1.0 when both are empty.

    Raises:
        ValueError: the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    sizes = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if sizes == 0 else 2.0 * int(np.count_nonzero(a & b)) / sizes


def class_mask(ws: Workspace, mask_key: str, state: str | None, class_name: str) -> np.ndarray | None:
    """One class of a stored label set as a bool mask.

    Args:
        ws: the workspace.
        mask_key: the label set's mask store key.
        state: the class's coverage state in that label set (None: the label set does not know it).
        class_name: the class.

    Returns:
        The (i, j, k) bool mask (all False when annotated absent); None when the label set does not annotate
        the class.
    """
    if state is None or state == NOT_ANNOTATED:
        return None
    if state == ANNOTATED_PRESENT:
        return np.asarray(ws.masks.read(mask_key, class_name), dtype=bool)
    return np.zeros(ws.masks.index(mask_key).shape, dtype=bool)


def masks_dice(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Dice of two class masks where either may be unknown (None): unknown against anything is 0."""
    return 0.0 if a is None or b is None else mask_dice(a, b)


def check_requeue(
    ws: Workspace, threshold: float = DEFAULT_REQUEUE_DICE, label_set_ids: Sequence[str] | None = None
) -> int:
    """Compare every queue item that has a prior decision but no check with the decided label; store the
    Dice and the threshold (one transaction).

    Args:
        ws: the workspace.
        threshold: re-queue below this Dice (0..1), stored with each check.
        label_set_ids: only items of these label sets (the run driver passes the one it wrote; None: all).

    Returns:
        The number of checks stored.

    Raises:
        ValueError: ``threshold`` is outside 0..1.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the requeue Dice threshold must be in [0, 1], got {threshold}")
    todo = ws.catalog.unchecked_requeue_items(label_set_ids)
    rows = []
    for r in todo.to_dict("records"):
        item = class_mask(ws, str(r["item_mask"]), _state(r["item_state"]), str(r["class_name"]))
        decided = class_mask(ws, str(r["decided_mask"]), _state(r["decided_state"]), str(r["class_name"]))
        rows.append({**r, "dice": masks_dice(item, decided), "threshold": float(threshold)})
    ws.catalog.add_requeue_checks(rows)
    return len(rows)


def _state(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def requeue_note(item: Mapping[str, Any]) -> str | None:
    """Why an item is back in the queue, for the app and the CLI.

    Args:
        item: a row of ``workbench.review.queue``.

    Returns:
        ``"re-queued: the new prediction differs from the label Dr Ada accepted, Dice 0.62 (< 0.9)"``;
        None for an item that was never decided before.
    """
    if not bool(item.get("requeued")):
        return None
    decided = _DECIDED_LABEL.get(str(item["prior_decision"]), "the decided label").format(
        who=item.get("prior_reviewer") or "a reviewer"
    )
    return (
        f"re-queued: the new prediction differs from {decided}, Dice {float(item['prior_dice']):.2f} "
        f"(< {float(item['requeue_dice']):g})"
    )
