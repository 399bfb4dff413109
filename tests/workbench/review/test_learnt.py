"""The queue knows what a model learnt (``workbench.review.learnt``, #12 item 5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from storage.workspace import Workspace
from workbench import review
from workbench.review.learnt import learnt, learnt_classes

SCAN = "btcv:demo000"
KITS = "kits23:demo000"
#: The new run's model: liver from 3 annotated scans, stomach recorded with 0, colon never seen.
TRAINED_ON = {"liver": {"sources": ["btcv"], "scans": 3}, "stomach": {"sources": [], "scans": 0}}
CLASSES = ["liver", "stomach", "colon"]


@pytest.mark.parametrize(
    ("record", "name", "expected"),
    [
        (None, "colon", True),  # unknown record: served as before
        ({"liver": {"sources": ["btcv"], "scans": 3}}, "liver", True),
        ({"liver": {"sources": ["btcv"], "scans": 0}}, "liver", False),
        ({"liver": {"sources": ["btcv"], "scans": 3}}, "colon", False),
        ({"colon": {"sources": ["msd_colon"], "scans": None}}, "colon", True),  # a release model
        ({"colon": {"sources": [], "scans": None}}, "colon", False),
    ],
)
def test_learnt_reads_the_training_record(record: dict[str, Any] | None, name: str, expected: bool) -> None:
    assert learnt(record, name) is expected


def _run(ws: Workspace, run_id: str, config: dict[str, Any], sha: str) -> None:
    ws.catalog.start_run(run_id, "pseudolabel", checkpoint_sha256=sha, config=config)


def _items(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray], run_id: str
) -> None:
    """Items of ``run_id``: liver 0.9, stomach 0.5, colon 0.7 on the BTCV scan; colon 0.6 on the KiTS scan."""
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    kits_shape = tuple(int(s) for s in review.scan_row(ws, KITS)["shape"])
    masks = {c: blob(shape, (5 + 8 * i, 10, 10), 6) for i, c in enumerate(CLASSES)}
    p1 = add_pseudo(ws, SCAN, masks, run_id=run_id)
    p2 = add_pseudo(ws, KITS, {"colon": blob(kits_shape, (5, 5, 5), 4)}, run_id=run_id)
    rows = [(SCAN, "liver", p1, 0.9), (SCAN, "stomach", p1, 0.5), (SCAN, "colon", p1, 0.7)]
    ws.catalog.add_uncertainty(
        [
            {"scan_id": s, "class_name": c, "run_id": run_id, "label_set_id": ls, "score": x, "signals": {}}
            | {"reasons": []}
            for s, c, ls, x in [*rows, (KITS, "colon", p2, 0.6)]
        ]
    )


def test_items_of_classes_the_model_never_learnt_are_held_back_with_one_line_per_class(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    _run(ws, "run-new", {"classes": CLASSES, "trained_on": TRAINED_ON}, "a" * 64)
    _items(ws, add_pseudo, blob, "run-new")
    assert learnt_classes(ws).held_back == {"run-new": ("colon", "stomach")}
    assert review.queue(ws)[["class_name", "score"]].values.tolist() == [["liver", 0.9]]
    assert review.rank(ws)["class_name"].tolist() == ["liver"]
    assert review.learnt_notice(ws) == [
        "colon: the model never learnt this class (2 items held back; --include-unlearnt shows them)",
        "stomach: the model never learnt this class (1 item held back; --include-unlearnt shows them)",
    ]
    # still stored, and shown on request
    assert review.queue(ws, include_unlearnt=True)["score"].tolist() == [0.9, 0.7, 0.6, 0.5]
    assert len(review.rank(ws, include_unlearnt=True)) == 4
    assert review.learnt_notice(ws, include_unlearnt=True)[0] == (
        "colon: the model never learnt this class (2 items shown anyway)"
    )
    assert ws.catalog.queue_status_counts(learnt_classes(ws).held_back)["pending"] == 1
    assert ws.catalog.queue_status_counts()["pending"] == 4


def test_an_unknown_training_record_is_served_as_before_with_one_line_per_model(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    _run(ws, "run-old", {"classes": CLASSES}, "b" * 64)  # an old run: its config has no record
    _run(ws, "run-eval", {"classes": CLASSES, "uncertainty": False}, "c" * 64)  # no queue items: no line
    _items(ws, add_pseudo, blob, "run-old")
    assert review.queue(ws)["score"].tolist() == [0.9, 0.7, 0.6, 0.5]
    assert review.learnt_notice(ws) == [
        f"model {'b' * 12}: its training record is unknown (an older checkpoint); its items are served as "
        "before"
    ]


def test_an_old_run_of_a_registered_model_takes_the_model_rows_record(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    sha = "d" * 64
    row = {
        "name": "ours", "sha256": sha, "kind": "workbench", "backbone": "small_unet", "file": "m.pt",
        "original_path": "/m.pt", "class_names": CLASSES, "vocabulary_sha256": "v", "encoder_id": "e",
        "spacing_mm": [6.0, 6.0, 6.0], "patch": [32, 32, 32], "settings": {}, "trained_on": TRAINED_ON,
    }  # fmt: skip
    ws.catalog.add_model(row)
    _run(ws, "run-old", {"classes": CLASSES}, sha)
    _items(ws, add_pseudo, blob, "run-old")
    assert learnt_classes(ws).held_back == {"run-old": ("colon", "stomach")}
    assert review.queue(ws)["class_name"].tolist() == ["liver"]


def test_a_reviewers_ranked_queue_leaves_out_what_they_already_read(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    _run(ws, "run-new", {"classes": CLASSES, "trained_on": None}, "e" * 64)
    _items(ws, add_pseudo, blob, "run-new")
    review.set_share(ws, 1.0)  # every item read by two readers: one reading leaves it open
    assert len(review.rank(ws)) == 4
    ls = review.queue(ws, classes=["liver"])["label_set_id"].iloc[0]
    review.record_decision(ws, SCAN, "liver", ls, "accept", "Dr Ada")
    assert "liver" not in review.rank(ws, reader="Dr Ada")["class_name"].tolist()
    assert len(review.rank(ws, reader="Dr Bo")) == 4
