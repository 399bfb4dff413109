"""Per-class statistics of a binary mask: size, components, extent, position and intensity.

Example:
    >>> import numpy as np
    >>> m = np.zeros((10, 10, 10), bool); m[2:4, 2:4, 2:4] = True; m[7, 7, 7] = True
    >>> s = class_stats("liver", m, np.eye(4))
    >>> s.voxels, s.components, s.bbox, s.volume_ml
    (9, 2, (2, 2, 2, 7, 7, 7), 0.009)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harmonize.geometry import bbox_slices, label_components


@dataclass(frozen=True)
class ClassStats:
    """Statistics of one class in one label set.

    Args:
        name: universal class name.
        voxels: voxel count.
        volume_ml: volume in millilitres.
        components: number of 26-connected components.
        bbox: inclusive voxel bounding box ``(i0, j0, k0, i1, j1, k1)``; all -1 when empty.
        centroid_mm: RAS+ centroid in mm; NaN when empty.
        hu_mean / hu_std: CT intensity inside the mask (HU); NaN without an image or when empty.
    """

    name: str
    voxels: int
    volume_ml: float
    components: int
    bbox: tuple[int, int, int, int, int, int]
    centroid_mm: tuple[float, float, float]
    hu_mean: float
    hu_std: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_stats(
    name: str,
    mask: np.ndarray,
    affine: np.ndarray,
    image: np.ndarray | None = None,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> ClassStats:
    """Statistics of ``mask``.

    Args:
        name: class name recorded in the result.
        mask: (i, j, k) bool mask, or a crop of the full mask placed at ``offset``.
        affine: (4, 4) voxel -> RAS+ mm of the full volume.
        image: CT in HU on the same grid (and crop) as ``mask``, or ``None``.
        offset: (i, j, k) of ``mask[0, 0, 0]`` in the full volume; bbox and centroid are reported in
            full-volume terms.
    """
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    box = bbox_slices(mask) if mask.size else None
    if box is None:
        nan = float("nan")
        return ClassStats(name, 0, 0.0, 0, (-1,) * 6, (nan, nan, nan), nan, nan)  # type: ignore[arg-type]
    crop = mask[box]
    _, n_components = label_components(crop)
    voxels = int(np.count_nonzero(crop))
    origin = np.array([s.start for s in box], dtype=np.float64) + np.asarray(offset, dtype=np.float64)
    # The mean index per axis from the per-slice counts (exact integer sums, so the same float as the
    # mean of np.nonzero's indices, without three index arrays of every voxel).
    jk = crop.sum(axis=0, dtype=np.int64)
    per_axis = (crop.sum(axis=(1, 2), dtype=np.int64), jk.sum(axis=1), jk.sum(axis=0))
    mean_ijk = np.array([int(np.arange(len(c)) @ c) / voxels for c in per_axis]) + origin
    centroid = mean_ijk @ affine[:3, :3].T + affine[:3, 3]
    hu_mean = hu_std = float("nan")
    if image is not None:
        # a bool index gathers the voxels in the same (C) order as np.nonzero's indices, 10x faster
        values = image[box][crop].astype(np.float64)
        hu_mean, hu_std = float(values.mean()), float(values.std())
    bbox = tuple(int(o) + s.start for o, s in zip(offset, box)) + tuple(
        int(o) + s.stop - 1 for o, s in zip(offset, box)
    )
    return ClassStats(
        name,
        voxels,
        round(voxels * voxel_ml, 6),
        int(n_components),
        bbox,  # type: ignore[arg-type]
        tuple(float(c) for c in centroid),  # type: ignore[arg-type]
        hu_mean,
        hu_std,
    )
