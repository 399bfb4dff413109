"""The harmonizer on hand-built label maps with independently known answers."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import (
    ANNOTATED_ABSENT,
    ANNOTATED_PRESENT,
    NOT_ANNOTATED,
    harmonize_class_files,
    harmonize_label_map,
)
from harmonize.protocols import parse_protocol
from harmonize.taxonomy import class_names
from harmonize.volume import Volume

KIDNEY_PROTOCOL = parse_protocol(
    {
        "id": "toy_kidney",
        "name": "toy",
        "protocol_version": 1,
        "layout": {"kind": "paired", "image": "{case}/img.nii.gz", "label": "{case}/seg.nii.gz"},
        "labels": {"1": ["kidney"], "2": ["kidney", "kidney_tumor"], "3": ["kidney", "kidney_cyst"]},
    }
)
LIVER_PROTOCOL = parse_protocol(
    {
        "id": "toy_liver",
        "name": "toy",
        "protocol_version": 1,
        "layout": {"kind": "paired", "image": "{case}.nii", "label": "{case}_seg.nii"},
        "labels": {"1": ["liver"], "2": ["liver", "liver_tumor"]},
        "inclusion": {"label_values_must_be_known": False},
    }
)
FILES_PROTOCOL = parse_protocol(
    {
        "id": "toy_files",
        "name": "toy",
        "protocol_version": 1,
        "layout": {"kind": "per_class_files", "image": "{case}/ct.nii.gz", "label": "{case}/segmentations"},
        "files": {
            "lung_upper_lobe_left": ["lung_left"],
            "lung_lower_lobe_left": ["lung_left"],
            "liver": ["liver"],
            "spleen": ["spleen"],
        },
    }
)

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])  # 12 mm^3 voxels


def _kidney_case() -> tuple[Volume, Volume]:
    lab = np.zeros((40, 10, 10), np.uint8)
    lab[2:8, 2:8, 2:8] = 1  # patient's left (small x in RAS)
    lab[30:36, 2:8, 2:8] = 1  # right
    lab[3:5, 3:5, 3:5] = 2  # tumour in the left kidney: 8 voxels
    ct = np.full(lab.shape, 30, np.int16)
    ct[lab > 0] = 150
    ct[lab == 2] = 50
    return Volume(ct, AFFINE), Volume(lab, AFFINE)


def test_tumour_voxels_count_for_organ_and_tumour() -> None:
    image, label = _kidney_case()
    case = harmonize_label_map(label, KIDNEY_PROTOCOL, case_id="c", image=image)
    assert case.stats["kidney_left"].voxels == 216  # 6^3, tumour included
    assert case.stats["kidney_right"].voxels == 216
    assert case.stats["kidney_tumor"].voxels == 8
    assert case.stats["kidney_tumor"].volume_ml == pytest.approx(8 * 12 / 1000)
    # HU mean of the left kidney: 208 voxels at 150 and 8 at 50
    assert case.stats["kidney_left"].hu_mean == pytest.approx((208 * 150 + 8 * 50) / 216)
    assert case.stats["kidney_tumor"].centroid_mm == pytest.approx((3.5 * 2, 3.5 * 2, 3.5 * 3))


def test_coverage_has_three_states_for_all_32_classes() -> None:
    image, label = _kidney_case()
    case = harmonize_label_map(label, KIDNEY_PROTOCOL, case_id="c", image=image)
    assert list(case.coverage) == class_names()
    assert case.coverage["kidney_left"] == ANNOTATED_PRESENT
    assert case.coverage["kidney_tumor"] == ANNOTATED_PRESENT
    assert case.coverage["kidney_cyst"] == ANNOTATED_ABSENT
    assert case.coverage["liver"] == NOT_ANNOTATED
    assert sum(s == NOT_ANNOTATED for s in case.coverage.values()) == 28
    assert set(case.masks) == {"kidney_left", "kidney_right", "kidney_tumor"}


def test_split_is_recorded_and_midline_from_body() -> None:
    image, label = _kidney_case()
    case = harmonize_label_map(label, KIDNEY_PROTOCOL, case_id="c", image=image)
    assert case.midline_method == "body"
    assert [d.side for d in case.splits] == ["left", "right"] or [d.side for d in case.splits] == [
        "right",
        "left",
    ]
    assert case.masks["kidney_left"].offset[0] == 2 and case.masks["kidney_right"].offset[0] == 30


def test_without_image_midline_comes_from_labels() -> None:
    _, label = _kidney_case()
    case = harmonize_label_map(label, KIDNEY_PROTOCOL, case_id="c")
    assert case.midline_method == "labels"
    assert case.midline_x_mm == pytest.approx((2 + 35) / 2 * 2)
    assert np.isnan(case.stats["kidney_left"].hu_mean)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lab: lab.__setitem__((0, 0, 0), 7), r"label values \[7\] are not in the toy_kidney protocol"),
        (lambda lab: lab.__setitem__(slice(None), 0), "label map is empty"),
    ],
)
def test_bad_label_values_name_the_file(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    image, label = _kidney_case()
    mutate(label.array)
    with pytest.raises(HarmonizeError, match=message) as err:
        harmonize_label_map(label, KIDNEY_PROTOCOL, case_id="c", image=image, label_path="/data/seg.nii.gz")
    assert err.value.path == "/data/seg.nii.gz"


def test_unknown_values_are_noted_when_the_protocol_allows_them() -> None:
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    lab[6:8, 6:8, 6:8] = 9  # e.g. a class without a universal counterpart
    case = harmonize_label_map(Volume(lab, AFFINE), LIVER_PROTOCOL, case_id="c")
    assert case.notes == ["label values 9 have no universal class and were ignored"]
    assert case.stats["liver"].voxels == 27
    assert case.coverage["liver_tumor"] == ANNOTATED_ABSENT


@pytest.mark.parametrize(
    ("label_affine", "label_shape", "message"),
    [
        (AFFINE, (40, 10, 11), "label shape"),
        (
            AFFINE
            + np.pad(np.eye(3) * 0, ((0, 1), (0, 1)))
            + np.array([[0, 0, 0, 1.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
            (40, 10, 10),
            "label affine differs",
        ),
    ],
)
def test_grid_mismatch_is_an_error(
    label_affine: np.ndarray, label_shape: tuple[int, ...], message: str
) -> None:
    image, _ = _kidney_case()
    lab = np.zeros(label_shape, np.uint8)
    lab[1, 1, 1] = 1
    with pytest.raises(HarmonizeError, match=message):
        harmonize_label_map(
            Volume(lab, label_affine), KIDNEY_PROTOCOL, case_id="c", image=image, label_path="seg.nii.gz"
        )


def test_negative_and_float_labels_are_errors() -> None:
    lab = np.zeros((4, 4, 4), np.int16)
    lab[0, 0, 0] = -1
    with pytest.raises(HarmonizeError, match="negative"):
        harmonize_label_map(Volume(lab, AFFINE), KIDNEY_PROTOCOL, case_id="c")
    with pytest.raises(HarmonizeError, match="non-integer"):
        harmonize_label_map(Volume(lab.astype(np.float32), AFFINE), KIDNEY_PROTOCOL, case_id="c")


def test_per_class_files_merge_lobes_and_mark_missing_files_not_annotated() -> None:
    shape = (20, 20, 20)
    upper = np.zeros(shape, np.uint8)
    upper[2:6, 2:6, 10:14] = 1
    lower = np.zeros(shape, np.uint8)
    lower[2:6, 2:6, 5:10] = 1
    liver = np.zeros(shape, np.uint8)  # drawn file, empty: annotated and absent
    files = {
        "lung_upper_lobe_left": Volume(upper, AFFINE),
        "lung_lower_lobe_left": Volume(lower, AFFINE),
        "liver": Volume(liver, AFFINE),
    }
    case = harmonize_class_files(files, FILES_PROTOCOL, case_id="s1")
    assert case.stats["lung_left"].voxels == 16 * 9
    assert case.stats["lung_left"].components == 1
    assert case.coverage["lung_left"] == ANNOTATED_PRESENT
    assert case.coverage["liver"] == ANNOTATED_ABSENT
    assert case.coverage["spleen"] == NOT_ANNOTATED  # its file is missing in this case
    assert case.notes == ["per-class files missing: spleen"]


def test_per_class_files_must_share_a_grid() -> None:
    a = Volume(np.ones((4, 4, 4), np.uint8), AFFINE)
    b = Volume(np.ones((4, 4, 5), np.uint8), AFFINE)
    with pytest.raises(HarmonizeError, match="not on one voxel grid"):
        harmonize_class_files(
            {"liver": a, "spleen": b},
            FILES_PROTOCOL,
            case_id="s1",
            paths={"spleen": "s1/segmentations/spleen.nii.gz"},
        )


def test_unmapped_values_are_ignored_with_their_meaning_and_others_stay_errors() -> None:
    protocol = parse_protocol(
        {
            "id": "toy_ctorg",
            "name": "toy",
            "protocol_version": 1,
            "layout": {"kind": "paired", "image": "{case}.nii", "label": "{case}_seg.nii"},
            "labels": {"1": ["liver"]},
            "unmapped": {"5": "bone", "6": "brain"},
        }
    )
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    lab[6:8, 6:8, 6:8] = 5
    case = harmonize_label_map(Volume(lab, AFFINE), protocol, case_id="c")
    assert case.notes == ["label values 5 (bone) have no universal class and were ignored"]
    lab[0, 0, 0] = 7
    with pytest.raises(
        HarmonizeError, match=r"label values \[7\] are not in the toy_ctorg protocol \(known: 0, 1, 5, 6\)"
    ):
        harmonize_label_map(Volume(lab, AFFINE), protocol, case_id="c")


def test_a_value_cannot_be_both_mapped_and_unmapped() -> None:
    with pytest.raises(ValueError, match=r"values \['1'\] are both in \[labels\] and \[unmapped\]"):
        parse_protocol(
            {
                "id": "bad",
                "name": "bad",
                "protocol_version": 1,
                "layout": {"kind": "paired", "image": "{case}.nii", "label": "{case}_seg.nii"},
                "labels": {"1": ["liver"]},
                "unmapped": {"1": "liver again"},
            }
        )
