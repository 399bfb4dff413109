"""The shared voxel geometry: bounding boxes, components, grids, resampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from harmonize import geometry
from harmonize.masks import CroppedMask


def _expected_bbox(m: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    nz = np.nonzero(m)
    if nz[0].size == 0:
        return None
    return tuple((int(a.min()), int(a.max()) + 1) for a in nz)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(1, 8, 1), (6, 8, 16), (7, 3, 5), (2, 1, 8)])
def test_bbox_of_contiguous_layouts(shape: tuple[int, int, int], order: str) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        m = np.zeros(shape, bool, order=order)  # type: ignore[call-overload]
        m[tuple(int(rng.integers(0, s)) for s in shape)] = True
        m[tuple(int(rng.integers(0, s)) for s in shape)] = True
        assert geometry.bbox(m) == _expected_bbox(m)
        box = geometry.bbox_slices(m)
        assert box is not None and int(m[box].sum()) == int(m.sum())
    assert geometry.bbox(np.zeros(shape, bool, order=order)) is None  # type: ignore[call-overload]
    assert geometry.bbox_slices(np.zeros(shape, bool)) is None


def test_bbox_of_a_non_bool_mask() -> None:
    m = np.zeros((4, 5, 6), np.uint8)
    m[1, 2, 3] = 7
    assert geometry.bbox(m) == ((1, 2), (2, 3), (3, 4))


@pytest.mark.parametrize(
    ("offsets", "n"),
    [
        ([(0, 0, 0), (1, 1, 1)], 1),  # corner neighbours are connected (26-connectivity)
        ([(0, 0, 0), (2, 2, 2)], 2),
        ([(0, 0, 0), (0, 1, 0), (4, 4, 4)], 2),
        ([], 0),
    ],
)
def test_label_components_is_26_connected(offsets: list[tuple[int, int, int]], n: int) -> None:
    m = np.zeros((5, 5, 5), bool)
    for o in offsets:
        m[o] = True
    labels, count = geometry.label_components(m)
    assert count == n
    assert labels.shape == m.shape and set(np.unique(labels[m])) == set(range(1, n + 1))
    # scipy with the full 3x3x3 structure agrees on the partition.
    ref, ref_n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    assert ref_n == n and len(set(zip(ref[m].tolist(), labels[m].tolist()))) == n


@pytest.mark.parametrize("shape", [(3, 1, 1), (1, 3, 1), (1, 1, 3)])
def test_label_components_of_a_three_voxel_line_with_a_gap(shape: tuple[int, int, int]) -> None:
    """A pseudo-label cropped to two voxels with a gap (cc3d 4.1 raised on it, ending a demo round)."""
    m = np.array([True, False, True]).reshape(shape)
    labels, count = geometry.label_components(m)
    assert count == 2 and labels.ravel().tolist() == [1, 0, 2]


@pytest.mark.parametrize("seed", range(3))
def test_label_components_agrees_with_scipy_above_the_small_size(seed: int) -> None:
    m = np.random.default_rng(seed).random((20, 18, 16)) < 0.2  # 5,760 voxels: the cc3d path
    assert m.size >= geometry.SMALL_FOR_CC3D
    labels, count = geometry.label_components(m)
    ref, ref_n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    assert count == ref_n and len(set(zip(ref[m].tolist(), labels[m].tolist()))) == ref_n


def test_largest_component_keeps_the_biggest_and_counts_the_rest() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[0:3, 0:3, 0:3] = True  # 27 voxels
    m[6:8, 6:8, 6:8] = True  # 8 voxels
    m[9, 0, 9] = True
    kept, n, removed = geometry.largest_component(m)
    assert (n, removed, int(kept.sum())) == (3, 9, 27)
    assert kept[0:3, 0:3, 0:3].all()
    single, n1, removed1 = geometry.largest_component(kept)
    assert (n1, removed1) == (1, 0) and np.array_equal(single, kept)


@pytest.mark.parametrize(
    ("shift_mm", "same"), [(0.0, True), (0.5 * geometry.GRID_TOLERANCE_MM, True), (0.1, False)]
)
def test_same_grid_tolerance(shift_mm: float, same: bool) -> None:
    a = np.diag([1.5, 1.5, 3.0, 1.0])
    b = a.copy()
    b[0, 3] += shift_mm
    assert geometry.same_grid(a, b, (4, 4, 4), (4, 4, 4)) is same
    assert not geometry.same_grid(a, a, (4, 4, 4), (4, 4, 5))
    assert geometry.grid_difference_mm(a, b) == pytest.approx(shift_mm)


def test_mask_to_grid_onto_a_flipped_coarser_grid() -> None:
    # Source: 1 mm RAS grid; destination: 2 mm grid with the first axis flipped (L instead of R).
    src_affine = np.eye(4)
    dst_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    dst_affine[0, 3] = 14.0
    full = np.zeros((16, 16, 16), bool)
    full[4:8, 4:8, 4:8] = True
    out = geometry.mask_to_grid(CroppedMask.from_full(full), src_affine, dst_affine, (8, 8, 8))
    # Destination voxel (i, j, k) sits at world x = 14 - 2 i, y = 2 j, z = 2 k.
    expected = np.zeros((8, 8, 8), bool)
    for i, j, k in np.ndindex(8, 8, 8):
        x, y, z = 14 - 2 * i, 2 * j, 2 * k
        expected[i, j, k] = 4 <= x < 8 and 4 <= y < 8 and 4 <= z < 8
    np.testing.assert_array_equal(out, expected)


def test_threshold_to_grid_matches_a_full_trilinear_resample() -> None:
    rng = np.random.default_rng(0)
    prob = np.zeros((12, 12, 12), np.float32)
    prob[3:9, 4:8, 2:10] = rng.random((6, 4, 8)).astype(np.float32)
    src_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dst_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    dst_shape = (24, 24, 24)
    got = geometry.threshold_to_grid(prob, src_affine, dst_affine, dst_shape, threshold=0.5).full()
    to_src = np.linalg.inv(src_affine) @ dst_affine
    ref = ndimage.affine_transform(prob, to_src[:3, :3], to_src[:3, 3], dst_shape, order=1) >= 0.5
    np.testing.assert_array_equal(got, ref)
    assert geometry.threshold_to_grid(np.zeros((4, 4, 4)), src_affine, dst_affine, dst_shape).is_empty


# ---------------------------------------------- resampling cases from the pseudo-label wing's tests


def test_threshold_to_grid_computes_only_the_hot_box_and_matches_a_full_resampling() -> None:
    rng = np.random.default_rng(0)
    prob = np.zeros((20, 18, 16), np.float32)
    prob[5:12, 4:9, 6:10] = rng.uniform(0.3, 1.0, (7, 5, 4))
    src = np.diag([3.0, 3.0, 3.0, 1.0])
    src[:3, 3] = (-10.0, 4.0, 7.0)
    dst = np.array([[-1.0, 0, 0, 50.0], [0, 0, -1.2, 60.0], [0, 1.5, 0, 2.0], [0, 0, 0, 1]])
    shape = (70, 40, 45)
    got = geometry.threshold_to_grid(prob, src, dst, shape).full()
    m = np.linalg.inv(src) @ dst
    full = ndimage.affine_transform(prob, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1) >= 0.5
    assert full.sum() > 100
    np.testing.assert_array_equal(got, full)


def test_mask_to_grid_maps_a_mask_through_two_affines() -> None:
    src = np.diag([-1.0, 1.0, 1.0, 1.0])
    src[0, 3] = 19.0  # i -> x = 19 - i (LAS-like)
    dst = np.diag([2.0, 2.0, 2.0, 1.0])
    m = np.zeros((20, 20, 20), bool)
    m[0:4] = True  # x = 16..19 mm
    got = geometry.mask_to_grid(CroppedMask.from_full(m), src, dst, (10, 10, 10))
    expected = np.zeros((10, 10, 10), bool)
    expected[8:10] = True  # x = 16, 18 mm
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)])
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)])
@pytest.mark.parametrize("order", [0, 1])
def test_affine_resample_fast_path_equals_scipy(
    perm: tuple[int, int, int], signs: tuple[int, int, int], order: int
) -> None:
    rng = np.random.default_rng(sum(perm) + order)
    src = rng.random((9, 11, 13)).astype(np.float32)
    m = np.zeros((3, 3))
    for i, (p, s) in enumerate(zip(perm, signs)):
        m[i, p] = s * (0.47 + 0.21 * i)
    offset = np.array([4.1, 5.3, 6.2])  # no exact .5: order 0 breaks ties either way
    shape = (14, 12, 10)
    want = ndimage.affine_transform(src, m, offset=offset, output_shape=shape, order=order)
    got = geometry.affine_resample(src, m, offset, shape, order=order)
    np.testing.assert_allclose(got, want, atol=1e-5)
