"""Harmonizing the REAL files in ../shared/fixtures (TotalSegmentator v1/v2, AMOS22, DICOM + NRRD)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.harmonizer import ANNOTATED_PRESENT, harmonize_case, harmonize_label_map
from harmonize.layout import CaseFiles
from harmonize.protocols import get_protocol, parse_protocol
from harmonize.readers import read_dicom_series, read_volume

# Classes whose v1 and v2 predictions legitimately differ more: whole femur drawn by two different
# models (the universal class is the femoral head, see the protocols' [approximate] notes), and the
# small pancreas of this low-resolution crop.
LOOSE = {"femur_left": 0.6, "pancreas": 0.75}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def ts_cases(shared_fixtures: Path):  # type: ignore[no-untyped-def]
    folder = shared_fixtures / "totalsegmentator"
    out = {}
    for source, seg in (
        ("totalsegmentator_v1", "example_seg_v1.nii.gz"),
        ("totalsegmentator_v2", "example_seg_fast_force_split.nii.gz"),
    ):
        _, out[source] = harmonize_case(
            get_protocol(source), CaseFiles("example", folder / "example_ct.nii.gz", folder / seg)
        )
    return out


def test_totalsegmentator_v1_and_v2_harmonize_to_nearly_the_same_masks(ts_cases) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = ts_cases["totalsegmentator_v1"], ts_cases["totalsegmentator_v2"]
    shared = sorted(set(v1.masks) & set(v2.masks))
    assert len(shared) >= 20  # organs, vessels, lungs, bowel, femurs, adrenals
    dices = {n: _dice(v1.masks[n].full(), v2.masks[n].full()) for n in shared}
    for name, d in dices.items():
        assert d >= LOOSE.get(name, 0.88), f"{name}: Dice {d:.3f}"
    assert np.mean(list(dices.values())) > 0.93
    # both versions split nothing (TotalSegmentator draws sides) and agree on the coverage of shared classes
    assert v1.splits == [] and v2.splits == []
    for name in shared:
        assert v1.coverage[name] == v2.coverage[name] == ANNOTATED_PRESENT


def test_totalsegmentator_lung_lobes_merge_into_lungs(ts_cases, shared_fixtures: Path) -> None:  # type: ignore[no-untyped-def]
    seg = np.asarray(
        nib.load(shared_fixtures / "totalsegmentator/example_seg_fast_force_split.nii.gz").dataobj
    )
    lobes_left = np.isin(seg, [10, 11])  # v2 ids: lung_upper_lobe_left, lung_lower_lobe_left
    lobes_right = np.isin(seg, [12, 13, 14])
    v2 = ts_cases["totalsegmentator_v2"]
    np.testing.assert_array_equal(v2.masks["lung_left"].full(), lobes_left)
    np.testing.assert_array_equal(v2.masks["lung_right"].full(), lobes_right)
    # kidney cysts (ids 23/24) would count for the kidney too; HU statistics come from the real CT
    ct = np.asarray(nib.load(shared_fixtures / "totalsegmentator/example_ct.nii.gz").dataobj)
    assert v2.stats["liver"].hu_mean == pytest.approx(float(ct[seg == 5].mean()), rel=1e-6)


def test_amos_label_map(shared_fixtures: Path) -> None:
    path = shared_fixtures / "amos/amos_0013_label.nii.gz"
    label = read_volume(path, kind="label")
    assert label.axcodes == ("L", "A", "S")
    case = harmonize_label_map(label, get_protocol("amos22"), case_id="0013", label_path=path)
    raw = np.asarray(nib.load(path).dataobj)
    # AMOS22 values, from the challenge's dataset.json: 2 right kidney, 3 left kidney, 6 liver, 9 postcava
    for value, name in (
        (1, "spleen"),
        (2, "kidney_right"),
        (3, "kidney_left"),
        (6, "liver"),
        (9, "postcava"),
        (11, "adrenal_gland_right"),
        (12, "adrenal_gland_left"),
    ):
        assert case.stats[name].voxels == int((raw == value).sum()), name
    # in world coordinates (RAS+: the patient's left has the smaller x) the left kidney lies left
    assert case.stats["kidney_left"].centroid_mm[0] < case.stats["kidney_right"].centroid_mm[0]
    assert case.stats["liver"].centroid_mm[0] > case.stats["spleen"].centroid_mm[0]
    assert case.stats["liver"].volume_ml == pytest.approx(
        (raw == 6).sum() * float(np.prod(label.spacing)) / 1000, rel=1e-6
    )
    # value 15 (prostate/uterus) is known but not mapped: noted, not an error
    if (raw == 15).any():
        assert any("15" in n for n in case.notes)
    assert case.coverage["prostate"] == "not_annotated"


DCMQI = parse_protocol(
    {
        "id": "dcmqi_liver",
        "name": "dcmqi example",
        "protocol_version": 1,
        "layout": {"kind": "paired", "image": "{case}", "label": "{case}.nrrd"},
        "labels": {"1": ["liver"]},
        "unmapped": {"2": "thoracic spine"},
    }
)


@pytest.mark.parametrize("label_file", ["liver_seg.nrrd", "liver_spine_seg.nrrd"])
def test_dicom_series_with_nrrd_labels(shared_fixtures: Path, label_file: str) -> None:
    image = read_dicom_series(shared_fixtures / "dicom_ct/ct-3slice")
    label = read_volume(shared_fixtures / "dicom_ct" / label_file, kind="label")
    case = harmonize_label_map(label, DCMQI, case_id="ct-3slice", image=image)
    liver = case.masks["liver"].full()
    assert liver.sum() == int((label.array == 1).sum()) > 0
    assert case.stats["liver"].hu_mean == pytest.approx(float(image.array[label.array == 1].mean()))
    assert 0 < case.stats["liver"].hu_mean < 150  # soft tissue, not bone or air: the grids line up
    assert case.coverage["liver"] == ANNOTATED_PRESENT
    if label_file == "liver_spine_seg.nrrd":
        assert case.notes == ["label values 2 (thoracic spine) have no universal class and were ignored"]
