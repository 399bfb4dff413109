"""NIfTI-1/-2 reader (.nii, .nii.gz) on top of nibabel.

The affine is exactly nibabel's ``img.affine`` (sform if its code is set, else qform, else the fallback
nibabel documents), already in RAS+ mm. Voxels come from ``img.dataobj`` in the file's own order. When the
header's scl_slope/scl_inter are 1/0 (or unset) the on-disk dtype is kept, so an int16 CT stays int16 and
the read costs what nibabel's own ``np.asanyarray(img.dataobj)`` costs; with real scaling an integer image
is scaled straight into float32 (half the memory of nibabel's float64 default).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import Kind, check_kind, finish_array, squeeze_to_3d
from harmonize.readers._files import require_file
from harmonize.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    """Whether ``path`` ends in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, kind: Kind = "image") -> Volume:
    """Read a .nii / .nii.gz file into a Volume.

    Args:
        path: the file.
        kind: ``'image'`` (int or float array, header scaling applied; NaN/inf voxels are an error) or
            ``'label'`` (integer array; float files must hold whole numbers and are cast to the smallest
            integer dtype).

    Returns:
        Volume with the (i, j, k) array in file order, nibabel's 4x4 voxel->RAS+ mm affine, and meta
        ``{'format': 'nifti', 'dtype', 'disk_dtype', 'scl_slope', 'scl_inter', 'sform_code', 'qform_code'}``.

    Raises:
        HarmonizeError: missing file, unreadable/corrupt header, truncated or corrupt (gzip) data, data
            that is not 3D (a trailing axis of length 1 is squeezed), NaN/inf voxels, non-integral labels.
    """
    check_kind(kind)
    path = require_file(path)
    try:
        # mmap=False: read into memory now, so a truncated file fails here and no file handle outlives us.
        img = nib.load(path, mmap=False)
    except Exception as exc:  # nibabel raises many types for a bad header; all mean "unreadable"
        raise HarmonizeError(path, f"not a readable NIfTI header ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise HarmonizeError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    if len(img.shape) < 3:
        raise HarmonizeError(path, f"expected a 3D volume, header says shape {img.shape}")

    slope, inter = _scaling(img)
    disk_dtype = img.get_data_dtype()
    try:
        if kind == "image" and (slope, inter) != (1.0, 0.0) and np.issubdtype(disk_dtype, np.integer):
            array = np.asarray(img.dataobj, dtype=np.float32)
        else:
            array = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError: all a damaged data block
        raise HarmonizeError(
            path, f"voxel data unreadable, file truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc

    array = finish_array(squeeze_to_3d(array, path), kind, path)
    header = img.header
    meta = {
        "format": "nifti",
        "dtype": str(array.dtype),
        "disk_dtype": str(disk_dtype),
        "scl_slope": slope,
        "scl_inter": inter,
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
    }
    return Volume(array, np.array(img.affine, dtype=np.float64), meta)


def _scaling(img: nib.Nifti1Image | nib.Nifti2Image) -> tuple[float, float]:
    """The (slope, intercept) nibabel applies on read; unset/NaN header fields mean (1, 0)."""
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter
