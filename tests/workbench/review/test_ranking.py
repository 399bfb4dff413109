"""The review queue, listed for the app and ranked for the CLI (``workbench.review.ranking``)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from storage.catalog import utc_now
from storage.workspace import Workspace
from workbench import review
from workbench.review import ranking as q

SCAN = "btcv:demo000"
KITS = "kits23:demo000"


def add_uncertainty(ws: Workspace, rows: list[tuple[str, str, str, str, float, list[str]]]) -> None:
    with ws.catalog.transaction() as con:
        for scan_id, cls, run, ls, score, reasons in rows:
            con.execute(
                "INSERT INTO uncertainty VALUES (?, ?, ?, ?, ?, ?, ?)",
                [scan_id, cls, run, ls, score, json.dumps({"entropy": score}), reasons],
            )


def test_queue_ranks_filters_and_drops_decided_items_until_undone(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    p1 = add_pseudo(
        ws, SCAN, {"liver": blob(shape, (10, 10, 10), 8), "stomach": blob(shape, (30, 30, 30), 5)}
    )
    kits_shape = tuple(int(s) for s in review.scan_row(ws, KITS)["shape"])
    p2 = add_pseudo(ws, KITS, {"colon": blob(kits_shape, (5, 5, 5), 4)})
    add_uncertainty(
        ws,
        [
            (SCAN, "liver", "run-1", p1, 0.9, ["high_entropy"]),
            (SCAN, "stomach", "run-1", p1, 0.2, ["volume_outlier"]),
            (KITS, "colon", "run-1", p2, 0.5, ["high_entropy", "fragments"]),
        ],
    )
    q = review.queue(ws)
    assert q["score"].tolist() == [0.9, 0.5, 0.2]
    assert q["status"].unique().tolist() == ["pending"]
    assert q.iloc[0][["source_id", "case_id", "origin"]].tolist() == ["btcv", "demo000", "pseudo"]
    assert review.queue(ws, classes=["colon"])["scan_id"].tolist() == [KITS]
    assert review.queue(ws, sources=["btcv"])["class_name"].tolist() == ["liver", "stomach"]
    assert review.queue(ws, reasons=["fragments", "volume_outlier"])["score"].tolist() == [0.5, 0.2]
    assert sorted(review.queue_reasons(ws)) == ["fragments", "high_entropy", "volume_outlier"]

    rid = review.record_decision(ws, SCAN, "liver", p1, "accept", "Dr Ada")
    assert review.queue(ws)["score"].tolist() == [0.5, 0.2]
    accepted = review.queue(ws, status="accept")
    assert (accepted["scan_id"].tolist(), accepted["decided_by"].tolist()) == ([SCAN], ["Dr Ada"])
    assert review.queue(ws, status="decided", reviewer="Dr Ada")["review_id"].tolist() == [rid]
    assert review.queue(ws, status="all")["score"].tolist() == [0.9, 0.5, 0.2]

    review.undo(ws, rid, "Dr Ada")
    assert review.queue(ws)["score"].tolist() == [0.9, 0.5, 0.2]

    # A decision on one version does not hide the item of a newer pseudo label set version.
    review.record_decision(ws, SCAN, "liver", p1, "reject", "Dr Ada")
    p3 = add_pseudo(ws, SCAN, {"liver": blob(shape, (12, 12, 12), 8)}, run_id="run-2")
    add_uncertainty(ws, [(SCAN, "liver", "run-2", p3, 0.7, [])])
    pending = review.queue(ws)
    assert pending[pending["class_name"] == "liver"]["label_set_id"].tolist() == [p3]
    with pytest.raises(ValueError, match="status"):
        review.queue(ws, status="maybe")


def test_empty_queue_is_an_empty_frame(ws: Workspace) -> None:
    q = review.queue(ws)
    assert q.empty and "status" in q.columns


# --------------------------------------------------------------------------------------- rank (CLI)


def _review(
    ws: Workspace, rid: str, scan: str, cls: str, ls: str, decision: str, undo_of: str | None = None
) -> None:
    with ws.catalog.transaction() as con:
        con.execute(
            "INSERT INTO review (id, scan_id, class_name, label_set_id, decision, comment, reviewer, "
            "result_label_set_id, created_at, undo_of) VALUES (?, ?, ?, ?, ?, '', 'dr', NULL, ?, ?)",
            [rid, scan, cls, ls, decision, utc_now(), undo_of],
        )


def test_rank_orders_by_score_and_explains(uncertainty_ws: Workspace) -> None:
    ws = uncertainty_ws
    df = q.rank(ws)
    assert list(zip(df["scan_id"], df["class_name"])) == [
        ("b:2", "liver_tumor"),
        ("a:1", "kidney_left"),
        ("b:2", "spleen"),
        ("a:1", "spleen"),
    ]
    assert (
        df["summary"].iloc[1]
        == "kidney_left: volume 3.1 sd above the catalog mean; 2 components (annotated scans: 1)"
    )
    assert df["summary"].iloc[3] == "spleen: no specific finding"
    assert list(df["score"]) == sorted(df["score"], reverse=True)
    assert list(q.rank(ws, "run-2")["class_name"]) == ["spleen"]
    assert len(q.rank(ws, limit=2)) == 2


def test_decided_items_are_never_served_again_for_the_same_label_version(uncertainty_ws: Workspace) -> None:
    ws = uncertainty_ws
    _review(ws, "rv-1", "b:2", "liver_tumor", "ls-b", "reject")
    _review(ws, "rv-2", "a:1", "kidney_left", "ls-OTHER", "accept")  # another version: still pending here
    _review(ws, "rv-3", "a:1", "spleen", "ls-a", "skip")
    _review(ws, "rv-4", "a:1", "spleen", "ls-a", "undo", undo_of="rv-3")  # undone: back in the queue
    items = set(zip(q.rank(ws)["scan_id"], q.rank(ws)["class_name"]))
    assert items == {("a:1", "kidney_left"), ("b:2", "spleen"), ("a:1", "spleen")}
    assert len(q.rank(ws, include_decided=True)) == 4


def test_format_queue_lines(uncertainty_ws: Workspace) -> None:
    ws = uncertainty_ws
    lines = q.format_queue(q.rank(ws), 2)
    assert len(lines) == 2 and lines[0].startswith("   1  ") and "liver_tumor: 90% lies outside" in lines[0]
    assert q.format_queue(q.rank(ws).head(0), 5) == ["the queue is empty (no undecided uncertainty items)"]


# ----------------------------------------------------------------- rank by expected gain (rounds)


@pytest.mark.parametrize(
    ("score", "class_dice", "gain"),
    [
        (0.0, None, 0.0),  # no measured Dice: half the score (the score's order)
        (1.0, None, 0.5),
        (0.0, 0.0, 1.0),  # a class the model fails at everywhere: every item gains about 1
        (0.0, 0.9, 0.1),  # a well-learnt class without a signal: what its held-out Dice leaves
        (1.0, 0.9, 0.55),  # ... surely wrong: expected at half its Dice
        (0.5, 0.6, 0.55),  # 1 - 0.6 * 0.75
        (2.0, 0.8, 0.6),  # long-tail boosted scores count as 1
        (0.5, 1.7, 0.25),  # a Dice outside 0..1 is clipped
    ],
)
def test_expected_gain(score: float, class_dice: float | None, gain: float) -> None:
    assert q.expected_gain(score, class_dice) == pytest.approx(gain)


def test_a_round_ranks_by_expected_gain_from_its_held_out_dice(uncertainty_ws: Workspace) -> None:
    ws = uncertainty_ws
    by_score = q.rank(ws)
    scores = {(r["scan_id"], r["class_name"]): r["score"] for r in by_score.to_dict("records")}
    # the round that made run-1 measured spleen at Dice 0.05 (the model misses it everywhere), kidney_left
    # at 0.9 and liver_tumor at 0.8; run-2 belongs to no round
    dice = {"spleen": 0.05, "kidney_left": 0.9, "liver_tumor": 0.8}
    ws.catalog.add_round(
        round_number=1,
        train_run_id="train-1",
        pseudolabel_run_id="run-1",
        evaluate_run_id="eval-1",
        checkpoint_path="/nowhere/last.pt",
        checkpoint_sha256="0" * 64,
        previous_checkpoint_sha256=None,
        reviewed=0,
        inputs={},
        metrics={"evaluated": True, "by_class": {n: {"n": 3, "dice": d} for n, d in dice.items()}},
    )
    assert q.held_out_class_dice(ws) == {"run-1": dice}
    df = q.rank(ws, order="gain")
    expected = {
        key: 1 - (dice[key[1]] if key != ("b:2", "spleen") else 1.0) * (1 - min(s, 1.0) / 2)
        for key, s in scores.items()
    }
    keys = list(zip(df["scan_id"], df["class_name"]))
    assert keys == sorted(expected, key=lambda k: -expected[k])
    assert keys[0] == ("a:1", "spleen")  # the lowest score of run-1, the most to gain
    assert df["gain"].tolist() == pytest.approx([expected[k] for k in keys])
    assert df["score"].tolist() == [scores[k] for k in keys]  # the scores themselves are unchanged
    assert list(q.rank(ws)["class_name"]) == list(by_score["class_name"])  # the default order stays
    with pytest.raises(ValueError, match="order"):
        q.rank(ws, order="random")
