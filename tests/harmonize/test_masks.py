"""CroppedMask: crops, union and crop affines against full-array computations."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.masks import CroppedMask, crop_affine


@pytest.mark.parametrize(
    ("a_box", "b_box"),
    [
        ((slice(1, 3), slice(1, 4), slice(0, 2)), (slice(5, 7), slice(0, 2), slice(3, 6))),
        ((slice(0, 8), slice(0, 8), slice(0, 8)), (slice(2, 3), slice(2, 3), slice(2, 3))),
        ((slice(4, 5), slice(4, 5), slice(4, 5)), (slice(0, 0), slice(0, 0), slice(0, 0))),
    ],
)
def test_union_equals_the_or_of_full_arrays(a_box: tuple[slice, ...], b_box: tuple[slice, ...]) -> None:
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[a_box] = True
    b[b_box] = True
    union = CroppedMask.from_full(a).union(CroppedMask.from_full(b))
    np.testing.assert_array_equal(union.full(), a | b)
    assert union.voxels == int((a | b).sum())
    np.testing.assert_array_equal(CroppedMask.from_full(a).union(None).full(), a)


def test_crop_affine_maps_crop_voxels_to_the_same_world_points() -> None:
    affine = np.array([[0, 0, -2.0, 10], [0, -1.5, 0, 20], [3.0, 0, 0, -5], [0, 0, 0, 1]])
    offset = (4, 7, 2)
    cropped = crop_affine(affine, offset)
    ijk = np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(cropped @ ijk, affine @ (ijk + np.array([*offset, 0])))
