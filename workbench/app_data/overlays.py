"""What the viewer draws over a CT slice and where it opens: class colours and the uncertainty heat map
(colours, legend, blending) composed into one slice image, the slice a queue item opens on (the most
uncertain slice of its run's entropy map), and why a map cannot be shown.

Example:
    >>> rgb = slice_image(dv, "axial", 30, *WL_PRESETS["abdomen"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image
from scipy import ndimage

from harmonize.geometry import bbox
from harmonize.taxonomy import class_color
from storage.maps import uncertainty_map_path
from storage.workspace import Workspace
from workbench.app_data.viewer import (
    MIN_DISPLAY_PX,
    VIEW_AXIS,
    DisplayVolume,
    apply_window,
    pixel_mm,
    view_plane,
)


def slice_image(
    dv: DisplayVolume,
    view: str,
    index: int,
    width: float,
    level: float,
    overlays: Mapping[str, np.ndarray] | None = None,
    opacity: float = 0.4,
    entropy: np.ndarray | None = None,
    entropy_opacity: float = 0.5,
) -> np.ndarray:
    """One slice as an RGB image, windowed, with coloured class overlays and an optional uncertainty heat
    overlay on top, scaled to physical aspect.

    Args:
        dv: the display volume.
        view: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the view's axis (0 .. ``dv.n_slices(view) - 1``).
        width / level: window in HU.
        overlays: class name -> (x, y, z) bool mask in display order (``dv.mask``).
        opacity: overlay alpha in [0, 1].
        entropy: (x, y, z) entropy map in bits in display order
            (:func:`~workbench.app_data.viewer.display_entropy`), or None.
        entropy_opacity: alpha of the heat colours in [0, 1] (:func:`uncertainty_overlay`).

    Returns:
        (rows, cols, 3) uint8; rows/cols as in :mod:`workbench.app_data.viewer`, at least
        :data:`MIN_DISPLAY_PX` on the shorter side.
    """
    index = int(np.clip(index, 0, dv.n_slices(view) - 1))
    grey = apply_window(view_plane(dv.array, view, index), width, level)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    alpha = float(np.clip(opacity, 0.0, 1.0))
    for name, m in (overlays or {}).items():
        plane = view_plane(m, view, index)
        if plane.any():
            rgb[plane] = (1 - alpha) * rgb[plane] + alpha * np.asarray(class_color(name), np.float32)
    if entropy is not None:
        rgb = uncertainty_overlay(rgb, view_plane(entropy, view, index), entropy_opacity)
    out = rgb.astype(np.uint8)
    row_mm, col_mm = pixel_mm(dv, view)
    h_mm, w_mm = out.shape[0] * row_mm, out.shape[1] * col_mm
    scale = max(MIN_DISPLAY_PX / min(h_mm, w_mm), 1.0 / max(row_mm, col_mm))
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    if size != (out.shape[1], out.shape[0]):
        out = np.asarray(Image.fromarray(out).resize(size, Image.Resampling.NEAREST))
    return out


#: Entropy (bits) below which a voxel is left uncoloured: the model is confident there (p < 1.3 % or
#: p > 98.7 %), and colouring it would only hide the CT.
ENTROPY_FLOOR = 0.1
#: The heat colour map of the uncertainty overlay: entropy in bits -> RGB (0-255), linear in between.
#: Dark red at the floor, through orange and yellow, to near-white at 1 bit (p = 0.5). It is a ramp in
#: brightness, unlike the fixed-brightness class colours, so the two overlays do not read alike.
HEAT_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (ENTROPY_FLOOR, (110, 0, 0)),
    (0.4, (220, 40, 0)),
    (0.7, (255, 160, 0)),
    (1.0, (255, 255, 210)),
)
#: What the colours mean, for the viewer's legend.
HEAT_LEGEND = (
    f"Uncertainty: voxel-wise binary entropy of the model's probability (maximum over the predicted "
    f"classes). Dark red = {ENTROPY_FLOOR:g} bit, orange, yellow, near-white = 1 bit (probability 0.5: "
    f"the model cannot decide). Below {ENTROPY_FLOOR:g} bit the CT is left uncoloured."
)


def entropy_colors(entropy: np.ndarray) -> np.ndarray:
    """Heat colours of entropy values: ``(...,)`` bits -> ``(..., 3)`` float32 RGB 0-255 (:data:`HEAT_STOPS`;
    values outside [floor, 1] get the end colours)."""
    h = np.asarray(entropy, dtype=np.float32)
    xs = [x for x, _ in HEAT_STOPS]
    return np.stack(
        [np.interp(h, xs, [c[ch] for _, c in HEAT_STOPS]).astype(np.float32) for ch in range(3)], axis=-1
    )


def entropy_legend(width: int = 240, height: int = 12) -> np.ndarray:
    """A (height, width, 3) uint8 colour bar of :data:`HEAT_STOPS`, floor on the left, 1 bit on the right."""
    row = entropy_colors(np.linspace(ENTROPY_FLOOR, 1.0, width))
    return np.repeat(row[None], height, axis=0).astype(np.uint8)


def uncertainty_overlay(rgb: np.ndarray, entropy_plane: np.ndarray, opacity: float) -> np.ndarray:
    """Blend the heat colours of one entropy plane over an RGB plane of the same size.

    Args:
        rgb: (rows, cols, 3) RGB 0-255 (uint8 or float), the windowed slice before display scaling.
        entropy_plane: (rows, cols) entropy in bits, same plane (``view_plane`` of the display map).
        opacity: alpha of the heat colours in [0, 1].

    Returns:
        (rows, cols, 3) float32: ``rgb`` where entropy < :data:`ENTROPY_FLOOR`, else
        ``(1 - opacity) * rgb + opacity * entropy_colors(entropy)``.
    """
    out = np.asarray(rgb, dtype=np.float32).copy()
    h = np.asarray(entropy_plane, dtype=np.float32)
    hot = h >= ENTROPY_FLOOR
    if hot.any():
        alpha = float(np.clip(opacity, 0.0, 1.0))
        out[hot] = (1 - alpha) * out[hot] + alpha * entropy_colors(h[hot])
    return out


def _near(region: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """``region`` plus a one-voxel border (where a mask's entropy peaks: its edge), cropped to its
    bounding box + 1; returns (crop mask, crop slices), or None for an empty region."""
    found = bbox(region)
    if found is None:
        return None
    (i0, i1), (j0, j1), (k0, k1) = found
    ni, nj, nk = region.shape
    box = (
        slice(max(i0 - 1, 0), min(i1 + 1, ni)),
        slice(max(j0 - 1, 0), min(j1 + 1, nj)),
        slice(max(k0 - 1, 0), min(k1 + 1, nk)),
    )
    return ndimage.binary_dilation(region[box]), box


def most_uncertain_slice(entropy: np.ndarray, view: str, region: np.ndarray | None = None) -> int | None:
    """The ``view`` slice with the largest SUM of entropy (not the maximum: every predicted edge holds
    voxels near 1 bit, so the maximum ties on most slices; the sum finds where the model is unsure over
    the largest area).

    Args:
        entropy: (x, y, z) entropy in bits, display order.
        view: ``axial``, ``coronal`` or ``sagittal``.
        region: (x, y, z) bool display mask of a class, or None. When it has voxels, only the region plus
            a one-voxel border counts (the class's own uncertainty); otherwise the whole map.

    Returns:
        The slice index along the view's axis (the first of equal sums), or None when nothing counted
        is above zero.
    """
    axis = VIEW_AXIS[view]
    others = tuple(a for a in range(3) if a != axis)
    near = _near(np.asarray(region, bool)) if region is not None else None
    if near is None:
        sums = np.asarray(entropy, np.float64).sum(axis=others)
    else:
        crop, box = near
        sums = np.zeros(entropy.shape[axis], np.float64)
        part = np.where(crop, np.asarray(entropy[box], np.float64), 0.0).sum(axis=others)
        sums[box[axis]] = part
    return None if sums.max(initial=0.0) <= 0 else int(np.argmax(sums))


def uncertainty_unavailable(ws: Workspace, run_id: str | None, scan_id: str) -> str | None:
    """Why the viewer cannot show an uncertainty map for ``scan_id`` (a sentence), or None when
    ``<ws>/uncertainty/<run_id>/<scan>.npz`` exists.

    Args:
        ws: the workspace.
        run_id: the pseudo-labelling run of the item or of the shown label set; None for original or
            revised labels.
        scan_id: catalog scan id.
    """
    if not run_id:
        return "no uncertainty map: these labels do not come from a pseudo-labelling run"
    if not uncertainty_map_path(ws, run_id, scan_id).is_file():
        return f"no uncertainty map: run {run_id} wrote none for this scan"
    return None


def uncertainty_slice_hint(
    entropy: np.ndarray | None, view: str, region: np.ndarray | None = None
) -> int | None:
    """The slice a queue item opens on: the most uncertain slice of its run's entropy map.

    The uncertainty signals hold no voxel position (see ``workbench.pseudolabel.uncertainty.SIGNAL_KEYS``:
    scalar statistics only), so the map itself gives the hint.

    Args:
        entropy: (x, y, z) entropy map in display order
            (:func:`~workbench.app_data.viewer.display_entropy`), or None without a map.
        view: ``axial``, ``coronal`` or ``sagittal``.
        region: (x, y, z) bool display mask of the item's class, or None; see :func:`most_uncertain_slice`.

    Returns:
        The slice index along the view's axis, or None without a map or with an all-zero map.
    """
    if entropy is None:
        return None
    return most_uncertain_slice(entropy, view, region)
