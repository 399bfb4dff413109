"""The NIfTI files of an export and the case names they are filed under.

Every export writes the CT on its own grid (int16 where the voxels are integral HU, else float32) and its
labels as uint8 on exactly that grid, with qform = sform = the CT's affine, so the files open aligned in
3D Slicer, ITK-SNAP, nnU-Net and MONAI. :func:`write_nifti` writes a file atomically
(:func:`storage.files.atomic_path`) and returns its SHA-256 for the export's manifest.

Example:
    >>> export_case_name("kits23", "case_00001")
    'kits23_case_00001'
    >>> ct_array(np.array([[-1000.0, 40.0]])).dtype
    dtype('int16')
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from storage.files import atomic_path, file_sha256, safe_name


def export_case_name(source_id: str, case_id: str) -> str:
    """Folder (or file stem) name of a case in an export: ``<source>_<case>``, made safe by
    :func:`storage.files.safe_name` (no ``/``, no ``..`` component).

    Args:
        source_id: the scan's source.
        case_id: the scan's case id within the source.

    Returns:
        The name, e.g. ``kits23_case_00001``.
    """
    return safe_name(f"{source_id}_{case_id}")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` as a NIfTI file with qform and sform both set to ``affine`` (code 1, scanner).

    Args:
        array: (i, j, k) voxels, written in their own dtype.
        affine: (4, 4) voxel -> world (RAS mm).
        path: the file; its suffix picks the format (``.nii.gz``: compressed).
    """
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> str:
    """:func:`save_nifti` to a temporary sibling, then moved onto ``path`` (a reader never sees half a
    file).

    Returns:
        The SHA-256 (hex) of the written file.
    """
    with atomic_path(path) as tmp:
        save_nifti(array, affine, tmp)
        digest = file_sha256(tmp)
    return digest


def ct_array(volume_array: np.ndarray) -> np.ndarray:
    """CT voxels as int16 when they are integral HU in range (smaller files), else float32.

    Args:
        volume_array: the CT's voxels in any numeric dtype.

    Returns:
        The same values as int16 (an integer array within the int16 range, or a float array of whole
        numbers), else as float32.
    """
    a = volume_array
    if np.issubdtype(a.dtype, np.integer) and a.min() >= -32768 and a.max() <= 32767:
        return a.astype(np.int16, copy=False)
    if np.issubdtype(a.dtype, np.floating) and np.array_equal(a, np.round(a)):
        return a.astype(np.int16)
    return a.astype(np.float32, copy=False)
