"""The demo's rounds (``workbench.demo.run_demo_round``): its summary prints the queue's top-10 precision and
the held-out Dice before and after its round, and both figures are what the catalog says."""

from __future__ import annotations

import re

import pytest

from storage.workspace import Workspace
from workbench.demo import build_demo, held_out_line, run_demo_round
from workbench.learning.rounds import rounds
from workbench.learning.simulated_expert import REAL_ERROR_DICE
from workbench.learning.split import held_out_split

PRECISION = re.compile(r"^queue top-(\d+) precision ([0-9.]+): (\d+) of its (\d+) items")
HELD_OUT = re.compile(r"^held-out mean Dice ([0-9.]+) before the round, ([0-9.]+) after \(([-+][0-9.]+)\)$")
REVIEW_DICE = re.compile(r"^simulated: Dice ([0-9.]+) vs truth")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, list[str]]:
    """A two-cases-per-source demo, one of each held out, with a tiny round (20 + 5 steps, 10 items
    reviewed): ~1-2 min on 2 cores."""
    ws = Workspace.open(tmp_path_factory.mktemp("demo") / "ws")
    build_demo(ws, cases_per_source=2, progress=False)
    held_out_split(ws, fraction=0.5)  # stored once: the rounds use it (the default 0.2 holds out none of 2)
    return ws, run_demo_round(ws, review_budget=10, steps=20, tune_steps=5, progress=False)


def test_the_summary_prints_the_queues_top_10_precision_as_the_reviews_measured_it(
    demo: tuple[Workspace, list[str]],
) -> None:
    ws, lines = demo
    matches = [m for m in map(PRECISION.match, lines) if m]
    assert len(matches) == 1, lines
    line = matches[0]
    k, precision, errors, n = int(line[1]), float(line[2]), int(line[3]), int(line[4])
    assert k == n == 10 and precision == pytest.approx(errors / n, abs=0.005)
    # the simulated expert reviewed the same queue top-down in the round: its first 10 review comments
    # hold each item's Dice against the phantom truth
    rows = ws.catalog.reviews(None, None)
    mine = rows[rows["reviewer"] == "simulated expert"].sort_values("created_at", kind="stable")
    dice = [float(REVIEW_DICE.match(c)[1]) for c in mine["comment"].head(10)]  # type: ignore[index]
    assert errors == sum(d < REAL_ERROR_DICE for d in dice)


def test_the_summary_prints_the_held_out_dice_before_and_after_the_round(
    demo: tuple[Workspace, list[str]],
) -> None:
    ws, lines = demo
    matches = [m for m in map(HELD_OUT.match, lines) if m]
    assert len(matches) == 1, lines
    line = matches[0]
    first, second = (r["metrics"]["mean_dice"] for r in rounds(ws).to_dict("records"))
    assert float(line[1]) == pytest.approx(first, abs=5e-4)
    assert float(line[2]) == pytest.approx(second, abs=5e-4)
    assert float(line[3]) == pytest.approx(second - first, abs=1e-3)


def test_the_summary_says_which_classes_the_model_never_learnt(demo: tuple[Workspace, list[str]]) -> None:
    _, lines = demo
    notices = [line for line in lines if "the model never learnt this class" in line]
    assert notices and len({n.split(":")[0] for n in notices}) == len(notices)  # once per class


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"mean_dice": 0.247}, {"mean_dice": 0.262}, "0.247 before the round, 0.262 after (+0.015)"),
        ({"mean_dice": 0.3}, {"mean_dice": 0.25}, "0.300 before the round, 0.250 after (-0.050)"),
        ({"evaluated": False, "reason": "no scan is held out"}, {}, ": not evaluated (no scan is held out)"),
    ],
)
def test_held_out_line(before: dict[str, object], after: dict[str, object], expected: str) -> None:
    assert (
        held_out_line(before, after) == "held-out mean Dice" + ("" if expected[0] == ":" else " ") + expected
    )
