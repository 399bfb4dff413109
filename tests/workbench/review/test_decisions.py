"""Review decisions, undo and concurrent reviewers (``workbench.review.decisions``)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench import review

SCAN = "btcv:demo000"
KITS = "kits23:demo000"


@pytest.mark.parametrize("decision", review.DECISIONS)
def test_record_decision_stores_who_what_and_which_version(ws: Workspace, decision: str) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    rid = review.record_decision(ws, SCAN, "liver", ls, decision, "Dr Ada", "<i>looks fine</i>")
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [rid]).iloc[0]
    assert (row["scan_id"], row["class_name"], row["label_set_id"], row["decision"], row["reviewer"]) == (
        SCAN,
        "liver",
        ls,
        decision,
        "Dr Ada",
    )
    assert row["comment"] == "<i>looks fine</i>"  # stored as typed; displays escape it


@pytest.mark.parametrize(
    ("decision", "cls", "other_scan", "match"),
    [
        ("approve", "liver", False, "decision"),
        ("accept", "not_a_class", False, "unknown universal class"),
        ("accept", "liver", True, "belongs to scan"),
    ],
)
def test_bad_decisions_are_refused(
    ws: Workspace, decision: str, cls: str, other_scan: bool, match: str
) -> None:
    scan = KITS if other_scan else SCAN
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    with pytest.raises(HarmonizeError, match=match):
        review.record_decision(ws, scan, cls, ls, decision, "Dr Ada")
    assert ws.catalog.counts()["review"] == 0


def test_comment_with_control_characters_is_refused(ws: Workspace) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    with pytest.raises(HarmonizeError, match="comment"):
        review.record_decision(ws, SCAN, "liver", ls, "accept", "Dr Ada", "bell\x07")


# --------------------------------------------------------------------------------------------- undo


def test_undo_of_a_correction_restores_the_previous_mask_without_deleting(
    ws: Workspace, original_mask: Callable[..., np.ndarray]
) -> None:
    before = original_mask(ws, SCAN, "kidney_left")
    corr = review.correct(ws, SCAN, "kidney_left", review.keep_largest(before)[::-1].copy(), "Dr Ada")
    n_sets = ws.catalog.counts()["label_set"]
    uid = review.undo(ws, corr.review_id, "Dr Bo", "wrong case")
    current = review.current_label_set(ws, SCAN, "kidney_left")
    assert current not in (corr.label_set_id, None)
    assert np.array_equal(ws.masks.read(str(current), "kidney_left"), before)
    assert ws.catalog.counts()["label_set"] == n_sets + 1  # nothing deleted, one version added
    assert ws.catalog.label_sets(SCAN).set_index("id").loc[str(current), "parent_id"] == corr.label_set_id
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [uid]).iloc[0]
    assert (row["decision"], row["undo_of"], row["reviewer"]) == ("undo", corr.review_id, "Dr Bo")
    with pytest.raises(HarmonizeError, match="already undone"):
        review.undo(ws, corr.review_id, "Dr Bo")
    with pytest.raises(HarmonizeError, match="itself an undo"):
        review.undo(ws, uid, "Dr Bo")
    with pytest.raises(HarmonizeError, match="no review"):
        review.undo(ws, "rv-missing", "Dr Bo")


def test_only_the_newest_correction_can_be_undone(
    ws: Workspace, original_mask: Callable[..., np.ndarray]
) -> None:
    m = original_mask(ws, SCAN, "kidney_left")
    first = review.correct(ws, SCAN, "kidney_left", np.roll(m, 1, axis=0), "Dr Ada")
    review.correct(ws, SCAN, "kidney_left", np.roll(m, 2, axis=0), "Dr Ada")
    with pytest.raises(HarmonizeError, match="undo the later correction first"):
        review.undo(ws, first.review_id, "Dr Ada")


# -------------------------------------------------------------------------------------- concurrency


def _decide_many(root: str, ls: str, who: str, n: int) -> None:
    w = Workspace.open(root)
    for _ in range(n):
        review.record_decision(w, SCAN, "liver", ls, "skip", who)


def test_two_reviewer_processes_lose_no_decision(ws: Workspace) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_decide_many, args=(str(ws.root), ls, who, 8)) for who in ("Ann", "Bob")]
    for p in procs:
        p.start()
    _decide_many(str(ws.root), ls, "Cy", 8)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    counts = ws.catalog.query("SELECT reviewer, count(*) AS n FROM review GROUP BY 1 ORDER BY 1")
    assert counts.values.tolist() == [["Ann", 8], ["Bob", 8], ["Cy", 8]]
