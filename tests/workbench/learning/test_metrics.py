"""Scoring: Dice/NSD against hand-computed cases and the definition, scoring a scan (only annotated classes),
patient-level tumour detection rules and the pooled metric tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from harmonize.taxonomy import class_names
from workbench.learning import metrics

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
    dice, nsd = metrics.dice_nsd(t, p, spacing, tol)
    assert dice == pytest.approx(2 * 48 / 128)  # overlap 4 x 4 x 3
    assert nsd == pytest.approx(expected_nsd_shifted(spacing, axis, tol))


def test_hand_case_values_are_the_ones_worked_out() -> None:
    t, p = shifted_cubes(0)
    assert metrics.dice_nsd(t, p, (2.5, 1.0, 1.0), 2.0) == pytest.approx((0.75, 80 / 112))
    assert metrics.dice_nsd(t, p, (3.0, 3.0, 3.0), 2.0) == pytest.approx((0.75, 72 / 112))
    assert metrics.dice_nsd(t, p, (1.0, 2.5, 2.5), 2.0) == pytest.approx((0.75, 1.0))


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
    dice, nsd = metrics.dice_nsd(t, p, spacing, tol)
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
    assert metrics.dice_nsd(t, p, (1.0, 2.0, 1.0), 1.5)[1] == pytest.approx(full)


@pytest.mark.parametrize(
    "t_empty, p_empty, expected",
    [(True, True, (1.0, 1.0)), (True, False, (0.0, 0.0)), (False, True, (0.0, 0.0))],
)
def test_empty_masks_follow_the_stated_rule(
    t_empty: bool, p_empty: bool, expected: tuple[float, float]
) -> None:
    m = cube((8, 8, 8), (2, 2, 2), 3)
    e = np.zeros_like(m)
    assert metrics.dice_nsd(e if t_empty else m, e if p_empty else m, (1.0, 1.0, 1.0)) == expected


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
        metrics.dice_nsd(np.ones((8, 8, 8), bool), np.ones(p_shape, bool), spacing, tol)


# ---------------------------------------------------------------------------------- scoring a scan


def truth_of(
    scan_id: str, source: str, states: dict[str, str], masks: dict[str, np.ndarray]
) -> metrics.ScanTruth:
    return metrics.ScanTruth(scan_id, source, (1.0, 1.0, 1.0), states, masks, (10, 10, 10))


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
    items, missing = metrics.score_scan(truth, pred, prediction_label_sets={"liver": "ls-p"})
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
        metrics.score_scan(truth, {"liver": np.zeros((9, 10, 10), bool)})


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
    assert metrics.detection_outcome(state, voxels, min_voxels) == expected


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
        items += metrics.score_scan(truth_of(scan_id, source, states, masks), pred)[0]
    scans = pd.DataFrame([(c[0], c[1]) for c in cases], columns=["scan_id", "source_id"])
    return pd.DataFrame(items, columns=list(metrics.ITEM_COLUMNS)), scans


def test_detection_table_sensitivity_specificity_and_exclusion() -> None:
    items, scans = detection_cases()
    table = metrics.detection_table(items, scans).set_index(["source_id", "class_name"])
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
    table = metrics.detection_table(items, scans, min_voxels=2).set_index(["source_id", "class_name"])
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
        columns=list(metrics.ITEM_COLUMNS[:8]),
    )
    m = metrics.metrics_table(items).set_index(["source_id", "class_name"])
    assert m.loc[("all", "liver"), "dice"] == pytest.approx((0.8 + 1.0 + 0.6) / 3)
    assert m.loc[("all", "liver"), "dice_present"] == pytest.approx((0.8 + 0.6) / 2)
    assert m.loc[("all", "liver"), "nsd_present"] == pytest.approx((0.9 + 0.5) / 2)
    assert (m.loc[("all", "liver"), "n"], m.loc[("all", "liver"), "n_present"]) == (3, 2)
    assert m.loc[("a", "liver"), "dice"] == pytest.approx(0.9)
    assert m.loc[("b", "spleen"), "nsd"] == pytest.approx(0.3)
    assert list(metrics.metrics_table(items)["source_id"]) == ["all", "all", "a", "b", "b"]
