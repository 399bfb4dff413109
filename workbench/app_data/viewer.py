"""The case viewer's geometry: CT volumes (and their masks and uncertainty maps) in display orientation,
window/level, slice planes, edge labels and the mapping between display and file voxels.

Slices are shown in patient orientation, radiological convention: a volume is first reoriented (a
permutation and flips of its axes, no resampling) to RAS order ``[x, y, z]`` (x towards the patient's
Right, y Anterior, z Superior), then

* axial (viewed from the feet): rows anterior -> posterior, columns patient Right -> Left;
* coronal (viewed from the front): rows superior -> inferior, columns patient Right -> Left;
* sagittal (viewed from the patient's left): rows superior -> inferior, columns anterior -> posterior.

So the patient's right side is on the image's left, as radiologists read CT; :func:`view_labels` names the
four edges. Slice images (:func:`workbench.app_data.overlays.slice_image`) scale pixels to the physical
spacing, so voxels with 0.8 x 0.8 x 5 mm look right.

Example:
    >>> dv = to_display(volume)  # doctest: +SKIP
    >>> view_plane(dv.array, "axial", 30).shape  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from harmonize.volume import Volume

#: Window presets: name -> (width, level) in HU.
WL_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
VIEWS = ("axial", "coronal", "sagittal")
#: Display axis (in RAS order) that each view slices through.
VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Smallest side of a displayed slice image in pixels (small phantoms are enlarged).
MIN_DISPLAY_PX = 320


@dataclass(frozen=True)
class DisplayVolume:
    """A CT reoriented to RAS array order for display.

    Args:
        array: (x, y, z) HU values (a view or copy of the file's voxels, permuted and flipped).
        spacing: (x, y, z) voxel size in mm.
        ornt: nibabel orientation (3, 2) that maps the file's axes onto this array.
        file_shape: (i, j, k) shape in the file's own voxel order.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    ornt: np.ndarray
    file_shape: tuple[int, int, int]

    def mask(self, file_mask: np.ndarray) -> np.ndarray:
        """A (i, j, k) mask in file voxel order, reoriented like the CT."""
        return np.asarray(nib.orientations.apply_orientation(file_mask, self.ornt))

    def to_file_index(self, xyz: Sequence[int]) -> tuple[int, int, int]:
        """The (i, j, k) file voxel of display voxel ``xyz``."""
        out = [0, 0, 0]
        for a, (target, flip) in enumerate(self.ornt):
            v = int(xyz[int(target)])
            out[a] = self.file_shape[a] - 1 - v if flip < 0 else v
        return out[0], out[1], out[2]

    def n_slices(self, view: str) -> int:
        return int(self.array.shape[VIEW_AXIS[view]])


def to_display(volume: Volume) -> DisplayVolume:
    """Reorient ``volume`` to RAS array order (no resampling); see the module docstring."""
    ornt = nib.orientations.io_orientation(volume.affine)
    arr = np.asarray(nib.orientations.apply_orientation(volume.array, ornt))
    spacing = [0.0, 0.0, 0.0]
    for a, (target, _) in enumerate(ornt):
        spacing[int(target)] = volume.spacing[a]
    return DisplayVolume(arr, (spacing[0], spacing[1], spacing[2]), ornt, volume.shape)


def view_plane(a: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice of a display-order array, in radiological display order (module docstring).

    Args:
        a: (x, y, z) array in display (RAS) order: HU, a mask or an entropy map.
        view: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the view's axis.

    Returns:
        The 2D (rows, cols) plane (a view of ``a``, not a copy).
    """
    if view == "axial":
        return a[::-1, ::-1, index].T  # rows y (A at top), cols x (R at left)
    if view == "coronal":
        return a[::-1, index, ::-1].T  # rows z (S at top), cols x (R at left)
    if view == "sagittal":
        return a[index, ::-1, ::-1].T  # rows z (S at top), cols y (A at left)
    raise ValueError(f"view {view!r} is not one of {VIEWS}")


def pixel_mm(dv: DisplayVolume, view: str) -> tuple[float, float]:
    """The physical size of one pixel of a :func:`view_plane` of ``view``.

    Returns:
        (row height, column width) in mm.
    """
    sx, sy, sz = dv.spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def view_labels(view: str) -> dict[str, str]:
    """Patient direction at each edge of a displayed slice (``left``, ``right``, ``top``, ``bottom``)."""
    return {
        "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
        "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
    }[view]


def apply_window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8 grey: ``level - width/2`` -> 0, ``level + width/2`` -> 255, clipped."""
    width = max(float(width), 1.0)
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def best_slice(mask: np.ndarray, view: str) -> int | None:
    """Index of the ``view`` slice with the most voxels of the (x, y, z) display ``mask``; None if empty."""
    axis = VIEW_AXIS[view]
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return None if counts.max(initial=0) == 0 else int(np.argmax(counts))


def display_entropy(dv: DisplayVolume, entropy: np.ndarray) -> np.ndarray:
    """An entropy map on the CT's grid, in file voxel order, reoriented like the CT.

    Args:
        dv: the display volume of the scan.
        entropy: (i, j, k) entropy in bits, shape ``dv.file_shape``
            (``storage.maps.load_uncertainty_map`` resamples the stored map onto that grid).

    Returns:
        (x, y, z) float16 entropy in display order.

    Raises:
        ValueError: the map's shape is not the scan's.
    """
    if tuple(entropy.shape) != tuple(dv.file_shape):
        raise ValueError(
            f"uncertainty map shape {tuple(entropy.shape)} does not match the scan's {tuple(dv.file_shape)}"
        )
    return dv.mask(np.asarray(entropy, dtype=np.float16))


def annotate_edges(rgb: np.ndarray, labels: Mapping[str, str]) -> np.ndarray:
    """Draw the patient direction letters (``view_labels``) at the middle of each edge of an RGB slice."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    pos = {
        "left": (4, h // 2 - 6),
        "right": (w - 12, h // 2 - 6),
        "top": (w // 2 - 4, 2),
        "bottom": (w // 2 - 4, h - 14),
    }
    for edge, letter in labels.items():
        x, y = pos[edge]
        draw.text((x + 1, y + 1), letter, fill=(0, 0, 0))
        draw.text((x, y), letter, fill=(255, 255, 0))
    return np.asarray(img)


def plane_to_display(dv: DisplayVolume, view: str, index: int, row: int, col: int) -> tuple[int, int, int]:
    """The (x, y, z) display voxel under pixel (``row``, ``col``) of an UNSCALED plane of ``view`` at
    ``index`` (the inverse of the flips in :func:`view_plane`, before the aspect scaling of
    :func:`workbench.app_data.overlays.slice_image`)."""
    nx, ny, nz = dv.array.shape
    if view == "axial":
        return nx - 1 - col, ny - 1 - row, index
    if view == "coronal":
        return nx - 1 - col, index, nz - 1 - row
    if view == "sagittal":
        return index, ny - 1 - col, nz - 1 - row
    raise ValueError(f"view {view!r} is not one of {VIEWS}")
