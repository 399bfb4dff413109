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
    # An empty mask looks at the near misses (p >= NEAR_MISS_P = 0.1) only; none -> 0.
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
    assert unc.near_miss(np.full(shape, 0.05, np.float32), empty, 0.125) == (0.0, pytest.approx(0.05))
    assert unc.near_miss(prob, prob >= 0.4, 0.125) == (None, None)  # predicted present


@pytest.mark.parametrize(
    ("peak", "predicted", "expected"),
    [
        (0.0, False, 0.008),  # a true absence as a model gives it: the faint 27-voxel region is the most
        (0.013, False, 0.013),  # the highest voxel anywhere, not the largest region's
        (0.6, False, 0.6),  # probability >= 0.5 that post-processing removed: reported as is
        (0.9, True, None),  # predicted present: no claim of absence to support
    ],
)
def test_absent_peak_is_the_highest_probability_of_a_class_predicted_absent(
    peak: float, predicted: bool, expected: float | None
) -> None:
    prob = np.zeros((12, 12, 12), np.float32)
    prob[1:4, 1:4, 1:4] = 0.008  # a larger faint region elsewhere
    prob[9, 9, 9] = peak
    mask = np.zeros(prob.shape, bool)
    mask[5:7, 5:7, 5:7] = predicted
    got = unc.absent_peak(prob, mask)
    assert got == (None if expected is None else pytest.approx(expected))


def _learnt_case() -> tuple[unc.ScanContext, dict[str, CroppedMask]]:
    # 1 mm voxels; a liver (learnt), a liver tumour (learnt) half inside a stomach the model never
    # learnt, and a spleen (learnt) 25 % inside that unlearnt stomach.
    shape = (40, 40, 40)
    ctx = unc.ScanContext(np.eye(4), shape, 20.0)
    masks = {
        "liver": _cm(_box(shape, (20, 0, 0), (40, 20, 20))),
        "liver_tumor": _cm(_box(shape, (16, 10, 10), (24, 12, 12))),  # 8 x 2 x 2: x 16..19 outside
        "spleen": _cm(_box(shape, (0, 20, 20), (8, 30, 30))),  # 800 voxels
        "stomach": _cm(_box(shape, (6, 0, 0), (20, 40, 40))),  # covers spleen x 6..7: 200 voxels
    }
    return ctx, masks


@pytest.mark.parametrize(
    ("learnt", "spleen_overlap", "tumour_overlap"),
    [
        (None, (0.25, "stomach"), (0.5, "stomach")),  # every head trusted (no training record)
        ({"liver", "liver_tumor", "spleen"}, (0.0, None), (0.0, None)),  # the stomach head never learnt
    ],
)
def test_an_unlearnt_class_mask_never_makes_a_learnt_item_look_wrong(
    learnt: set[str] | None,
    spleen_overlap: tuple[float, str | None],
    tumour_overlap: tuple[float, str | None],
) -> None:
    ctx, masks = _learnt_case()
    signals, _ = unc.scan_signals(masks, ctx, {}, learnt=learnt)
    assert (signals["spleen"]["overlap"], signals["spleen"]["overlap_with"]) == pytest.approx(spleen_overlap)
    got = (signals["liver_tumor"]["overlap"], signals["liver_tumor"]["overlap_with"])
    assert got == pytest.approx(tumour_overlap)
    # 4 of the tumour's 8 x-columns lie outside the liver, none beyond the 5 mm margin: inside either way
    assert signals["liver_tumor"]["outside_parent"] == pytest.approx(0.0)
    # the unlearnt class still gets its own signals (it is held back in the queue, not dropped)
    assert signals["stomach"]["overlap"] == pytest.approx(200 / (14 * 40 * 40), abs=1e-4)  # JSON: 4 digits


def test_an_unlearnt_parent_leaves_a_tumour_without_a_parent_to_lie_outside_of() -> None:
    ctx, masks = _learnt_case()
    far = {**masks, "liver_tumor": _cm(_box(ctx.shape, (0, 36, 36), (2, 38, 38)))}  # far from the liver
    learnt_all, _ = unc.scan_signals(far, ctx, {})
    assert learnt_all["liver_tumor"]["outside_parent"] == pytest.approx(1.0)
    no_liver, _ = unc.scan_signals(far, ctx, {}, learnt={"liver_tumor", "spleen"})
    assert no_liver["liver_tumor"]["outside_parent"] is None
    # an ANNOTATED liver is truth, whatever the model learnt
    ctx.known = {"liver": masks["liver"]}
    annotated, _ = unc.scan_signals(far, ctx, {}, learnt={"liver_tumor", "spleen"})
    assert annotated["liver_tumor"]["outside_parent"] == pytest.approx(1.0)


def _twin_case(midline: float) -> tuple[unc.ScanContext, CroppedMask]:
    # 1 mm voxels, x = i; fat everywhere, a right kidney at x 28..33 of 150 HU.
    shape = (40, 20, 20)
    hu = np.full(shape, -100, np.int16)
    twin = _box(shape, (28, 5, 5), (34, 15, 15))
    hu[twin] = 150
    return unc.ScanContext(np.eye(4), shape, midline, hu=hu), _cm(twin)


@pytest.mark.parametrize(
    ("midline", "filled", "expected"),
    [
        (19.5, None, 0.0),  # mirror x 6..11 is fat: an emptied fossa
        (19.5, (6, 12), 1.0),  # the whole mirror at the twin's 150 HU: the kidney is there
        (19.5, (6, 9), 0.5),  # 3 of its 6 columns
        (34.5, (36, 40), 4 / 6),  # mirror x 36..41: the 2 columns beyond the scan's edge do not match
    ],
)
def test_twin_density_match_reads_the_ct_where_the_twin_mirrors(
    midline: float, filled: tuple[int, int] | None, expected: float
) -> None:
    ctx, twin = _twin_case(midline)
    assert ctx.hu is not None
    if filled is not None:
        ctx.hu[filled[0] : filled[1], 5:15, 5:15] = 150
    assert unc.twin_density_match(twin, ctx) == pytest.approx(expected)


def test_twin_density_match_is_a_signal_of_a_paired_organ_predicted_absent_only() -> None:
    ctx, twin = _twin_case(19.5)
    empty = CroppedMask.empty(ctx.shape)
    masks = {"kidney_right": twin, "kidney_left": empty, "spleen": empty}
    assert unc.plausibility_signals("kidney_left", empty, masks, ctx, {})["twin_density_match"] == 0.0
    assert unc.plausibility_signals("spleen", empty, masks, ctx, {})["twin_density_match"] is None
    assert unc.plausibility_signals("kidney_right", twin, masks, ctx, {})["twin_density_match"] is None
    ctx.hu = None  # no CT (a tool run's signals): nothing to read
    assert unc.plausibility_signals("kidney_left", empty, masks, ctx, {})["twin_density_match"] is None
    assert unc.twin_density_match(empty, _twin_case(19.5)[0]) is None


def test_twin_density_comes_from_the_twin_s_core_not_its_fatty_boundary() -> None:
    # A predicted twin one voxel too big all round: 552 of its 1152 voxels are fat. The mirror
    # is fat too; the whole mask's 10th percentile (-100 HU) would call that fat "kidney density".
    ctx, _ = _twin_case(19.5)
    grown = _cm(_box(ctx.shape, (27, 4, 4), (35, 16, 16)))  # 8 x 12 x 12 = 1152 voxels around 600
    assert ctx.hu is not None
    assert np.percentile(ctx.hu[grown.full()], 10) == -100
    assert unc.twin_density_match(grown, ctx) == 0.0
