"""Post-processing: every rule on a constructed case, each change recorded, and the ordered rule list."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.masks import CroppedMask
from workbench.pseudolabel import postprocess as pp_function
from workbench.pseudolabel.postprocess import RULE_NAMES, RULES, postprocess


def _cm(full: np.ndarray) -> CroppedMask:
    return CroppedMask.from_full(full)


def test_postprocess_keeps_the_largest_component_and_records_it() -> None:
    m = np.zeros((30, 30, 30), bool)
    m[2:10, 2:10, 2:10] = True
    m[20:23, 20:23, 20:23] = True
    res = postprocess({"spleen": _cm(m)}, np.eye(4), midline_x_mm=100.0)
    assert res.masks["spleen"].voxels == 512
    assert res.changes == [
        {
            "class": "spleen",
            "step": "largest_component",
            "voxels_before": 539,
            "voxels_after": 512,
            "detail": "kept the largest of 2 components",
        }
    ]
    assert "spleen: kept the largest of 2 components (539 -> 512 voxels)" in res.notes


def test_postprocess_resplits_pairs_at_the_midline_in_world_coordinates() -> None:
    # LPS-like grid: index i grows towards the patient's LEFT (x = -i). Midline at x = -20 (i = 20).
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    left_kidney = np.zeros((40, 20, 20), bool)
    left_kidney[28:34, 5:10, 5:10] = True  # i > 20: x < -20: patient's left
    right_kidney = np.zeros((40, 20, 20), bool)
    right_kidney[6:12, 5:10, 5:10] = True
    # The model swapped the channels; both kidneys also leak into each other's channel.
    res = postprocess(
        {"kidney_left": _cm(right_kidney | left_kidney), "kidney_right": _cm(left_kidney)},
        affine,
        midline_x_mm=-20.0,
    )
    np.testing.assert_array_equal(res.masks["kidney_left"].full(), left_kidney)
    np.testing.assert_array_equal(res.masks["kidney_right"].full(), right_kidney)
    assert {d.side for d in res.splits} == {"left", "right"}
    assert any(c["step"] == "split_left_right" for c in res.changes)


@pytest.mark.parametrize("parent_source", ["predicted", "annotated", "annotated_absent"])
def test_postprocess_keeps_tumour_only_inside_its_organ(parent_source: str) -> None:
    liver = np.zeros((40, 40, 40), bool)
    liver[5:25, 5:25, 5:25] = True
    tumour = np.zeros_like(liver)
    tumour[10:15, 10:15, 10:15] = True  # inside
    tumour[32:36, 32:36, 32:36] = True  # far outside (> 5 mm)
    masks = {"liver_tumor": _cm(tumour)}
    known = {}
    if parent_source == "predicted":
        masks["liver"] = _cm(liver)
    elif parent_source == "annotated":
        known["liver"] = _cm(liver)
    else:
        known["liver"] = CroppedMask.empty(liver.shape)  # type: ignore[arg-type]
    res = postprocess(masks, np.eye(4), midline_x_mm=0.0, known=known)
    expected = 0 if parent_source == "annotated_absent" else 125
    assert res.masks["liver_tumor"].voxels == expected
    assert res.changes[-1]["step"] == "inside_parent"


def test_postprocess_removes_portal_vein_below_the_pancreas() -> None:
    pancreas = np.zeros((20, 20, 30), bool)
    pancreas[5:15, 5:10, 12:16] = True
    vein = np.zeros_like(pancreas)
    vein[8:10, 12:14, 4:25] = True
    res = postprocess(
        {"pancreas": _cm(pancreas), "portal_vein_and_splenic_vein": _cm(vein)}, np.eye(4), midline_x_mm=10.0
    )
    kept = res.masks["portal_vein_and_splenic_vein"].full()
    assert kept[:, :, :12].sum() == 0 and kept[:, :, 12:].sum() == 4 * 13


def test_rules_run_in_order_and_a_subset_applies_only_those() -> None:
    assert RULE_NAMES == (
        "resplit_pairs",
        "keep_largest_component",
        "remove_portal_vein_below_pancreas",
        "keep_inside_parent",
    )
    assert pp_function is postprocess  # the package re-exports the function
    m = np.zeros((30, 30, 30), bool)
    m[2:10, 2:10, 2:10] = True
    m[20:23, 20:23, 20:23] = True
    without = [r for r in RULES if r.__name__ != "keep_largest_component"]
    res = postprocess({"spleen": _cm(m)}, np.eye(4), midline_x_mm=100.0, rules=without)
    assert res.masks["spleen"].voxels == 539 and res.changes == []
