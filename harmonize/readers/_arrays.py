"""Checks every reader applies to the voxel array it decoded: 3D shape, finite images, integral labels.

Kept in one place so that a NIfTI, an NRRD and a DICOM series obey the same ``kind`` contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from harmonize.errors import HarmonizeError

Kind = Literal["image", "label"]
KINDS: tuple[str, ...] = ("image", "label")


def check_kind(kind: str) -> None:
    """Reject anything but ``'image'`` or ``'label'`` (a typo must not silently skip the label checks)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")


def squeeze_to_3d(array: np.ndarray, path: str | Path) -> np.ndarray:
    """Drop trailing singleton axes beyond the third; anything that is then not 3D is an error.

    Args:
        array: decoded voxels, any number of dimensions.
        path: the file, for the error message.

    Returns:
        The (i, j, k) array (a view, no copy).
    """
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise HarmonizeError(
            path, f"expected a 3D volume (a 4th axis of length 1 is allowed), got shape {array.shape}"
        )
    return array


def finish_array(array: np.ndarray, kind: Kind, path: str | Path) -> np.ndarray:
    """Apply the ``kind`` contract to a decoded 3D array.

    Images: integer arrays pass unchanged; float arrays must be finite (NaN/inf voxels are an error).
    Labels: integer arrays pass unchanged (bool becomes uint8); float arrays must hold finite integral
    values and are cast to the smallest integer dtype that holds their range.

    Args:
        array: (i, j, k) voxels.
        kind: ``'image'`` or ``'label'``.
        path: the file, for error messages.

    Returns:
        The array, possibly cast; never reoriented.
    """
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise HarmonizeError(path, f"unsupported voxel type {array.dtype} (expected integers or floats)")
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise HarmonizeError(path, f"{bad} NaN/inf voxels in a {kind}; the file is damaged or not a {kind}")
    if kind == "image":
        return array
    if array.size and not np.array_equal(array, np.rint(array)):
        fractional = array[array != np.rint(array)]
        raise HarmonizeError(
            path,
            f"label map holds non-integral values (e.g. {float(fractional[0])!r}); "
            "labels must be whole numbers (was an image passed as a label, or the labels resampled "
            "with linear interpolation?)",
        )
    return array.astype(smallest_int_dtype(array), copy=False)


def smallest_int_dtype(array: np.ndarray) -> np.dtype:
    """The smallest of uint8/16/32 (no negatives) or int8/16/32 that holds ``array``'s range, else int64."""
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = float(array.min()), float(array.max())
    candidates = (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32)
    for dtype in candidates:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)
