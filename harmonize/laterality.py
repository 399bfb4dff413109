"""Left/right splitting of merged paired organs, in patient (world) coordinates.

Sources such as KiTS, AbdomenCT-1K, CT-ORG or WORD draw both kidneys (adrenal glands, lungs) with one
label value. The universal taxonomy needs them apart. The decision is made against the body midline in
RAS+ millimetres (x grows towards the patient's right, so the patient's *left* lies at smaller x), per
26-connected component, which makes it independent of the array's axis order and flips:

* a component that lies (mostly) on one side goes to that side whole (two kidneys, a single remaining
  kidney, every fragment of a broken organ: none is ever deleted);
* a component that crosses the midline substantially (horseshoe kidney, lungs touching at the anterior
  junction) is first eroded a little to see whether it falls apart into one core per side (a thin
  bridge); each voxel then goes to the side of its nearest core, except that a voxel lying more than
  :data:`BRIDGE_MARGIN_MM` beyond the midline follows the core on its own side (so the isthmus of a
  horseshoe kidney is cut where it crosses the midline, not given wholly to the nearer half). If it does
  not fall apart, each voxel goes to the side of the midline it lies on.

Every decision is returned as a :class:`SplitDecision` so it can be stored and reviewed.

Example:
    >>> import numpy as np
    >>> m = np.zeros((20, 4, 4), bool); m[2:5] = True; m[14:18] = True
    >>> left, right, decisions = split_left_right(m, np.eye(4), midline_x_mm=10.0, pair="kidney")
    >>> int(left.sum()), int(right.sum()), [d.side for d in decisions]
    (48, 64, ['right', 'left'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from harmonize.geometry import STRUCT26, bbox_slices, label_components
from harmonize.volume import Volume

#: A component is split per voxel when at least this fraction of it lies on the minority side.
CROSSING_FRACTION = 0.2
#: Erosion steps tried to separate a crossing component into one core per side.
MAX_EROSION = 3
#: A voxel of a bridge between two cores that lies farther than this beyond the midline (RAS+ x, mm)
#: follows the core on its own side, whichever core is nearer; nearer the midline the nearest core decides.
BRIDGE_MARGIN_MM = 5.0


@dataclass(frozen=True)
class SplitDecision:
    """How one connected component of a merged pair was assigned.

    Args:
        pair: pair name (``kidney``).
        component: 1-based component number, largest first.
        voxels: voxels in the component.
        centroid_mm: RAS+ centroid of the component, mm.
        side: ``left``, ``right`` or ``both`` (split inside the component).
        method: ``component`` (whole component to one side), ``cores`` (split by nearest eroded core) or
            ``midline`` (split per voxel at the midline).
        left_voxels / right_voxels: voxels given to each side.
        midline_x_mm: the midline used (RAS+ x, mm).
    """

    pair: str
    component: int
    voxels: int
    centroid_mm: tuple[float, float, float]
    side: str
    method: str
    left_voxels: int
    right_voxels: int
    midline_x_mm: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_midline_x(volume: Volume, *, body_threshold_hu: float = -500.0, stride: int = 4) -> float:
    """RAS+ x (mm) of the body midline of a CT: the median x of body voxels.

    The body is every voxel above ``body_threshold_hu``, read on a grid subsampled by ``stride`` (the
    median of a symmetric body does not need every voxel). Table and arms shift it little; a body that
    fills no voxel falls back to the centre of the field of view.

    Args:
        volume: CT in HU, any orientation.
        body_threshold_hu: HU above which a voxel counts as body.
        stride: subsampling step along each axis.
    """
    sub = volume.array[::stride, ::stride, ::stride]
    ijk = np.argwhere(sub > body_threshold_hu) * stride
    if len(ijk) == 0:
        return field_of_view_center_x(volume.affine, volume.shape)
    x = ijk @ volume.affine[0, :3] + volume.affine[0, 3]
    return float(np.median(x))


def field_of_view_center_x(affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """RAS+ x (mm) of the centre of the voxel grid."""
    center = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    return float(center @ np.asarray(affine)[0, :3] + np.asarray(affine)[0, 3])


def _world_x(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return ijk @ affine[0, :3] + affine[0, 3]


def split_left_right(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    midline_x_mm: float,
    pair: str,
) -> tuple[np.ndarray, np.ndarray, list[SplitDecision]]:
    """Split a merged left/right mask into the patient's left and right parts.

    Args:
        mask: (i, j, k) bool mask of the merged pair, on the grid of ``affine``.
        affine: (4, 4) voxel -> RAS+ mm.
        midline_x_mm: RAS+ x of the body midline (see :func:`estimate_midline_x`).
        pair: pair name, recorded in the decisions.

    Returns:
        ``(left, right, decisions)``: two bool masks of ``mask``'s shape whose union is ``mask`` and which
        do not overlap, and one :class:`SplitDecision` per connected component, largest first.
    """
    affine = np.asarray(affine, dtype=np.float64)
    left = np.zeros(mask.shape, dtype=bool)
    right = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return left, right, []
    # Work inside the mask's bounding box: components and erosion are the expensive part.
    box = bbox_slices(mask)
    assert box is not None  # callers pass non-empty masks
    crop = mask[box]
    origin = np.array([s.start for s in box], dtype=np.float64)
    labels, n = label_components(crop)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    left_crop = left[box]
    right_crop = right[box]
    decisions: list[SplitDecision] = []
    objects = ndimage.find_objects(labels)
    for rank, idx in enumerate(order, start=1):
        comp_label = int(idx) + 1
        sub = objects[idx]
        comp = labels[sub] == comp_label
        sub_origin = origin + np.array([s.start for s in sub])
        ijk = np.argwhere(comp) + sub_origin
        x = _world_x(ijk, affine)
        cx, cy, cz = (float(v) for v in ijk.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3])
        centroid = (cx, cy, cz)
        on_left = x < midline_x_mm
        n_left = int(on_left.sum())
        minority = min(n_left, len(x) - n_left) / len(x)
        if minority < CROSSING_FRACTION:
            side = "left" if n_left * 2 > len(x) else "right"
            target = left_crop if side == "left" else right_crop
            target[sub] |= comp
            decisions.append(
                SplitDecision(
                    pair,
                    rank,
                    len(x),
                    centroid,
                    side,
                    "component",
                    len(x) if side == "left" else 0,
                    len(x) if side == "right" else 0,
                    midline_x_mm,
                )
            )
            continue
        assign_left, method = _split_crossing(comp, sub_origin, affine, midline_x_mm)
        left_crop[sub] |= comp & assign_left
        right_crop[sub] |= comp & ~assign_left
        nl = int((comp & assign_left).sum())
        decisions.append(
            SplitDecision(pair, rank, len(x), centroid, "both", method, nl, len(x) - nl, midline_x_mm)
        )
    return left, right, decisions


def _split_crossing(
    comp: np.ndarray, origin: np.ndarray, affine: np.ndarray, midline_x_mm: float
) -> tuple[np.ndarray, str]:
    """Bool array (comp's shape): True where a voxel of a midline-crossing component goes left."""
    eroded = comp
    for _ in range(MAX_EROSION):
        eroded = ndimage.binary_erosion(eroded, structure=STRUCT26)
        if not eroded.any():
            break
        cores, n = label_components(eroded)
        if n < 2:
            continue
        sizes = np.bincount(cores.ravel(), minlength=n + 1)[1:]
        big = [i + 1 for i in np.argsort(-sizes)[:2]]
        if sizes[big[1] - 1] < 0.1 * sizes[big[0] - 1]:
            continue  # a nick, not a bridge between two halves
        core_side = {}
        for c in big:
            cx = _world_x(np.argwhere(cores == c) + origin, affine)
            core_side[c] = bool(np.median(cx) < midline_x_mm)
        if core_side[big[0]] == core_side[big[1]]:
            continue  # both halves on one side: not a left/right bridge
        seeds = np.zeros(comp.shape, dtype=np.int32)
        for c in big:
            seeds[cores == c] = c
        # Each voxel goes to its nearest core (distance in voxels, anisotropy is small at this scale).
        _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        owner = seeds[tuple(nearest)]
        left_label = next(c for c in big if core_side[c])
        goes_left = owner == left_label
        # The part of a bridge (horseshoe isthmus) that lies well across the midline belongs to the side
        # it lies on, not wholly to the nearer core.
        x = _grid_x(comp.shape, origin, affine)
        goes_left[x < midline_x_mm - BRIDGE_MARGIN_MM] = True
        goes_left[x > midline_x_mm + BRIDGE_MARGIN_MM] = False
        return goes_left, "cores"
    return _grid_x(comp.shape, origin, affine) < midline_x_mm, "midline"


def _grid_x(shape: tuple[int, ...], origin: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS+ x (mm) of every voxel of a box of ``shape`` whose first voxel is ``origin`` (array of shape)."""
    ijk = np.argwhere(np.ones(shape, dtype=bool)) + origin
    return _world_x(ijk, affine).reshape(shape)
