"""Every uncertainty signal on constructed cases whose answer is known, the catalog reference statistics,
and the viewer's map (its files: tests/storage/test_maps.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harmonize.masks import CroppedMask
from workbench.pseudolabel import uncertainty as unc


def _cm(full: np.ndarray) -> CroppedMask:
    return CroppedMask.from_full(full)


def _box(shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


@pytest.mark.parametrize(
    ("p", "bits"), [(0.5, 1.0), (0.9, 0.4689956), (0.1, 0.4689956), (1.0, 0.0), (0.0, 0.0)]
)
def test_binary_entropy(p: float, bits: float) -> None:
    expected = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert expected == pytest.approx(bits, abs=1e-6)
    assert float(unc.binary_entropy(np.array([p]))[0]) == pytest.approx(expected, abs=1e-4)


def test_entropy_signal_averages_over_mask_and_border() -> None:
    prob = np.full((10, 10, 10), 0.9, np.float32)
    mask = _box((10, 10, 10), (4, 4, 4), (6, 6, 6))
    prob[3:7, 3:7, 3:7] = 0.5  # mask + its one-voxel border: 64 voxels of p = 0.5
    assert unc.entropy_signal(prob, mask) == pytest.approx(1.0, abs=1e-4)
    prob[3:7, 3:7, 3:7] = 0.9
    assert unc.entropy_signal(prob, mask) == pytest.approx(0.4689956, abs=1e-4)
    # An empty mask looks at the near misses (p >= 0.2) only; none -> 0.
    empty = np.zeros_like(mask)
    low = np.full((10, 10, 10), 0.05, np.float32)
    assert unc.entropy_signal(low, empty) == 0.0
    low[0, 0, 0] = 0.3
    assert unc.entropy_signal(low, empty) == pytest.approx(
        -(0.3 * math.log2(0.3) + 0.7 * math.log2(0.7)), abs=1e-4
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [((0, 4), (0, 4), 0.0), ((0, 4), (2, 6), 0.5), ((0, 4), (4, 8), 1.0), ((0, 0), (0, 0), 0.0)],
)
def test_dice_disagreement(a: tuple[int, int], b: tuple[int, int], expected: float) -> None:
    ma, mb = np.zeros(10, bool), np.zeros(10, bool)
    ma[a[0] : a[1]] = True
    mb[b[0] : b[1]] = True
    assert unc.dice_disagreement(ma, mb) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "allowed"),
    [
        ("liver_tumor", "liver", True),
        ("kidney_tumor", "kidney_left", True),
        ("liver_tumor", "hepatic_vessel", True),
        ("kidney_tumor", "kidney_cyst", True),
        ("spleen", "stomach", False),
        ("liver_tumor", "spleen", False),
        ("kidney_left", "kidney_right", False),
    ],
)
def test_which_classes_may_overlap(a: str, b: str, allowed: bool) -> None:
    assert unc.may_overlap(a, b) is allowed and unc.may_overlap(b, a) is allowed


def test_overlap_signal_reports_the_worst_forbidden_overlap() -> None:
    shape = (20, 20, 20)
    spleen = _cm(_box(shape, (0, 0, 0), (4, 5, 5)))  # 100 voxels
    stomach = _cm(_box(shape, (3, 0, 0), (10, 5, 5)))  # shares 25
    pancreas = _cm(_box(shape, (0, 0, 4), (10, 10, 10)))  # shares 4*5*1 = 20
    frac, other = unc.overlap_signal(
        "spleen", spleen, {"stomach": stomach, "pancreas": pancreas, "spleen": spleen}
    )
    assert (frac, other) == (pytest.approx(0.25), "stomach")
    tumour = _cm(_box(shape, (1, 1, 1), (3, 3, 3)))
    assert unc.overlap_signal("liver_tumor", tumour, {"liver": spleen}) == (0.0, None)
    # a liver tumour drawn into the spleen: the tumour's error (8 of its 8 voxels), not the spleen's
    assert unc.overlap_signal("liver_tumor", tumour, {"spleen": spleen}) == (1.0, "spleen")
    assert unc.overlap_signal("spleen", spleen, {"liver_tumor": tumour}) == (0.0, None)


def test_component_count_and_centroid() -> None:
    m = _box((20, 20, 20), (0, 0, 0), (2, 2, 2)) | _box((20, 20, 20), (10, 10, 10), (12, 12, 12))
    assert unc.component_count(_cm(m)) == 2
    assert unc.component_count(CroppedMask.empty((4, 4, 4))) == 0
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 0.0, -5.0)
    c = unc.centroid_mm(_cm(m), affine)
    assert c is not None
    np.testing.assert_allclose(c, [10.0 + 2 * 5.5, 5.5, -5.0 + 3 * 5.5])  # mean index (0.5 + 10.5) / 2


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("kidney_left", -30.0, 30.0),
        ("kidney_left", 42.0, -42.0),
        ("kidney_right", 42.0, 42.0),
        ("liver", 5.0, None),
    ],
)
def test_side_offset_is_positive_on_the_own_side(name: str, x: float, expected: float | None) -> None:
    # RAS+: the patient's left is at smaller x. Midline at x = 0.
    assert unc.side_offset(name, np.array([x, 0.0, 0.0]), 0.0) == expected


def test_outside_parent_fraction_with_margin() -> None:
    shape = (40, 10, 10)
    liver = _cm(_box(shape, (0, 0, 0), (20, 10, 10)))
    # Tumour spans i = 16..27: i < 20 inside, 20..24 within the 5 mm margin (1 mm voxels), 25..27 outside.
    tumour = _cm(_box(shape, (16, 4, 4), (28, 6, 6)))
    frac = unc.outside_parent_signal(tumour, [liver], (1.0, 1.0, 1.0))
    assert frac == pytest.approx(3 / 12)
    # A hole in the organ (a tumour the organ prediction left out) counts as inside.
    holed = liver.full()
    holed[5:9, 3:7, 3:7] = False
    inner = _cm(_box(shape, (5, 3, 3), (9, 7, 7)))
    assert unc.outside_parent_signal(inner, [_cm(holed)], (1.0, 1.0, 1.0)) == 0.0


def _reference_rows() -> list[dict[str, object]]:
    rows = []
    volumes = {"s1": 100.0, "s2": 120.0, "s3": 80.0, "s4": 110.0}
    for i, (scan, vol) in enumerate(volumes.items()):
        rows.append(
            {
                "scan_id": scan,
                "class_name": "spleen",
                "state": "annotated_present",
                "volume_ml": vol,
                "components": 1 + (i == 3),
                "centroid_mm": [-60.0, 0.0, 100.0 + i],
            }
        )
        rows.append(
            {
                "scan_id": scan,
                "class_name": "liver",
                "state": "annotated_present",
                "volume_ml": 1500.0,
                "components": 1,
                "centroid_mm": [60.0, 0.0, 120.0 + 2 * i],
            }
        )
    rows.append(
        {
            "scan_id": "s5",
            "class_name": "spleen",
            "state": "annotated_absent",
            "volume_ml": None,
            "components": None,
            "centroid_mm": None,
        }
    )
    return rows


def test_reference_statistics_from_annotated_scans() -> None:
    ref = unc.reference_from_rows(_reference_rows())["spleen"]
    logs = np.log([100.0, 120.0, 80.0, 110.0])
    assert (ref.n_annotated, ref.n_present) == (5, 4) and ref.presence == pytest.approx(0.8)
    assert ref.log_volume_mean == pytest.approx(logs.mean())
    assert ref.log_volume_sd == pytest.approx(max(logs.std(ddof=1), unc.MIN_LOG_VOLUME_SD))
    assert ref.components_p95 == 2
    offsets = [100.0 - 120.0, 101.0 - 122.0, 102.0 - 124.0, 103.0 - 126.0]
    mean, sd, n = ref.z_offsets["liver"]
    assert (mean, n) == (pytest.approx(np.mean(offsets)), 4) and sd == pytest.approx(np.std(offsets, ddof=1))


def _ctx(z_slices: int = 60) -> unc.ScanContext:
    # 1 mm voxels, z from 80 to 80 + z_slices - 1 mm; liver annotated at z = 125.
    affine = np.eye(4)
    affine[:3, 3] = (-100.0, -50.0, 80.0)
    return unc.ScanContext(
        affine, (200, 100, z_slices), 0.0, known={}, known_centroids={"liver": np.array([60.0, 0, 125.0])}
    )


def test_volume_z_score_and_components_against_the_catalog() -> None:
    reference = unc.reference_from_rows(_reference_rows())
    ctx = _ctx()
    shape = ctx.shape
    # 200 mL in a 1 mm grid: 200000 voxels: a spleen twice the catalog's size.
    m = np.zeros(shape, bool)
    m[30:80, 20:70, 0:60] = True  # 150000 voxels
    m[30:80, 20:70, 0:20] = True
    m[100:110, 0:10, 0:10] = True  # a second component on the right side
    cm = _cm(m)
    sig = unc.plausibility_signals("spleen", cm, {"spleen": cm}, ctx, reference)
    ref = reference["spleen"]
    expected_z = (math.log(cm.voxels / 1000.0) - ref.log_volume_mean) / ref.log_volume_sd  # type: ignore[operator]
    assert sig["volume_z"] == pytest.approx(expected_z)
    assert sig["components"] == 2 and sig["expected_components"] == 1
    assert sig["present"] and sig["in_region"] is None


@pytest.mark.parametrize(("z_slices", "in_region"), [(60, True), (15, False)])
def test_missing_organ_where_the_body_region_says_it_must_be(z_slices: int, in_region: bool) -> None:
    # Expected spleen z = liver z (125) + mean offset (-21.5) = 103.5 mm. A scan from z 80 to 139 covers
    # it; one from 80 to 94 does not.
    reference = unc.reference_from_rows(_reference_rows())
    ctx = _ctx(z_slices)
    empty = CroppedMask.empty(ctx.shape)
    sig = unc.plausibility_signals("spleen", empty, {"spleen": empty}, ctx, reference)
    assert sig["present"] is False and sig["in_region"] is in_region
    assert sig["expected_presence"] == pytest.approx(0.8)


def test_tumour_outside_its_organ_and_wrong_side_signals() -> None:
    ctx = _ctx()
    shape = ctx.shape
    liver = _cm(_box(shape, (120, 10, 10), (180, 90, 50)))
    tumour = _cm(_box(shape, (20, 40, 20), (30, 50, 30)))  # far left of the liver
    kidney_left = _cm(_box(shape, (140, 40, 20), (150, 50, 30)))  # x = 40..49 mm: the patient's right
    masks = {"liver": liver, "liver_tumor": tumour, "kidney_left": kidney_left}
    sig = unc.plausibility_signals("liver_tumor", tumour, masks, ctx, {})
    assert sig["outside_parent"] == pytest.approx(1.0) and sig["parent"] == "liver"
    no_liver = {**masks, "liver": CroppedMask.empty(shape)}  # the liver's miss is the liver's item
    sig = unc.plausibility_signals("liver_tumor", tumour, no_liver, ctx, {})
    assert sig["outside_parent"] is None and sig["parent"] == "liver"
    sig = unc.plausibility_signals("kidney_left", kidney_left, masks, ctx, {})
    assert sig["side_offset_mm"] == pytest.approx(-44.5) and sig["side"] == "left"


def test_scan_signals_with_probabilities_and_tta() -> None:
    shape = (20, 20, 20)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ctx = unc.ScanContext(affine, shape, 20.0)
    mask = _cm(_box(shape, (12, 5, 5), (16, 9, 9)))
    probs = np.zeros((1, 10, 10, 10), np.float16)
    probs[0, 6:8, 2:5, 2:5] = 0.9
    tta = np.zeros_like(probs)
    tta[0, 6:8, 2:5, 2:4] = 0.9  # 12 of 18 voxels
    low_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    low_affine[:3, 3] = 1.0
    signals, emap = unc.scan_signals({"spleen": mask}, ctx, {}, probs, ("spleen",), low_affine, tta)
    s = signals["spleen"]
    assert set(s) == set(unc.SIGNAL_KEYS)
    assert s["tta_disagreement"] == pytest.approx(1 - 2 * 12 / (18 + 12), abs=1e-4)
    assert 0 < s["entropy"] < 1
    assert emap is not None and emap.dtype == np.float16 and emap.shape == (10, 10, 10)
    assert float(emap.max()) == pytest.approx(0.469, abs=1e-3)


def test_uncertainty_rows_are_scored_and_stored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage.workspace import Workspace
    from workbench.pseudolabel.scoring import assess

    ws = Workspace.open(tmp_path / "ws")
    signals = {"spleen": {"outside_parent": None, "components": 2, "expected_components": 1}}
    rows = unc.uncertainty_rows("a:1", "run-1", "ls-a", signals, {"spleen": 3})
    assert (rows[0]["score"], rows[0]["reasons"]) == assess("spleen", signals["spleen"], 3)
    unc.store_uncertainty(ws, rows)
    unc.store_uncertainty(ws, rows)  # the same scan, class and run: replaced, not doubled
    stored = ws.catalog.uncertainty_items("run-1")
    assert stored[["scan_id", "class_name", "label_set_id"]].values.tolist() == [["a:1", "spleen", "ls-a"]]


def test_near_miss_measures_the_largest_faint_region_of_a_class_predicted_absent() -> None:
    shape = (20, 20, 20)
    prob = np.zeros(shape, np.float32)
    prob[2:5, 2:5, 2:5] = 0.3  # 27 voxels
    prob[10:12, 10:12, 10:12] = 0.45  # 8 voxels, the highest probability
    prob[3, 3, 3] = 0.35
    empty = np.zeros(shape, bool)
    ml, peak = unc.near_miss(prob, empty, voxel_ml=0.125)  # 5 mm voxels
    assert ml == pytest.approx(27 * 0.125) and peak == pytest.approx(0.35)
    assert unc.near_miss(np.full(shape, 0.1, np.float32), empty, 0.125) == (0.0, pytest.approx(0.1))
    assert unc.near_miss(prob, prob >= 0.4, 0.125) == (None, None)  # predicted present
