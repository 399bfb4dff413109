"""The queue never re-serves a decision (``workbench.review.requeue``): one row per scan x class, a later
item of a decided scan x class only when its Dice against the decided label is below the threshold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from storage.workspace import Workspace
from workbench import review
from workbench.review import requeue

SCAN = "btcv:demo000"
CLS = "colon"  # btcv does not annotate it: only pseudo-labels answer for it


def items(ws: Workspace, ls: str, run: str, score: float, cls: str = CLS) -> None:
    ws.catalog.add_uncertainty(
        [
            {
                "scan_id": SCAN,
                "class_name": cls,
                "run_id": run,
                "label_set_id": ls,
                "score": score,
                "signals": {},
                "reasons": [],
            }
        ]
    )


def shape(ws: Workspace) -> tuple[int, int, int]:
    return tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])  # type: ignore[return-value]


def pending_of(ws: Workspace, cls: str = CLS) -> list[str]:
    q = review.queue(ws)
    return q[(q["scan_id"] == SCAN) & (q["class_name"] == cls)]["label_set_id"].tolist()


@pytest.fixture
def first(ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]) -> str:
    """Run 1's colon: a cube of 8 voxels a side at (10, 10, 10) (512 voxels)."""
    ls = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (10, 10, 10), 8)}, run_id="run-1")
    items(ws, ls, "run-1", 0.8)
    return ls


def test_mask_dice_numbers() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert requeue.mask_dice(a, b) == 1.0
    a[0, 0, :2] = True
    b[0, 0, 1:4] = True
    assert requeue.mask_dice(a, b) == pytest.approx(2 * 1 / 5)
    with pytest.raises(ValueError, match="shapes differ"):
        requeue.mask_dice(a, np.zeros((2, 2, 2), bool))


def test_one_row_per_scan_and_class_the_newest_item_stands(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    second = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (30, 30, 30), 4)}, run_id="run-2")
    items(ws, second, "run-2", 0.1)
    assert pending_of(ws) == [second]  # lower score, but the newer version stands for the class
    everything = review.queue(ws, status="all")
    assert sorted(everything[everything["class_name"] == CLS]["label_set_id"]) == sorted([first, second])
    assert ws.catalog.queue_status_counts()["pending"] == 1


@pytest.mark.parametrize("decision", ["accept", "reject", "needs_correction"])
def test_a_decided_class_is_not_served_again_for_the_same_prediction(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray], decision: str
) -> None:
    review.record_decision(ws, SCAN, CLS, first, decision, "Dr Ada")
    same = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (10, 10, 10), 8)}, run_id="run-2")
    items(ws, same, "run-2", 0.9)
    assert pending_of(ws) == []
    row = review.queue(ws, status="all").set_index("label_set_id").loc[same]
    assert (row["prior_decision"], row["prior_dice"], row["requeue_dice"]) == (decision, 1.0, 0.9)
    assert not row["requeued"] and requeue.requeue_note(row.to_dict()) is None
    current = ws.catalog.current_label_set(SCAN, CLS)
    # accepted: the label the reviewer saw stands; rejected: the identical new prediction inherits the
    # reject (verdict 'carried'), so no pseudo-label of the class is used at all.
    assert current == (first if decision == "accept" else None)
    assert row["status"] == (decision if decision != "accept" else "pending")


def test_a_materially_different_prediction_is_requeued_with_its_dice(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    review.record_decision(ws, SCAN, CLS, first, "accept", "Dr Ada")
    # a cube shifted by 2 voxels on each axis: 6**3 = 216 voxels shared, Dice 2 * 216 / 1024
    moved = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (12, 12, 12), 8)}, run_id="run-2")
    items(ws, moved, "run-2", 0.9)
    assert pending_of(ws) == [moved]
    row = review.queue(ws).iloc[0].to_dict()
    assert row["prior_dice"] == pytest.approx(0.421875)
    assert requeue.requeue_note(row) == (
        "re-queued: the new prediction differs from the label Dr Ada accepted, Dice 0.42 (< 0.9)"
    )


@pytest.mark.parametrize(("threshold", "served"), [(0.4, False), (0.5, True)])
def test_the_threshold_is_stored_with_the_check(
    ws: Workspace,
    first: str,
    add_pseudo: Callable[..., str],
    blob: Callable[..., np.ndarray],
    threshold: float,
    served: bool,
) -> None:
    review.record_decision(ws, SCAN, CLS, first, "reject", "Dr Ada")
    moved = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (12, 12, 12), 8)}, run_id="run-2")
    items(ws, moved, "run-2", 0.9)
    assert requeue.check_requeue(ws, threshold=threshold) == 1
    assert requeue.check_requeue(ws) == 0  # checked once per item and decision
    assert pending_of(ws) == ([moved] if served else [])
    row = review.queue(ws, status="all").set_index("label_set_id").loc[moved]
    assert row["requeue_dice"] == threshold
    # below the threshold the new prediction is its own item; at or above it inherits the reject
    assert row["status"] == ("pending" if served else "reject")


def test_a_correction_is_compared_with_the_corrected_mask(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    fixed = blob(shape(ws), (20, 20, 20), 6)
    review.correct(ws, SCAN, CLS, fixed, "Dr Ada", "redrawn", first)
    like_fix = add_pseudo(ws, SCAN, {CLS: fixed}, run_id="run-2")
    items(ws, like_fix, "run-2", 0.9)
    assert pending_of(ws) == []
    row = review.queue(ws, status="all").set_index("label_set_id").loc[like_fix]
    assert (row["prior_decision"], row["prior_dice"]) == ("corrected", 1.0)


def test_undoing_the_decision_serves_the_new_item(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    rid = review.record_decision(ws, SCAN, CLS, first, "reject", "Dr Ada")
    same = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (10, 10, 10), 8)}, run_id="run-2")
    items(ws, same, "run-2", 0.9)
    assert pending_of(ws) == []
    review.undo(ws, rid, "Dr Ada")
    assert pending_of(ws) == [same]
    assert ws.catalog.current_label_set(SCAN, CLS) == same


def test_unchecked_items_wait_and_rank_follows_the_queue(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    review.record_decision(ws, SCAN, CLS, first, "accept", "Dr Ada")
    same = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (10, 10, 10), 8)}, run_id="run-2")
    items(ws, same, "run-2", 0.9)
    raw = ws.catalog.review_queue()  # no upkeep: an item not checked yet is never served by mistake
    assert CLS not in set(raw[raw["scan_id"] == SCAN]["class_name"])
    ranked = review.rank(ws)
    assert CLS not in set(ranked[ranked["scan_id"] == SCAN]["class_name"])
    assert len(review.rank(ws, include_decided=True)) == len(review.queue(ws, status="all"))


def test_the_run_driver_checks_a_new_item_at_once(
    ws: Workspace, first: str, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    from workbench.review.double_reading import enter_queue

    review.record_decision(ws, SCAN, CLS, first, "accept", "Dr Ada")
    moved = add_pseudo(ws, SCAN, {CLS: blob(shape(ws), (12, 12, 12), 8)}, run_id="run-2")
    items(ws, moved, "run-2", 0.9)
    enter_queue(ws, moved)  # what write_scan_result calls after storing the uncertainty rows
    raw = ws.catalog.review_queue()  # no upkeep: the check is already stored
    row = raw[raw["class_name"] == CLS].iloc[0]
    assert (row["label_set_id"], row["prior_dice"], bool(row["requeued"])) == (moved, 0.421875, True)
    plan = ws.catalog.query("SELECT * FROM reading_plan WHERE label_set_id = ?", [moved])
    assert plan["class_name"].tolist() == [CLS] and plan["share"].tolist() == [0.1]
