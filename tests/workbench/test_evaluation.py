"""Held-out evaluation: Dice/NSD against hand-computed cases, tumour detection rules, the stored split,
``evaluate`` end to end (catalog rows, run record, report files) and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord, ScanRecord
from storage.workspace import Workspace
from workbench import evaluation as ev
from workbench.cli import main

PRESENT, ABSENT, NOT_ANN = "annotated_present", "annotated_absent", "not_annotated"


def cube(
    shape: tuple[int, int, int], lo: tuple[int, int, int], size: int | tuple[int, int, int]
) -> np.ndarray:
    s = (size,) * 3 if isinstance(size, int) else size
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + s[0], lo[1] : lo[1] + s[1], lo[2] : lo[2] + s[2]] = True
    return m


def shifted_cubes(axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a 4^3 cube at [2, 6)^3; prediction: the same cube one voxel further along ``axis``."""
    lo = [2, 2, 2]
    t = cube((10, 10, 10), (2, 2, 2), 4)
    lo[axis] += 1
    return t, cube((10, 10, 10), tuple(lo), 4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- Dice / NSD


def expected_nsd_shifted(spacing: tuple[float, float, float], axis: int, tol: float) -> float:
    """By hand: each 4^3 cube has 56 edge voxels (64 minus the 2^3 interior), 112 in all. Per cube, the
    16 voxels of the face that sticks out lie one step along ``axis`` from the other cube's nearest edge
    (distance spacing[axis]); the 4 inner voxels of the face that moved inside the other cube lie at
    min(spacing) from its nearest edge voxel; the other 36 coincide with edge voxels of the other cube."""
    far = 2 * 16 * (spacing[axis] > tol)
    inner = 2 * 4 * (min(spacing) > tol)
    return (112 - far - inner) / 112


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize(
    "spacing, tol",
    [
        ((2.5, 1.0, 1.0), 2.0),
        ((2.5, 1.0, 1.0), 3.0),
        ((1.0, 2.5, 0.8), 2.0),
        ((3.0, 3.0, 3.0), 2.0),
        ((3.0, 3.0, 3.0), 3.0),  # distances equal to the tolerance count as correct
        ((1.0, 1.0, 1.0), 0.0),
        ((0.7, 0.7, 5.0), 1.0),
    ],
)
def test_cubes_offset_by_one_voxel(axis: int, spacing: tuple[float, float, float], tol: float) -> None:
    t, p = shifted_cubes(axis)
    dice, nsd = ev.dice_nsd(t, p, spacing, tol)
    assert dice == pytest.approx(2 * 48 / 128)  # overlap 4 x 4 x 3
    assert nsd == pytest.approx(expected_nsd_shifted(spacing, axis, tol))


def test_hand_case_values_are_the_ones_worked_out() -> None:
    t, p = shifted_cubes(0)
    assert ev.dice_nsd(t, p, (2.5, 1.0, 1.0), 2.0) == pytest.approx((0.75, 80 / 112))
    assert ev.dice_nsd(t, p, (3.0, 3.0, 3.0), 2.0) == pytest.approx((0.75, 72 / 112))
    assert ev.dice_nsd(t, p, (1.0, 2.5, 2.5), 2.0) == pytest.approx((0.75, 1.0))


def reference_nsd(t: np.ndarray, p: np.ndarray, spacing: tuple[float, float, float], tol: float) -> float:
    """Surface Dice from its definition: edge voxels (mask minus its 6-connected erosion), each edge
    voxel's euclidean distance in mm to the other mask's nearest edge voxel."""
    et, ep = t & ~ndimage.binary_erosion(t), p & ~ndimage.binary_erosion(p)
    d_p_to_t = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
    d_t_to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]
    return float(((d_p_to_t <= tol).sum() + (d_t_to_p <= tol).sum()) / (ep.sum() + et.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing, tol", [((0.8, 0.8, 2.5), 2.0), ((1.5, 3.0, 1.0), 1.0)])
def test_blobs_match_the_definition(seed: int, spacing: tuple[float, float, float], tol: float) -> None:
    rng = np.random.default_rng(seed)
    t = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((24, 20, 18)), 2) > 0.5)
    p = ndimage.binary_dilation(t) if seed % 2 else ndimage.binary_erosion(t)
    p[rng.integers(0, 24), rng.integers(0, 20), rng.integers(0, 18)] ^= True
    assert t.any() and p.any()
    dice, nsd = ev.dice_nsd(t, p, spacing, tol)
    assert dice == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
    assert nsd == pytest.approx(reference_nsd(t, p, spacing, tol))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated internal argument
def test_crop_gives_the_whole_volume_result_also_at_the_border() -> None:
    import torch
    from monai.metrics import compute_surface_dice

    t = cube((12, 12, 12), (0, 0, 3), (5, 6, 4))  # touches two faces of the volume
    p = cube((12, 12, 12), (0, 1, 4), (6, 6, 4))

    def oh(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    full = float(compute_surface_dice(oh(p), oh(t), [1.5], spacing=[1.0, 2.0, 1.0])[0, 0])
    assert ev.dice_nsd(t, p, (1.0, 2.0, 1.0), 1.5)[1] == pytest.approx(full)


@pytest.mark.parametrize(
    "t_empty, p_empty, expected",
    [(True, True, (1.0, 1.0)), (True, False, (0.0, 0.0)), (False, True, (0.0, 0.0))],
)
def test_empty_masks_follow_the_stated_rule(
    t_empty: bool, p_empty: bool, expected: tuple[float, float]
) -> None:
    m = cube((8, 8, 8), (2, 2, 2), 3)
    e = np.zeros_like(m)
    assert ev.dice_nsd(e if t_empty else m, e if p_empty else m, (1.0, 1.0, 1.0)) == expected


@pytest.mark.parametrize(
    "p_shape, spacing, tol, match",
    [
        ((8, 8, 7), (1.0, 1.0, 1.0), 2.0, "same shape"),
        ((8, 8, 8), (1.0, 0.0, 1.0), 2.0, "spacing"),
        ((8, 8, 8), (1.0, 1.0), 2.0, "spacing"),
        ((8, 8, 8), (1.0, 1.0, 1.0), -1.0, "tolerance"),
        ((8, 8, 8), (1.0, 1.0, 1.0), float("inf"), "tolerance"),
    ],
)
def test_bad_metric_input_is_refused(
    p_shape: tuple[int, int, int], spacing: tuple[float, ...], tol: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ev.dice_nsd(np.ones((8, 8, 8), bool), np.ones(p_shape, bool), spacing, tol)


# ---------------------------------------------------------------------------------- scoring a scan


def truth_of(scan_id: str, source: str, states: dict[str, str], masks: dict[str, np.ndarray]) -> ev.ScanTruth:
    return ev.ScanTruth(scan_id, source, (1.0, 1.0, 1.0), states, masks, (10, 10, 10))


def test_score_scan_scores_only_annotated_classes_and_lists_unpredicted() -> None:
    liver = cube((10, 10, 10), (1, 1, 1), 5)
    truth = truth_of(
        "a:1",
        "a",
        {"liver": PRESENT, "spleen": ABSENT, "pancreas": ABSENT, "aorta": PRESENT, "stomach": NOT_ANN},
        {"liver": liver, "aorta": cube((10, 10, 10), (7, 7, 0), 2)},
    )
    pred = {
        "liver": liver,
        "spleen": np.zeros((10, 10, 10), bool),  # absent and not predicted: 1
        "pancreas": cube((10, 10, 10), (0, 8, 8), 1),  # absent but predicted: 0
        "stomach": cube((10, 10, 10), (5, 5, 5), 3),  # not annotated: never scored
        "kidney_left": cube((10, 10, 10), (5, 0, 0), 2),  # not in the truth at all: never scored
    }
    items, missing = ev.score_scan(truth, pred, prediction_label_sets={"liver": "ls-p"})
    by = {i["class_name"]: i for i in items}
    assert list(by) == [n for n in class_names() if n in {"liver", "spleen", "pancreas"}]
    assert (by["liver"]["dice"], by["liver"]["nsd"]) == (1.0, 1.0)
    assert (by["spleen"]["dice"], by["spleen"]["nsd"]) == (1.0, 1.0)
    assert (by["pancreas"]["dice"], by["pancreas"]["nsd"]) == (0.0, 0.0)
    assert by["pancreas"]["predicted_voxels"] == 1 and by["pancreas"]["truth_voxels"] == 0
    assert (
        by["liver"]["prediction_label_set_id"] == "ls-p" and by["spleen"]["prediction_label_set_id"] is None
    )
    assert missing == ["aorta"]


def test_score_scan_refuses_a_prediction_of_another_shape() -> None:
    truth = truth_of("a:1", "a", {"liver": ABSENT}, {})
    with pytest.raises(ValueError, match="prediction shape"):
        ev.score_scan(truth, {"liver": np.zeros((9, 10, 10), bool)})


# ---------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "state, voxels, min_voxels, expected",
    [
        (PRESENT, 1, 1, "tp"),
        (PRESENT, 0, 1, "fn"),
        (PRESENT, 4, 5, "fn"),
        (PRESENT, 5, 5, "tp"),
        (ABSENT, 0, 1, "tn"),
        (ABSENT, 1, 1, "fp"),
        (ABSENT, 4, 5, "tn"),
        (NOT_ANN, 100, 1, None),
        (PRESENT, 0, 0, "fn"),  # "any tumour predicted" needs at least one voxel
    ],
)
def test_detection_outcome(state: str, voxels: int, min_voxels: int, expected: str | None) -> None:
    assert ev.detection_outcome(state, voxels, min_voxels) == expected


def detection_cases() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source lits annotates liver_tumor: two tumour scans (one detected by a single voxel, one missed), three
    tumour-free scans (one with a false positive). Source btcv does not annotate liver tumours: its two
    scans are excluded, whatever is predicted in them. kits annotates kidney_tumor only."""
    shape = (10, 10, 10)
    tumour = cube(shape, (3, 3, 3), 2)
    one_voxel = cube(shape, (4, 4, 4), 1)
    empty = np.zeros(shape, bool)
    cases = [
        ("lits:1", "lits", {"liver_tumor": PRESENT}, {"liver_tumor": tumour}, {"liver_tumor": one_voxel}),
        ("lits:2", "lits", {"liver_tumor": PRESENT}, {"liver_tumor": tumour}, {"liver_tumor": empty}),
        ("lits:3", "lits", {"liver_tumor": ABSENT}, {}, {"liver_tumor": empty}),
        ("lits:4", "lits", {"liver_tumor": ABSENT}, {}, {"liver_tumor": one_voxel}),
        ("lits:5", "lits", {"liver_tumor": ABSENT}, {}, {"liver_tumor": empty}),
        ("btcv:1", "btcv", {"liver": ABSENT}, {}, {"liver_tumor": tumour, "liver": empty}),
        ("btcv:2", "btcv", {"liver": ABSENT}, {}, {"liver_tumor": empty, "liver": empty}),
        ("kits:1", "kits", {"kidney_tumor": PRESENT}, {"kidney_tumor": tumour}, {"kidney_tumor": tumour}),
    ]
    items: list[dict[str, object]] = []
    for scan_id, source, states, masks, pred in cases:
        items += ev.score_scan(truth_of(scan_id, source, states, masks), pred)[0]
    scans = pd.DataFrame([(c[0], c[1]) for c in cases], columns=["scan_id", "source_id"])
    return pd.DataFrame(items, columns=list(ev.ITEM_COLUMNS)), scans


def test_detection_table_sensitivity_specificity_and_exclusion() -> None:
    items, scans = detection_cases()
    table = ev.detection_table(items, scans).set_index(["source_id", "class_name"])
    liver = table.loc[("all", "liver_tumor")]
    assert (liver["tumour_scans"], liver["detected"], liver["sensitivity"]) == (2, 1, 0.5)
    assert (liver["tumour_free"], liver["false_positives"]) == (3, 1)
    assert liver["specificity"] == pytest.approx(2 / 3)
    assert liver["excluded"] == 3  # btcv:1, btcv:2, kits:1 do not annotate liver tumours
    assert table.loc[("lits", "liver_tumor")]["excluded"] == 0
    kidney = table.loc[("all", "kidney_tumor")]
    assert (kidney["tumour_scans"], kidney["detected"], kidney["tumour_free"]) == (1, 1, 0)
    assert np.isnan(kidney["specificity"])  # no tumour-free kidney scan: undefined, not 0 or 1
    assert ("btcv", "liver_tumor") not in table.index  # a source that does not annotate it has no row


def test_detection_min_voxels() -> None:
    items, scans = detection_cases()
    table = ev.detection_table(items, scans, min_voxels=2).set_index(["source_id", "class_name"])
    liver = table.loc[("all", "liver_tumor")]
    # the one-voxel detection and the one-voxel false positive no longer count
    assert (liver["detected"], liver["false_positives"], liver["specificity"]) == (0, 0, 1.0)


def test_metrics_table_means_per_source_and_pooled() -> None:
    items = pd.DataFrame(
        [
            ("a:1", "a", "liver", PRESENT, 10, 10, 0.8, 0.9),
            ("a:2", "a", "liver", ABSENT, 0, 0, 1.0, 1.0),
            ("b:1", "b", "liver", PRESENT, 10, 10, 0.6, 0.5),
            ("b:1", "b", "spleen", PRESENT, 10, 10, 0.4, 0.3),
        ],
        columns=list(ev.ITEM_COLUMNS[:8]),
    )
    m = ev.metrics_table(items).set_index(["source_id", "class_name"])
    assert m.loc[("all", "liver"), "dice"] == pytest.approx((0.8 + 1.0 + 0.6) / 3)
    assert m.loc[("all", "liver"), "dice_present"] == pytest.approx((0.8 + 0.6) / 2)
    assert m.loc[("all", "liver"), "nsd_present"] == pytest.approx((0.9 + 0.5) / 2)
    assert (m.loc[("all", "liver"), "n"], m.loc[("all", "liver"), "n_present"]) == (3, 2)
    assert m.loc[("a", "liver"), "dice"] == pytest.approx(0.9)
    assert m.loc[("b", "spleen"), "nsd"] == pytest.approx(0.3)
    assert list(ev.metrics_table(items)["source_id"]) == ["all", "all", "a", "b", "b"]


# -------------------------------------------------------------------------------- workspace helpers

SHAPE = (14, 12, 10)
SPACING = (1.5, 2.0, 3.0)


def add_scan(ws: Workspace, source: str, case: str, masks: dict[str, np.ndarray], annotated: set[str]) -> str:
    """A scan with an original label set: ``annotated`` classes known, present where ``masks`` has them."""
    scan_id = f"{source}:{case}"
    affine = np.diag([*SPACING, 1.0])
    ls_id = f"ls-orig-{source}-{case}"
    ws.masks.write_label_set(ls_id, {n: m for n, m in masks.items() if m.any()}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov.update({n: PRESENT if n in masks and masks[n].any() else ABSENT for n in annotated})
    scan = ScanRecord(
        id=scan_id,
        source_id=source,
        case_id=case,
        image_path=f"/data/{source}/{case}.nii.gz",
        label_path=f"/data/{source}/{case}_seg.nii.gz",
        image_sha256=f"sha-{scan_id}",
        image_bytes=1,
        image_mtime=0.0,
        shape=SHAPE,
        spacing=SPACING,
        axcodes="RAS",
        affine=tuple(float(v) for v in affine.ravel()),
        hu_min=-1000.0,
        hu_max=1000.0,
        image_format="nifti",
        series_uid_sha1=None,
    )
    record = LabelSetRecord(id=ls_id, scan_id=scan_id, version=1, origin="original", mask_key=ls_id)
    ws.catalog.add_label_set(record, cov, [], scan=scan)
    return scan_id


def add_pseudo(ws: Workspace, scan_id: str, masks: dict[str, np.ndarray], run_id: str) -> str:
    """A pseudo label set of ``run_id`` predicting exactly the classes in ``masks``."""
    version = int(ws.catalog.label_sets(scan_id)["version"].max()) + 1
    ls_id = f"ls-pseudo-{run_id}-{scan_id.replace(':', '-')}-{version}"
    ws.masks.write_label_set(ls_id, {n: m for n, m in masks.items() if m.any()}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov.update({n: PRESENT if m.any() else ABSENT for n, m in masks.items()})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=version, origin="pseudo", mask_key=ls_id, run_id=run_id
        ),
        cov,
        [],
    )
    return ls_id


def add_plain_scans(ws: Workspace, counts: dict[str, int]) -> None:
    with ws.catalog.session():  # one connection for the burst of writes
        for source, n in counts.items():
            for i in range(n):
                add_scan(ws, source, f"c{i:03d}", {}, {"liver"})


# -------------------------------------------------------------------------------------------- split


def test_split_is_stored_stratified_and_stable(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    add_plain_scans(ws, {"big": 10, "mid": 5, "two": 2, "one": 1})
    held = ev.held_out_split(ws, fraction=0.2, seed=3)
    per_source = pd.Series([s.split(":")[0] for s in held]).value_counts().to_dict()
    # floor(0.2 n + 0.5) per source: 10 -> 2, 5 -> 1, 2 -> 0, 1 -> 0
    assert per_source == {"big": 2, "mid": 1}
    rows = ws.catalog.query("SELECT * FROM split")
    assert len(rows) == 18 and set(rows["method"]) == {"stratified"}
    assert set(rows.loc[rows["split"] == "held_out", "scan_id"]) == held
    # Within a source, the held-out scans are those with the smallest hash of (seed, scan id).
    big = sorted((s for s in rows["scan_id"] if s.startswith("big:")), key=lambda s: ev.unit_hash(3, s))
    assert set(big[:2]) == {s for s in held if s.startswith("big:")}
    # Stable: later calls (other fraction, other seed, a reopened workspace) return the stored split.
    assert ev.held_out_split(ws, fraction=0.5, seed=99) == held
    assert ev.held_out_split(Workspace.open(tmp_path / "ws")) == held
    assert ev.training_scan_ids(ws) == set(rows["scan_id"]) - held


def test_new_scans_are_assigned_by_hash_without_moving_old_ones(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    add_plain_scans(ws, {"big": 10})
    held = ev.held_out_split(ws, fraction=0.3, seed=1)
    before = ws.catalog.split_assignments()
    add_plain_scans(ws, {"late": 30})
    held2 = ev.held_out_split(ws, fraction=0.3, seed=1)
    after = ws.catalog.split_assignments()
    assert {s: after[s] for s in before} == before
    assert held2 & {s for s in before} == held
    late = [s for s in after if s.startswith("late:")]
    assert {s for s in late if after[s] == "held_out"} == {s for s in late if ev.unit_hash(1, s) < 0.3}
    assert 0 < len(held2 - held) < 30
    methods = ws.catalog.query("SELECT scan_id, method FROM split").set_index("scan_id")["method"]
    assert set(methods[late]) == {"hash"}


def test_choose_split_is_independent_of_order() -> None:
    scans = {f"s{i % 3}:{i}": f"s{i % 3}" for i in range(30)}
    reordered = dict(reversed(list(scans.items())))
    assert ev.choose_split(scans, 0.25, 7) == ev.choose_split(reordered, 0.25, 7)
    assert ev.choose_split(scans, 0.25, 7) != ev.choose_split(scans, 0.25, 8)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_fraction_is_refused(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        ev.held_out_split(Workspace.open(tmp_path / "ws"), fraction=fraction)


# ------------------------------------------------------------------------------------- end to end


def build_eval_ws(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Two sources, four scans each; fraction 0.5 holds out two per source. lits annotates liver and
    liver_tumor, btcv liver and spleen. Run ``run-a`` predicts every class of every scan."""
    ws = Workspace.open(root)
    truths: dict[str, dict[str, np.ndarray]] = {}
    with ws.catalog.session():  # one connection for the burst of writes
        for source, annotated in (("lits", {"liver", "liver_tumor"}), ("btcv", {"liver", "spleen"})):
            for i in range(4):
                masks = {"liver": cube(SHAPE, (2, 2, 2), (6 + i % 2, 5, 4))}
                if source == "lits" and i % 2 == 0:
                    masks["liver_tumor"] = cube(SHAPE, (3, 3, 3), 2)
                if source == "btcv":
                    masks["spleen"] = cube(SHAPE, (9, 6, 5), 3)
                truths[add_scan(ws, source, f"c{i}", masks, annotated)] = masks
        for scan_id, masks in truths.items():
            pred = {
                "liver": np.roll(masks["liver"], 1, axis=2),
                "spleen": masks.get("spleen", np.zeros(SHAPE, bool)),
                "liver_tumor": cube(
                    SHAPE, (4, 4, 4), 1
                ),  # one voxel everywhere: detected, or a false positive
                "stomach": cube(SHAPE, (0, 0, 0), 2),
            }
            add_pseudo(ws, scan_id, pred, "run-a")
    return truths


@pytest.fixture(scope="module")
def eval_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("eval") / "ws"
    return root, build_eval_ws(root)


@pytest.fixture
def eval_ws(
    eval_template: tuple[Path, dict[str, dict[str, np.ndarray]]], tmp_path: Path
) -> tuple[Workspace, dict[str, dict[str, np.ndarray]]]:
    """A private copy of the evaluation workspace (:func:`build_eval_ws`)."""
    shutil.copytree(eval_template[0], tmp_path / "ws")
    return Workspace.open(tmp_path / "ws"), eval_template[1]


def test_evaluate_end_to_end(eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]]) -> None:
    ws, truths = eval_ws
    result = ev.evaluate(ws, "run-a", fraction=0.5, seed=0, tolerance_mm=2.0)
    held = ev.held_out_split(ws)
    assert len(held) == 4 and {s.split(":")[0] for s in held} == {"lits", "btcv"}
    assert set(result.scans["scan_id"]) == held

    # Every item recomputed independently: the liver is shifted one voxel along k (3 mm > 2 mm tolerance).
    expected = []
    for scan_id in sorted(held):
        truth = truths[scan_id]
        source = scan_id.split(":")[0]
        annotated = {"lits": ["liver", "liver_tumor"], "btcv": ["liver", "spleen"]}[source]
        for name in annotated:
            t = truth.get(name, np.zeros(SHAPE, bool))
            p = {
                "liver": np.roll(truth["liver"], 1, axis=2),
                "spleen": truth.get("spleen", np.zeros(SHAPE, bool)),
                "liver_tumor": cube(SHAPE, (4, 4, 4), 1),
            }[name]
            inter = (t & p).sum()
            dice = 1.0 if not t.any() and not p.any() else 2 * inter / (t.sum() + p.sum())
            expected.append((scan_id, name, dice))
    got = result.items.set_index(["scan_id", "class_name"])["dice"]
    assert len(got) == len(expected)
    for scan_id, name, dice in expected:
        assert got[(scan_id, name)] == pytest.approx(dice)
    assert not result.items["class_name"].eq("stomach").any()
    liver_nsd = result.items[result.items["class_name"] == "liver"]["nsd"]
    assert (liver_nsd < 1).all() and (liver_nsd > 0).all()

    # Stored: the run, its metrics JSON, one evaluation row per item, and the report files.
    run = ws.catalog.query("SELECT * FROM run WHERE id = ?", [result.run_id]).iloc[0]
    assert run["kind"] == "evaluate" and run["finished_at"] is not None
    metrics = json.loads(run["metrics"])
    assert metrics["predictions"] == "run-a" and metrics["tolerance_mm"] == 2.0
    assert metrics["mean_dice"] == pytest.approx(result.mean_dice)
    assert metrics["by_class"]["spleen"]["dice"] == pytest.approx(1.0)
    assert set(metrics["by_source"]) == {"lits", "btcv"}
    assert json.loads(run["config"])["split"] == {"fraction": 0.5, "seed": 0}
    rows = ws.catalog.query("SELECT * FROM evaluation WHERE run_id = ?", [result.run_id])
    assert len(rows) == len(result.items) and set(rows["tolerance_mm"]) == {2.0}
    assert set(rows["prediction_label_set_id"].str.startswith("ls-pseudo-run-a")) == {True}
    report = result.report_dir
    assert report == ws.root / "reports" / result.run_id
    assert {p.name for p in report.iterdir()} >= {"report.md", "metrics.csv", "detection.csv", "items.csv"}
    csv = pd.read_csv(report / "metrics.csv")
    assert set(csv["source_id"]) == {"all", "lits", "btcv"}
    text = (report / "report.md").read_text()
    assert "NSD tolerance: 2 mm" in text and "| liver_tumor |" in text

    # Detection: the held-out lits scans are one tumour scan and one tumour-free scan; one voxel is
    # predicted in both, so sensitivity 1/1 and specificity 0/1; btcv scans are excluded.
    det = result.detection.set_index(["source_id", "class_name"]).loc[("all", "liver_tumor")]
    lits_held = sorted(s for s in held if s.startswith("lits:"))
    n_tumour = sum("liver_tumor" in truths[s] for s in lits_held)
    assert (det["tumour_scans"], det["detected"]) == (n_tumour, n_tumour)
    assert (det["tumour_free"], det["false_positives"]) == (2 - n_tumour, 2 - n_tumour)
    assert det["excluded"] == 2


def test_evaluate_counts_annotated_classes_the_run_did_not_predict(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]],
) -> None:
    ws, truths = eval_ws
    for scan_id in truths:
        add_pseudo(
            ws, scan_id, {"liver": truths[scan_id]["liver"], "stomach": cube(SHAPE, (0, 0, 0), 2)}, "run-b"
        )
    result = ev.evaluate(ws, "run-b", fraction=0.5)
    assert set(result.items["class_name"]) == {"liver"}
    assert (result.items["dice"] == 1.0).all() and (result.items["nsd"] == 1.0).all()
    assert len(result.unpredicted) == 4  # liver_tumor of two lits scans, spleen of two btcv scans
    assert any("--all-classes" in line for line in result.lines())


def test_evaluate_refuses_unknown_runs_and_empty_splits(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]], tmp_path: Path
) -> None:
    ws, _ = eval_ws
    with pytest.raises(HarmonizeError, match="run-a"):
        ev.evaluate(ws, "run-nope")
    small = Workspace.open(tmp_path / "small")
    add_plain_scans(small, {"one": 1})
    add_pseudo(small, "one:c000", {"liver": np.zeros(SHAPE, bool)}, "run-s")
    with pytest.raises(HarmonizeError, match="no scan is held out"):
        ev.evaluate(small, "run-s")
    assert small.catalog.counts()["run"] == 0


def test_evaluate_without_predictions_on_held_out_scans_fails_clearly(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]],
) -> None:
    ws, _ = eval_ws
    train = sorted(ev.training_scan_ids(ws, fraction=0.5))
    add_pseudo(ws, train[0], {"liver": np.zeros(SHAPE, bool)}, "run-train-only")
    with pytest.raises(HarmonizeError, match="none of the 4 held-out scans"):
        ev.evaluate(ws, "run-train-only")


def test_cli_evaluate(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]], capsys: pytest.CaptureFixture[str]
) -> None:
    ws, _ = eval_ws
    ev.held_out_split(ws, fraction=0.5)
    code = main(["--workspace", str(ws.root), "evaluate", "run-a", "--tolerance-mm", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "NSD tolerance 3 mm" in out and "report:" in out
    assert ws.catalog.query("SELECT count(*) AS n FROM run WHERE kind = 'evaluate'")["n"].iloc[0] == 1
    # liver shifted 3 mm, tolerance 3 mm: every liver boundary voxel is within tolerance
    rows = ws.catalog.query("SELECT nsd FROM evaluation WHERE class_name = 'liver'")
    assert (rows["nsd"] == 1.0).all()
    assert main(["--workspace", str(ws.root), "evaluate", "run-nope"]) == 2
    assert "wrote no pseudo label set" in capsys.readouterr().err


def test_given_truths_replace_the_catalog_and_only_held_out_ones_count(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]],
) -> None:
    ws, truths = eval_ws
    held = ev.held_out_split(ws, fraction=0.5)
    # A complete truth for every scan: the stomach is annotated absent everywhere, so the run's stomach
    # guess (8 voxels in every scan) now scores 0, and only the held-out scans are scored.
    given = [
        ev.ScanTruth(
            s, s.split(":")[0], SPACING, {"liver": PRESENT, "stomach": ABSENT}, {"liver": m["liver"]}, SHAPE
        )
        for s, m in truths.items()
    ]
    result = ev.evaluate(ws, "run-a", truths=given)
    assert set(result.scans["scan_id"]) == held and result.truth == "given"
    assert set(result.items["class_name"]) == {"liver", "stomach"}
    stomach = result.items[result.items["class_name"] == "stomach"]
    assert len(stomach) == 4 and (stomach["dice"] == 0).all() and (stomach["predicted_voxels"] == 8).all()
    run = ws.catalog.query("SELECT config FROM run WHERE id = ?", [result.run_id]).iloc[0]
    assert json.loads(run["config"])["truth"] == "given"
