"""The simulated expert: budget, accept vs correct, versioned reviews, truth providers (phantoms re-made on
the scan's grid in a source's native orientation, a stored truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.phantoms import write_native
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace
from workbench import review
from workbench.learning.metrics import dice
from workbench.learning.simulated_expert import (
    BudgetExhausted,
    PhantomSpec,
    PhantomTruth,
    SimulatedExpert,
    StoredTruth,
    to_scan_grid,
)
from workbench.training_set import assemble_training_set

PRESENT, ABSENT, NOT_ANN = "annotated_present", "annotated_absent", "not_annotated"
SHAPE = (12, 10, 8)


def box(lo: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    return m


#: The truth of every scan: liver a 5 x 4 x 4 box (80 voxels), spleen a 2 x 2 x 5 box (20 voxels).
TRUTH = {"liver": box((1, 1, 1), (5, 4, 4)), "spleen": box((8, 6, 2), (2, 2, 5))}


def truth(scan_id: str, class_name: str) -> np.ndarray:
    return TRUTH.get(class_name, np.zeros(SHAPE, bool)).copy()


def add_scan(ws: Workspace, case: str) -> str:
    """A btcv-like scan whose original labels annotate only the liver (drawn exactly as the truth)."""
    scan_id = f"src:{case}"
    ls_id = f"ls-orig-{case}"
    ws.masks.write_label_set(ls_id, {"liver": TRUTH["liver"]}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov["liver"] = PRESENT
    scan = synthetic_scan(scan_id, shape=SHAPE, affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    ws.catalog.add_label_set(
        LabelSetRecord(id=ls_id, scan_id=scan_id, version=1, origin="original", mask_key=ls_id),
        cov,
        [],
        scan=scan,
    )
    return scan_id


def add_pseudo(
    ws: Workspace, scan_id: str, masks: dict[str, np.ndarray], states: dict[str, str] | None = None
) -> str:
    version = int(ws.catalog.label_sets(scan_id)["version"].max()) + 1
    ls_id = f"ls-pseudo-{scan_id.replace(':', '-')}-{version}"
    ws.masks.write_label_set(ls_id, {n: m for n, m in masks.items() if m.any()}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov.update({n: PRESENT if m.any() else ABSENT for n, m in masks.items()})
    cov.update(states or {})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=version, origin="pseudo", mask_key=ls_id, run_id="run-p"
        ),
        cov,
        [],
    )
    return ls_id


def spleen_with_overlap(n_shared: int) -> np.ndarray:
    """A 20-voxel spleen guess sharing ``n_shared`` voxels with the 20-voxel truth: Dice n_shared / 20."""
    guess = np.zeros(SHAPE, bool)
    truth_idx = np.argwhere(TRUTH["spleen"])
    for v in truth_idx[:n_shared]:
        guess[tuple(v)] = True
    outside = np.argwhere(~TRUTH["spleen"] & ~TRUTH["liver"])
    for v in outside[: 20 - n_shared]:
        guess[tuple(v)] = True
    return guess


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Four scans, each with a pseudo label set guessing the spleen with Dice 1.0, 0.95, 0.5 and 0."""
    w = Workspace.open(tmp_path / "ws")
    with w.catalog.session():
        for i, shared in enumerate((20, 19, 10, 0)):
            scan_id = add_scan(w, f"c{i}")
            add_pseudo(w, scan_id, {"spleen": spleen_with_overlap(shared)})
    return w


def items(ws: Workspace) -> list[dict[str, str]]:
    """Queue-like rows: the pseudo spleen of every scan, in scan order."""
    df = ws.catalog.query(
        "SELECT id AS label_set_id, scan_id FROM label_set WHERE origin = 'pseudo' ORDER BY scan_id"
    )
    return [{**r, "class_name": "spleen"} for r in df.to_dict("records")]


def test_dice_helper() -> None:
    assert dice(spleen_with_overlap(19), TRUTH["spleen"]) == pytest.approx(0.95)
    assert dice(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2, 2), bool), np.zeros(SHAPE, bool))


def test_accepts_good_items_and_corrects_the_rest(ws: Workspace) -> None:
    n_sets = ws.catalog.counts()["label_set"]
    expert = SimulatedExpert(ws, truth, budget=10)
    outcomes = expert.review_items(items(ws))
    assert [o.action for o in outcomes] == ["accept", "accept", "corrected", "corrected"]
    assert [o.dice_before for o in outcomes] == pytest.approx([1.0, 0.95, 0.5, 0.0])
    # An accept writes a review row and no label set; each correction writes exactly one revised set.
    assert ws.catalog.counts()["label_set"] == n_sets + 2
    for o in outcomes[:2]:
        assert o.result_label_set_id is None
        assert review.current_label_set(ws, o.scan_id, "spleen") == o.label_set_id
    rows = review.reviews(ws).set_index("id")
    assert set(rows["reviewer"]) == {"simulated expert"}
    assert [rows.loc[o.review_id, "decision"] for o in outcomes] == [
        "accept",
        "accept",
        "corrected",
        "corrected",
    ]
    assert expert.counts() == {"accepted": 2, "corrected": 2, "spent": 4.0, "remaining": 6.0}


def test_corrections_become_revised_label_sets_with_the_truth(ws: Workspace) -> None:
    expert = SimulatedExpert(ws, truth, budget=10)
    bad = items(ws)[3]
    o = expert.review(bad["scan_id"], "spleen", bad["label_set_id"])
    assert o.action == "corrected" and o.result_label_set_id is not None
    ls = ws.catalog.query("SELECT * FROM label_set WHERE id = ?", [o.result_label_set_id]).iloc[0]
    assert (
        ls["origin"] == "revised"
        and ls["parent_id"] == bad["label_set_id"]
        and ls["author"] == "simulated expert"
    )
    assert np.array_equal(ws.masks.read(ls["mask_key"], "spleen"), TRUTH["spleen"])
    # The correction is now the training label of the class; the original liver stays original.
    entry = assemble_training_set(ws, scan_ids=[bad["scan_id"]])[0]
    assert entry.origins["spleen"] == "revised" and entry.origins["liver"] == "original"
    assert np.array_equal(entry.masks["spleen"], TRUTH["spleen"])


@pytest.mark.parametrize("accept_dice, action", [(0.95, "accept"), (0.96, "corrected"), (0.0, "accept")])
def test_accept_threshold_is_inclusive(ws: Workspace, accept_dice: float, action: str) -> None:
    item = items(ws)[1]  # Dice exactly 0.95
    o = SimulatedExpert(ws, truth, budget=1, accept_dice=accept_dice).review(
        item["scan_id"], "spleen", item["label_set_id"]
    )
    assert o.action == action


def test_budget_stops_the_review_and_nothing_more_is_written(ws: Workspace) -> None:
    expert = SimulatedExpert(ws, truth, budget=2)
    done = expert.review_items(items(ws))
    assert len(done) == 2 and expert.spent == 2 and expert.remaining == 0 and not expert.can_afford()
    n_reviews = ws.catalog.counts()["review"]
    rest = items(ws)[3]
    with pytest.raises(BudgetExhausted, match="budget"):
        expert.review(rest["scan_id"], "spleen", rest["label_set_id"])
    assert expert.review_items(items(ws)) == []
    assert ws.catalog.counts()["review"] == n_reviews == 2


@pytest.mark.parametrize(
    "cost, budget, reviewed", [(1.5, 4.0, 2), (0.5, 1.0, 2), (2.0, 1.9, 0), (1.0, 0.0, 0)]
)
def test_fixed_cost_per_item(ws: Workspace, cost: float, budget: float, reviewed: int) -> None:
    expert = SimulatedExpert(ws, truth, budget=budget, cost_per_item=cost)
    assert len(expert.review_items(items(ws))) == reviewed
    assert expert.spent == pytest.approx(reviewed * cost)
    assert ws.catalog.counts()["review"] == reviewed


def test_limit_and_repeated_items_cost_nothing(ws: Workspace) -> None:
    expert = SimulatedExpert(ws, truth, budget=10)
    rows = items(ws)
    assert len(expert.review_items(rows, limit=1)) == 1
    # The first item again (also under another label set id): skipped without cost.
    again = [rows[0], {**rows[0], "label_set_id": rows[1]["label_set_id"]}, rows[2]]
    done = expert.review_items(again)
    assert [(o.scan_id, o.class_name) for o in done] == [(rows[2]["scan_id"], "spleen")]
    assert expert.spent == 2


def test_a_label_set_that_does_not_annotate_the_class_is_corrected(ws: Workspace) -> None:
    scan_id = items(ws)[0]["scan_id"]
    ls = add_pseudo(ws, scan_id, {"spleen": TRUTH["spleen"]})  # knows the spleen, not the pancreas
    o = SimulatedExpert(ws, truth, budget=1).review(scan_id, "pancreas", ls)
    assert o.action == "corrected" and o.dice_before == 1.0  # nothing there, nothing drawn, still no opinion
    assert ws.catalog.coverage(str(o.result_label_set_id))["pancreas"] == ABSENT


def test_item_with_wrong_truth_shape_or_unknown_label_set_is_refused(ws: Workspace) -> None:
    item = items(ws)[0]
    expert = SimulatedExpert(ws, lambda s, c: np.zeros((2, 2, 2), bool), budget=5)
    with pytest.raises(HarmonizeError, match="shape"):
        expert.review(item["scan_id"], "spleen", item["label_set_id"])
    with pytest.raises(HarmonizeError, match="no label set"):
        SimulatedExpert(ws, truth, budget=5).review(item["scan_id"], "spleen", "ls-nope")
    assert expert.spent == 0 and ws.catalog.counts()["review"] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cost_per_item": 0}, "cost_per_item"),
        ({"budget": -1}, "budget"),
        ({"accept_dice": 1.5}, "accept_dice"),
    ],
)
def test_bad_settings_are_refused(ws: Workspace, kwargs: dict[str, float], match: str) -> None:
    args = {"budget": 5.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        SimulatedExpert(ws, truth, **args)  # type: ignore[arg-type]


def test_stored_truth_round_trip(tmp_path: Path) -> None:
    st = StoredTruth(tmp_path / "truth")
    st.write("kits23:case_00001", {"liver": TRUTH["liver"], "spleen": np.zeros(SHAPE, bool)}, SHAPE)
    assert np.array_equal(st("kits23:case_00001", "liver"), TRUTH["liver"])
    assert not st("kits23:case_00001", "spleen").any() and st("kits23:case_00001", "spleen").shape == SHAPE
    assert StoredTruth.key("a:b") != StoredTruth.key("a_b")
    with pytest.raises(HarmonizeError, match="no stored truth"):
        st("kits23:case_00002", "liver")


def test_to_scan_grid_refuses_another_grid() -> None:
    a = np.zeros((4, 5, 6), bool)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(HarmonizeError, match="shape"):
        to_scan_grid(a, aff, aff, (4, 5, 7))
    shifted = aff.copy()
    shifted[0, 3] = 1.0
    with pytest.raises(HarmonizeError, match="mm off"):
        to_scan_grid(a, aff, shifted, (4, 5, 6))


# ------------------------------------------------------------------ phantoms in native conventions


@pytest.mark.parametrize("source", ["kits23", "chaos_ct"])  # NIfTI in IPL order; a DICOM series + PNG labels
def test_phantom_truth_matches_the_ingested_labels(tmp_path: Path, source: str) -> None:
    from workbench.ingest import ingest

    spec = PhantomSpec(seed=7, shape=(40, 36, 24), spacing=(4.0, 4.0, 5.0), missing=("kidney_left",))
    data = tmp_path / "data"
    write_native(spec.make(), get_protocol(source), data, "c1")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, source, data, progress=False)
    scan_id = str(ws.catalog.query("SELECT id FROM scan")["id"].iloc[0])
    provider = PhantomTruth(ws, {scan_id: spec})
    ls = ws.catalog.latest_original(scan_id)
    assert ls is not None
    known = {n: s for n, s in ws.catalog.coverage(ls["id"]).items() if s != NOT_ANN}
    assert known and any(s == PRESENT for s in known.values())
    for name, state in known.items():
        expected = (
            ws.masks.read(ls["mask_key"], name)
            if state == PRESENT
            else np.zeros(provider(scan_id, name).shape)
        )
        assert np.array_equal(provider(scan_id, name), expected), name
    assert provider(scan_id, "kidney_left").shape == tuple(
        int(s) for s in review.scan_row(ws, scan_id)["shape"]
    )
    assert not provider(scan_id, "kidney_left").any()  # the phantom has no left kidney
    assert provider.image(scan_id).shape == provider(scan_id, "liver").shape
    with pytest.raises(HarmonizeError, match="no phantom spec"):
        provider("other:1", "liver")
    # As an evaluation truth: every class annotated, present exactly where the phantom has it.
    st = provider.scan_truth(scan_id)
    assert st.source_id == source and set(st.states) == set(class_names())
    assert st.states["kidney_left"] == ABSENT and st.states["liver"] == PRESENT
    assert np.array_equal(st.mask("liver"), provider(scan_id, "liver")) and not st.mask("kidney_left").any()
    assert st.spacing == tuple(float(s) for s in review.scan_row(ws, scan_id)["spacing"])


def test_simulated_expert_with_phantom_truth_restores_a_wrong_pseudo_label(tmp_path: Path) -> None:
    from workbench.ingest import ingest

    spec = PhantomSpec(seed=3, shape=(40, 36, 24), spacing=(4.0, 4.0, 5.0))
    write_native(spec.make(), get_protocol("kits23"), tmp_path / "data", "c1")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "kits23", tmp_path / "data", progress=False)
    scan_id = str(ws.catalog.query("SELECT id FROM scan")["id"].iloc[0])
    provider = PhantomTruth(ws, {scan_id: spec})
    liver = provider(scan_id, "liver")
    shape = liver.shape
    ls_id = f"ls-pseudo-{scan_id.replace(':', '-')}"
    ws.masks.write_label_set(ls_id, {"liver": np.roll(liver, 3, axis=0)}, shape)  # type: ignore[arg-type]
    cov = {n: NOT_ANN for n in class_names()}
    cov["liver"] = PRESENT
    ws.catalog.add_label_set(
        LabelSetRecord(id=ls_id, scan_id=scan_id, version=2, origin="pseudo", mask_key=ls_id, run_id="r"),
        cov,
        [],
    )
    expert = SimulatedExpert(ws, provider, budget=1, image=provider.image)
    o = expert.review(scan_id, "liver", ls_id)
    assert o.action == "corrected" and o.dice_before < 0.95
    stats = ws.catalog.query(
        "SELECT * FROM class_stats WHERE label_set_id = ? AND class_name = 'liver'", [o.result_label_set_id]
    ).iloc[0]
    assert stats["voxels"] == liver.sum()
    assert abs(stats["hu_mean"] - 60) < 10  # the phantom's liver HU, from the CT the provider re-made
    entry = assemble_training_set(ws, scan_ids=[scan_id])[0]
    assert entry.origins["liver"] == "revised" and np.array_equal(entry.masks["liver"], liver)


# ------------------------------------------------------------------ two readers of different skill (#13)


def test_noisy_boundary_moves_the_outline_by_whole_voxels() -> None:
    from workbench.learning.simulated_expert import noisy_boundary

    cube = np.zeros((12, 12, 12), bool)
    cube[3:9, 3:9, 3:9] = True  # 216 voxels
    sizes = {int(noisy_boundary(cube, 1, np.random.default_rng(s)).sum()) for s in range(20)}
    # eroded: a 4-cube (64); dilated 6-connected: 216 + 6 faces x 36 = 432
    assert sizes == {64, 432}
    assert np.array_equal(noisy_boundary(cube, 0, np.random.default_rng(0)), cube)


@pytest.mark.parametrize(("error_rate", "wrong"), [(0.0, 0), (1.0, 4)])
def test_an_error_rate_makes_the_wrong_call(ws: Workspace, error_rate: float, wrong: int) -> None:
    expert = SimulatedExpert(ws, truth, budget=10, error_rate=error_rate)
    outcomes = expert.review_items(items(ws))
    right = ["accept", "accept", "corrected", "corrected"]
    # a wrong call rejects what it should accept and accepts what it should correct
    expected = right if error_rate == 0 else ["reject", "reject", "accept", "accept"]
    assert [o.action for o in outcomes] == expected
    assert expert.error_counts() == {"rejected": 2 * (wrong > 0), "injected_errors": wrong}


def test_the_draws_are_repeatable_per_reviewer(tmp_path: Path) -> None:
    def actions(root: Path, reviewer: str) -> list[str]:
        w = Workspace.open(root)
        for i, shared in enumerate((20, 19, 10, 0, 20, 19, 10, 0)):
            add_pseudo(w, add_scan(w, f"c{i}"), {"spleen": spleen_with_overlap(shared)})
        e = SimulatedExpert(w, truth, budget=20, error_rate=0.5, reviewer=reviewer, seed=3)
        return [o.action for o in e.review_items(items(w))]

    assert actions(tmp_path / "a", "Dr A") == actions(tmp_path / "b", "Dr A")


def test_a_reading_team_double_reads_and_adjudication_catches_the_error(ws: Workspace) -> None:
    from workbench.learning.simulated_expert import ReadingTeam

    review.set_share(ws, 1.0)
    ws.catalog.add_uncertainty(
        [
            {**r, "run_id": "run-p", "score": 1.0 - i / 10, "signals": {}, "reasons": []}
            for i, r in enumerate(items(ws))
        ]
    )
    team = ReadingTeam(
        SimulatedExpert(ws, truth, budget=10, reviewer="reader A"),
        SimulatedExpert(ws, truth, budget=10, reviewer="reader B", error_rate=1.0),
        SimulatedExpert(ws, truth, budget=10, reviewer="adjudicator"),
    )
    first = team.review_items(review.queue(ws))
    assert len(first) == 4 and len(team.second_outcomes) == 4 and len(team.adjudications) == 4
    # B erred on every item: every pair disagrees, the adjudicator's (right) call is the verdict
    assert team.error_summary() == {
        "injected": 4,
        "double_read": 4,
        "caught": 4,
        "missed": 0,
        "single_read": 0,
    }
    verdicts = [ws.catalog.verdict_of(o.label_set_id, "spleen") for o in first]
    assert [(v or {}).get("decision") for v in verdicts] == ["accept", "accept", "corrected", "corrected"]
    table = review.agreement(ws).set_index("class_name")
    assert (table.loc["spleen", "pairs"], table.loc["spleen", "agreement"]) == (4, 0.0)
