"""Voxel geometry shared by every stage: bounding boxes, 26-connected components, grids and resampling.

One home for rules that must agree everywhere: the tight bounding box, what "connected" means (26
neighbours, the convention of TotalSegmentator's and the Universal Model's post-processing), when two
grids are the same (:data:`GRID_TOLERANCE_MM`), and how a mask or a probability map moves onto another
grid. Arrays are (i, j, k) in file voxel order; affines map voxel -> RAS+ mm.

Example:
    >>> import numpy as np
    >>> m = np.zeros((6, 6, 6), bool); m[1:3, 1:3, 1:3] = True; m[5, 5, 5] = True
    >>> bbox(m)
    ((1, 6), (1, 6), (1, 6))
    >>> label_components(m)[1]
    2
    >>> int(largest_component(m)[0].sum())
    8
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from harmonize.masks import CroppedMask

#: 26-connectivity: a voxel touches every voxel that shares a face, an edge or a corner with it.
STRUCT26 = np.ones((3, 3, 3), dtype=bool)

#: Two grids whose affines differ by at most this (mm, per affine entry) and whose shapes match are one
#: grid. Loose enough for float32 affines written by other tools, tight enough to tell 0.01 mm shifts.
GRID_TOLERANCE_MM = 1e-2

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


# ----------------------------------------------------------------------------------- bounding boxes


def bbox(mask: np.ndarray) -> BBox | None:
    """Half-open ``((i0, i1), (j0, j1), (k0, k1))`` of the True voxels of a 3D mask, ``None`` when empty.

    Fast on large masks: one reduction over whole i-slabs, then an OR of the occupied slabs as 64-bit
    words (8 voxels per operation) gives the (j, k) footprint.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        mask = mask != 0
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        # The reductions below are fast on C order (whole contiguous slabs); a transpose makes F order C.
        box = bbox(mask.T)
        return None if box is None else (box[2], box[1], box[0])
    i = np.flatnonzero(mask.any(axis=(1, 2)))
    if i.size == 0:
        return None
    i0, i1 = int(i[0]), int(i[-1]) + 1
    slabs = mask[i0:i1]
    if slabs.flags.c_contiguous and (slabs.shape[1] * slabs.shape[2]) % 8 == 0:
        words = slabs.view(np.uint8).reshape(i1 - i0, -1).view(np.uint64)
        jk = np.bitwise_or.reduce(words, axis=0).view(np.uint8).reshape(slabs.shape[1:]) != 0
    else:
        jk = slabs.any(axis=0)
    j = np.flatnonzero(jk.any(axis=1))
    k = np.flatnonzero(jk.any(axis=0))
    return (i0, i1), (int(j[0]), int(j[-1]) + 1), (int(k[0]), int(k[-1]) + 1)


def bbox_slices(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """:func:`bbox` as a tuple of slices (``mask[bbox_slices(mask)]`` is the tight crop), or ``None``."""
    box = bbox(mask)
    if box is None:
        return None
    return tuple(slice(a, b) for a, b in box)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- components


#: Arrays with fewer voxels than this are labelled by scipy (see :func:`label_components`).
SMALL_FOR_CC3D = 4096


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a bool array.

    Returns:
        ``(labels, n)``: an integer array of ``mask``'s shape (0 = background, 1..n = components) and
        the number of components. Uses connected-components-3d when installed, for arrays of
        :data:`SMALL_FOR_CC3D` voxels or more (several times faster on large masks), else scipy; the
        numbering of components may differ between the two.
    """
    data = np.asarray(mask, dtype=bool)
    # cc3d 4.1 sizes its union-find too small for some arrays of a few voxels ([1, 0, 1] shaped (3, 1, 1)
    # raises "maximum length exception"); scipy is as fast at such sizes.
    if data.size >= SMALL_FOR_CC3D:
        try:
            import cc3d
        except ImportError:
            pass
        else:
            labels, n = cc3d.connected_components(data, connectivity=26, return_N=True)
            return labels, int(n)
    labels, n = ndimage.label(data, structure=STRUCT26)
    return labels, int(n)


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Keep only the largest 26-connected component of a bool array.

    Returns:
        ``(kept, n_before, voxels_removed)``: a bool array of ``mask``'s shape, the number of components
        before, and how many voxels the other components held. Ties go to the first component in scan
        order.
    """
    data = np.asarray(mask, dtype=bool)
    labels, n = label_components(data)
    if n <= 1:
        return data.copy(), n, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = labels == int(np.argmax(sizes))
    return keep, n, int(sizes.sum() - sizes.max())


# ----------------------------------------------------------------------------------------------- grids


def same_grid(
    a: np.ndarray,
    b: np.ndarray,
    shape_a: Sequence[int],
    shape_b: Sequence[int],
    atol_mm: float = GRID_TOLERANCE_MM,
) -> bool:
    """Whether two ``(affine, shape)`` pairs describe the same voxel grid, within ``atol_mm``."""
    return tuple(int(s) for s in shape_a) == tuple(int(s) for s in shape_b) and bool(
        np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol_mm)
    )


def grid_difference_mm(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference between two affines (mm), for error messages."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ------------------------------------------------------------------------------------------ resampling


def affine_resample(
    src: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    output_shape: Sequence[int],
    *,
    order: int,
    mode: str = "constant",
    cval: float = 0.0,
) -> np.ndarray:
    """``scipy.ndimage.affine_transform`` (output voxel ``o`` reads ``src`` at ``matrix @ o + offset``),
    fast for axis-aligned grids.

    Two grids that differ by axis order, flips and spacing (an LPS or IPL scan and the RAS inference grid)
    give a ``matrix`` with one non-zero per row and column. scipy then takes its slow general path; here the
    source is transposed and flipped to line up with the output first, so the separable zoom-and-shift
    path does the work (tens of times faster on a 512 x 512 grid). Other matrices go the general way.
    """
    m = np.asarray(matrix, dtype=np.float64)
    big = np.abs(m) > 1e-9 * max(1.0, float(np.abs(m).max()))
    shape = tuple(int(v) for v in output_shape)
    if not (big.sum(axis=0) == 1).all() or not (big.sum(axis=1) == 1).all():
        return ndimage.affine_transform(
            src, m, offset=offset, output_shape=shape, order=order, mode=mode, cval=cval
        )
    # Row r of the matrix is source axis r; its non-zero column c is the output axis it follows.
    perm = [int(np.flatnonzero(big[:, c])[0]) for c in range(3)]  # output axis c follows source perm[c]
    scale = np.array([m[perm[c], c] for c in range(3)])
    shift = np.asarray(offset, dtype=np.float64)[perm].copy()  # offset is in source axes
    aligned = np.transpose(src, perm)
    for i in range(3):
        if scale[i] < 0:
            # x' = (n - 1) - x on the flipped axis.
            aligned = np.flip(aligned, axis=i)
            shift[i] = aligned.shape[i] - 1 - shift[i]
            scale[i] = -scale[i]
    if order == 1 and mode in ("constant", "nearest"):
        return _separable_linear(aligned, scale, shift, shape, mode, cval)
    return ndimage.affine_transform(
        np.ascontiguousarray(aligned),
        scale,
        offset=shift,
        output_shape=shape,
        order=order,
        mode=mode,
        cval=cval,
    )


def _separable_linear(
    src: np.ndarray, scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...], mode: str, cval: float
) -> np.ndarray:
    """Linear interpolation at ``scale * o + shift`` per axis, one axis at a time (float32).

    scipy's ``order=1`` with ``mode='constant'`` (a sample beyond ``[0, n - 1]`` on any axis is ``cval``)
    or ``mode='nearest'`` (coordinates clipped to the edge), several times faster than its spline code on
    large outputs: each pass is two gathers and a blend along one axis.
    """
    out = np.asarray(src, dtype=np.float32)
    for axis in range(3):
        n = out.shape[axis]
        x = scale[axis] * np.arange(shape[axis], dtype=np.float64) + shift[axis]
        outside = (x < 0) | (x > n - 1)
        x = np.clip(x, 0, n - 1)
        i0 = np.minimum(np.floor(x).astype(np.intp), max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        view = [1, 1, 1]
        view[axis] = -1
        w = (x - i0).astype(np.float32).reshape(view)
        a = np.take(out, i0, axis=axis)
        out = a + (np.take(out, i1, axis=axis) - a) * w
        if mode == "constant" and outside.any():
            idx: list[Any] = [slice(None)] * 3
            idx[axis] = outside
            out[tuple(idx)] = cval
    return out


def _destination_box(
    lo: np.ndarray, hi: np.ndarray, to_dst: np.ndarray, dst_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The destination voxel box ``[d0, d1)`` that the source box ``[lo, hi]`` (voxel coordinates) maps
    into under ``to_dst`` (4 x 4, source voxel -> destination voxel), clipped to ``dst_shape``; ``None``
    when it misses the destination grid."""
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    d = corners @ to_dst[:3, :3].T + to_dst[:3, 3]
    shape = np.asarray([int(s) for s in dst_shape])
    d0 = np.clip(np.floor(d.min(axis=0)).astype(int), 0, shape)
    d1 = np.clip(np.ceil(d.max(axis=0)).astype(int) + 1, 0, shape)
    if (d1 <= d0).any():
        return None
    return d0, d1


def mask_to_grid(
    mask: CroppedMask, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto another grid (both affines voxel -> RAS+ mm).

    Only the destination voxels inside the mask's box (mapped over) are computed.

    Returns:
        bool array of ``dst_shape``.
    """
    out = np.zeros(tuple(int(s) for s in dst_shape), dtype=bool)
    if mask.is_empty:
        return out
    to_dst = np.linalg.inv(np.asarray(dst_affine)) @ np.asarray(src_affine)
    lo = np.asarray(mask.offset, dtype=np.float64) - 0.5
    box = _destination_box(lo, lo + np.asarray(mask.data.shape), to_dst, out.shape)
    if box is None:
        return out
    d0, d1 = box
    to_src = np.linalg.inv(to_dst)
    offset = to_src[:3, :3] @ d0 + to_src[:3, 3] - np.asarray(mask.offset)
    crop = affine_resample(mask.data.view(np.uint8), to_src[:3, :3], offset, tuple(d1 - d0), order=0)
    out[tuple(slice(a, b) for a, b in zip(d0, d1))] = crop.astype(bool)
    return out


def threshold_to_grid(
    prob: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    threshold: float = 0.5,
) -> CroppedMask:
    """Threshold a probability map after trilinear resampling onto another grid.

    Only the destination box that can exceed ``threshold`` is computed: a trilinear value is a convex
    combination of 8 source voxels, so it lies within one source voxel of a voxel >= ``threshold``.

    Args:
        prob: (X, Y, Z) probabilities on the source grid (float16/32).
        src_affine / dst_affine: (4, 4) voxel -> RAS+ mm of the two grids.
        dst_shape: destination (i, j, k) shape.
        threshold: a destination voxel is True where the resampled value is >= this.

    Returns:
        The bool mask on the destination grid as a :class:`CroppedMask`.
    """
    from harmonize.masks import CroppedMask  # masks imports this module for its bounding box

    hot = np.asarray(prob) >= threshold
    box_src = bbox(hot)
    if box_src is None:
        return CroppedMask.empty(dst_shape)
    lo = np.array([a - 1 for a, _ in box_src], dtype=np.float64)
    hi = np.array([b for _, b in box_src], dtype=np.float64)  # last hot voxel + 1
    to_dst = np.linalg.inv(np.asarray(dst_affine)) @ np.asarray(src_affine)
    box = _destination_box(lo, hi, to_dst, dst_shape)
    if box is None:
        return CroppedMask.empty(dst_shape)
    d0, d1 = box
    to_src = np.linalg.inv(to_dst)
    sl = tuple(slice(int(max(a - 1, 0)), int(b + 2)) for a, b in zip(lo, hi))
    src_lo = np.array([s.start for s in sl], dtype=np.float64)
    sub = np.asarray(prob[sl], dtype=np.float32)
    offset = to_src[:3, :3] @ d0 + to_src[:3, 3] - src_lo
    vals = affine_resample(sub, to_src[:3, :3], offset, tuple(int(v) for v in d1 - d0), order=1)
    return CroppedMask.from_full(vals >= threshold, tuple(int(v) for v in d0), dst_shape)  # type: ignore[arg-type]
