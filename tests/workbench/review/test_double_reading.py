"""Double reading (``workbench.review.double_reading``): a stable share, blind readers, agreement, the
adjudication list and the verdict the assembly rule reads."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench import review
from workbench.review import double_reading as dr

SCAN = "btcv:demo000"
CLASSES = ("colon", "duodenum", "intestine", "bladder")  # none annotated by btcv: pseudo-labels answer


def shape(ws: Workspace) -> tuple[int, int, int]:
    return tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])  # type: ignore[return-value]


@pytest.fixture
def item(ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]) -> str:
    """One pseudo label set with four classes in the queue, every item double-read (share 1)."""
    s = shape(ws)
    masks = {c: blob(s, (5 + 12 * i, 10, 10), 8) for i, c in enumerate(CLASSES)}
    ls = add_pseudo(ws, SCAN, masks, run_id="run-1")
    ws.catalog.add_uncertainty(
        [
            {
                "scan_id": SCAN,
                "class_name": c,
                "run_id": "run-1",
                "label_set_id": ls,
                "score": 0.5 + i / 10,
                "signals": {},
                "reasons": [],
            }
            for i, c in enumerate(CLASSES)
        ]
    )
    assert dr.set_share(ws, 1.0) == len(CLASSES)
    return ls


def test_the_share_is_stable_and_close_to_its_value() -> None:
    pairs = [(f"src:{i:05d}", c) for i in range(2500) for c in ("liver", "spleen", "pancreas", "colon")]
    chosen = [dr.chosen(s, c, 0.10) for s, c in pairs]
    assert chosen == [dr.chosen(s, c, 0.10) for s, c in pairs]
    assert 0.09 <= sum(chosen) / len(pairs) <= 0.11
    # a larger share keeps every item the smaller one chose
    assert all(dr.chosen(s, c, 0.2) for (s, c), x in zip(pairs, chosen, strict=True) if x)
    assert not any(dr.chosen(s, c, 0.0) for s, c in pairs[:100])


def test_the_share_is_validated_and_planned_once(ws: Workspace, item: str) -> None:
    with pytest.raises(HarmonizeError, match="between 0 and 1"):
        dr.set_share(ws, 1.5)
    assert dr.share(ws) == 1.0
    assert dr.set_share(ws, 0.0) == 0  # already planned items keep their plan
    assert len(dr.items(ws)) == len(CLASSES)


def test_readers_are_blind_and_the_item_waits_for_both(ws: Workspace, item: str) -> None:
    cls = "colon"
    review.record_decision(ws, SCAN, cls, item, "accept", "Dr A")
    for_b = review.queue(ws, reader="Dr B")
    row = for_b[for_b["class_name"] == cls].iloc[0]
    assert (row["status"], row["decided_by"], row["readings"]) == ("pending", None, 1)
    assert cls not in set(review.queue(ws, reader="Dr A")["class_name"])
    assert ws.catalog.verdict_of(item, cls) is None
    assert ws.catalog.current_label_set(SCAN, cls) == item  # a plain pseudo-label until both agree
    assert ws.catalog.query(
        "SELECT basis FROM current_label WHERE scan_id = ? AND class_name = ?", [SCAN, cls]
    )["basis"].tolist() == ["pseudo"]
    review.record_decision(ws, SCAN, cls, item, "accept", "Dr B")
    verdict = ws.catalog.verdict_of(item, cls)
    assert verdict is not None and (verdict["decision"], verdict["reading"]) == ("accept", "double")
    assert cls not in set(review.queue(ws)["class_name"])
    assert ws.catalog.query(
        "SELECT basis FROM current_label WHERE scan_id = ? AND class_name = ?", [SCAN, cls]
    )["basis"].tolist() == ["accepted"]


def test_a_disagreement_goes_to_adjudication_whose_decision_wins(ws: Workspace, item: str) -> None:
    cls = "duodenum"
    review.record_decision(ws, SCAN, cls, item, "accept", "Dr A")
    review.record_decision(ws, SCAN, cls, item, "reject", "Dr B")
    assert dr.adjudication_list(ws)["class_name"].tolist() == [cls]
    listed = review.queue(ws, status="adjudication")
    assert listed["class_name"].tolist() == [cls] and listed["status"].tolist() == ["adjudication"]
    assert ws.catalog.queue_status_counts()["adjudication"] == 1
    assert ws.catalog.verdict_of(item, cls) is None
    with pytest.raises(HarmonizeError, match="third reviewer"):
        dr.adjudicate(ws, SCAN, cls, item, "accept", "Dr A")
    with pytest.raises(HarmonizeError, match="not on the adjudication list"):
        dr.adjudicate(ws, SCAN, "colon", item, "accept", "Dr C")
    dr.adjudicate(ws, SCAN, cls, item, "reject", "Dr C")
    verdict = ws.catalog.verdict_of(item, cls)
    assert verdict is not None and (verdict["decision"], verdict["reviewer"]) == ("reject", "Dr C")
    assert ws.catalog.current_label_set(SCAN, cls) is None  # rejected: no label answers for it
    assert dr.adjudication_list(ws).empty


@pytest.mark.parametrize(("offset", "agreed"), [(0, True), (2, False)])
def test_two_corrections_agree_by_their_dice(
    ws: Workspace, item: str, blob: Callable[..., np.ndarray], offset: int, agreed: bool
) -> None:
    cls = "intestine"
    before = ws.catalog.annotated_counts().get(cls, 0)  # also fills the long-tail cache
    a = review.correct(ws, SCAN, cls, blob(shape(ws), (40, 40, 20), 8), "Dr A", "", item)
    # A's correction is held: the item has no verdict, so the pseudo-label still answers for the class
    assert ws.catalog.current_label_set(SCAN, cls) == item
    assert ws.catalog.annotated_counts().get(cls, 0) == before  # a held correction is no annotation
    b = review.correct(ws, SCAN, cls, blob(shape(ws), (40 + offset, 40, 20), 8), "Dr B", "", item)
    assert ws.catalog.annotated_counts().get(cls, 0) == before  # both read, their Dice not measured yet
    row = dr.items(ws, cls).iloc[0]  # measures the pair's Dice (the readers' agreement)
    # the statistics follow the verdict: the agreed correction annotates the class, a disputed one not
    assert ws.catalog.annotated_counts().get(cls, 0) == before + (1 if agreed else 0)
    # shifted by 2 on one axis: 6 x 8 x 8 = 384 shared voxels of 512 each, Dice 0.75
    assert row["reading_dice"] == pytest.approx(1.0 if agreed else 0.75)
    assert row["state"] == ("agreed" if agreed else "disagreed")
    assert ws.catalog.current_label_set(SCAN, cls) == (b.label_set_id if agreed else item)
    assert a.label_set_id != b.label_set_id
    table = dr.agreement(ws).set_index("class_name")
    assert table.loc[cls, "inter_reader_dice"] == pytest.approx(1.0 if agreed else 0.75)
    assert table.loc[cls, "corrected_pairs"] == 1


def test_undoing_a_held_correction_is_one_undo_row(
    ws: Workspace, item: str, blob: Callable[..., np.ndarray]
) -> None:
    cls = "bladder"
    a = review.correct(ws, SCAN, cls, blob(shape(ws), (40, 40, 20), 8), "Dr A", "", item)
    n_sets = len(ws.catalog.label_sets(SCAN))
    review.undo(ws, a.review_id, "Dr A")
    assert len(ws.catalog.label_sets(SCAN)) == n_sets
    assert dr.items(ws, cls)["readings"].tolist() == [0]


def test_cohen_kappa_numbers() -> None:
    a = ["accept", "accept", "reject", "reject"]
    b = ["accept", "reject", "reject", "reject"]
    # p_o = 3/4; p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2)
    assert dr.cohen_kappa(a, b) == pytest.approx(0.5)
    assert dr.cohen_kappa(["accept"] * 3, ["accept"] * 3) == 1.0
    assert math.isnan(dr.cohen_kappa([], []))


def test_agreement_per_class_and_overall(ws: Workspace, item: str) -> None:
    decisions = {
        "colon": ("accept", "accept"),
        "duodenum": ("accept", "reject"),
        "bladder": ("reject", "reject"),
    }
    for cls, (da, db) in decisions.items():
        review.record_decision(ws, SCAN, cls, item, da, "Dr A")
        review.record_decision(ws, SCAN, cls, item, db, "Dr B")
    table = dr.agreement(ws).set_index("class_name")
    assert table.loc["all", "pairs"] == 3
    assert table.loc["all", "agreement"] == pytest.approx(2 / 3)
    # A: accept 2/3, reject 1/3; B: accept 1/3, reject 2/3 -> p_e = 2/9 + 2/9 = 4/9
    assert table.loc["all", "kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert table.loc["duodenum", "disagreements"] == 1 and table.loc["colon", "agreement"] == 1.0
    assert dr.agreement_line(ws).startswith(
        "double reading (share 100%): 3 pairs, decisions agree 0.67, kappa 0.40"
    )
