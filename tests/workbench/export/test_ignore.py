"""The ignore region of a partial label map: the body, a margin in mm around a pseudo-label, the union."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.export.ignore import (
    FROM_ABSENT,
    FROM_BODY,
    FROM_PARENT,
    FROM_PSEUDO,
    axial_axis,
    body_mask,
    dilate_mm,
    ignore_region,
    ignore_totals,
    spacing_of,
)


def test_body_fills_air_inside_the_patient_per_axial_slice() -> None:
    ct = np.full((12, 10, 6), -1000.0)
    ct[2:10, 2:8, :] = 40.0  # 8 x 6 body
    ct[4:6, 4:6, :] = -850.0  # a lung-like hole inside it: body too
    ct[4:6, 4:6, 5] = -1000.0  # ... open to the top slice (an airway): still filled slice by slice
    body = body_mask(ct, np.eye(4))
    assert int(body.sum()) == 8 * 6 * 6
    assert not body[0].any() and not body[:, 9].any()


@pytest.mark.parametrize(
    ("affine", "axis"),
    [(np.eye(4), 2), (np.array([[0, 0, 2.0, 0], [0, 1.0, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]]), 0)],
)
def test_axial_axis_follows_the_affine(affine: np.ndarray, axis: int) -> None:
    assert axial_axis(affine) == axis


def test_dilation_is_euclidean_in_mm_on_anisotropic_spacing() -> None:
    mask = np.zeros((21, 21, 11), bool)
    mask[10, 10, 5] = True
    spacing = (1.0, 1.0, 2.5)
    grown = dilate_mm(mask, spacing, 3.0)
    # voxels whose centre lies within 3 mm: |di|^2 + |dj|^2 + (2.5 dk)^2 <= 9, counted by brute force
    ii, jj, kk = np.meshgrid(np.arange(-10, 11), np.arange(-10, 11), np.arange(-5, 6), indexing="ij")
    expected = int(((ii**2 + jj**2 + (2.5 * kk) ** 2) <= 9).sum())
    assert int(grown.sum()) == expected == 29 + 2 * 9
    assert np.array_equal(dilate_mm(mask, spacing, 0.0), mask)
    assert spacing_of(np.diag([*spacing, 1.0])) == spacing


def test_an_unknown_class_without_a_pseudo_label_is_ignored_in_the_body_only() -> None:
    ct = np.full((10, 10, 4), -1000.0)
    ct[1:9, 1:9, :] = 30.0
    hint = np.zeros(ct.shape, bool)
    hint[2:4, 2:4, 1:3] = True
    region, how = ignore_region(["spleen", "liver"], {"spleen": hint}, ct, np.eye(4), margin_mm=1.0)
    assert how == {"spleen": FROM_PSEUDO, "liver": FROM_BODY}
    assert int(region.sum()) == 8 * 8 * 4  # the body covers the dilated spleen
    region, how = ignore_region(["spleen"], {"spleen": hint}, ct, np.eye(4), margin_mm=1.0)
    # a 2 x 2 x 2 cube grown by 1 mm (face neighbours only): 8 + 6 faces x 4
    assert how == {"spleen": FROM_PSEUDO} and int(region.sum()) == 8 + 6 * 4


def test_totals_add_the_cases() -> None:
    cases = [
        {"voxels": 100, "ignore_voxels": 30, "background_voxels": 50},
        {"voxels": 300, "ignore_voxels": 0, "background_voxels": 280},
    ]
    t = ignore_totals(cases, 5.0)
    assert (t["voxels"], t["ignore_voxels"], t["background_voxels"], t["cases_with_ignore"]) == (
        400,
        30,
        330,
        1,
    )
    assert t["ignore_share"] == pytest.approx(0.075) and t["background_share"] == pytest.approx(0.825)


def test_a_pseudo_label_that_calls_a_class_absent() -> None:
    """An absent organ is ignored nowhere; an absent lesion anywhere in its organ (grown by the margin);
    an absent lesion whose organ has no mask anywhere in the body."""
    ct = np.full((10, 10, 4), -1000.0)
    ct[1:9, 1:9, :] = 30.0
    kidney = np.zeros(ct.shape, bool)
    kidney[2:4, 2:4, 1:3] = True
    region, how = ignore_region(["spleen"], {}, ct, np.eye(4), 1.0, absent={"spleen"})
    assert how == {"spleen": FROM_ABSENT} and not region.any()
    region, how = ignore_region(
        ["kidney_tumor"], {}, ct, np.eye(4), 1.0, absent={"kidney_tumor"}, organs={"kidney_right": kidney}
    )
    assert how == {"kidney_tumor": FROM_PARENT} and int(region.sum()) == 8 + 6 * 4
    region, how = ignore_region(["liver_tumor"], {}, ct, np.eye(4), 1.0, absent={"liver_tumor"}, organs={})
    assert how == {"liver_tumor": FROM_BODY} and int(region.sum()) == 8 * 8 * 4
