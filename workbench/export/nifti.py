"""The NIfTI files of an export and the case names they are filed under.

Every export writes the CT on its own grid (int16 where the voxels are integral HU, else float32) and its
labels as uint8 on exactly that grid, with qform = sform = the CT's affine, so the files open aligned in
3D Slicer, ITK-SNAP, nnU-Net and MONAI. :func:`write_nifti` writes a file atomically
(:func:`storage.files.atomic_path`) and returns its SHA-256 for the export's manifest.

Example:
    >>> export_case_name("kits23", "case_00001")
    'kits23_case_00001'
    >>> export_case_name("kits23", "case 1")
    'kits23_case_1-4f46fb0a'
    >>> ct_array(np.array([[-1000.0, 40.0]])).dtype
    dtype('int16')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.protocols import all_protocols
from storage.files import atomic_path, file_sha256, safe_name, unique_name


def export_case_name(source_id: str, case_id: str) -> str:
    """Folder (or file stem) name of a case in an export: ``<source>_<case>``, collision-free and stable.

    The case part is :func:`storage.files.unique_name` of the case id with the digest of the scan id
    ``<source>:<case>``: ``case_1`` stays ``kits23_case_1``, ``case 1`` becomes ``kits23_case_1-<8 hex>``.
    No ``/``, no space, no ``..`` component, so it is also a valid nnU-Net v2 case identifier. A case whose
    plain name would read like a case of a longer source id (``totalsegmentator`` + ``v1_s0001`` vs
    ``totalsegmentator_v1`` + ``s0001``) gets the digest too.

    Args:
        source_id: the scan's source.
        case_id: the scan's case id within the source.

    Returns:
        The name, e.g. ``kits23_case_00001``.
    """
    scan_id = f"{source_id}:{case_id}"
    return f"{safe_name(source_id)}_{unique_name(case_id, key=scan_id, hashed=_shadows(source_id, case_id))}"


def scan_export_name(scan_id: str) -> str:
    """:func:`export_case_name` of a scan id ``<source>:<case>`` (one without ``:``: its
    :func:`storage.files.unique_name`).

    Args:
        scan_id: catalog scan id.

    Returns:
        The scan's name in every export, e.g. ``kits23_case_00001``.
    """
    source, sep, case = scan_id.partition(":")
    return export_case_name(source, case) if sep else unique_name(scan_id)


def case_names(scan_ids: Sequence[str], out: Path) -> dict[str, str]:
    """scan id -> its name in an export (:func:`scan_export_name`), checked for duplicates.

    Args:
        scan_ids: the scans of the export.
        out: the export folder (named in the error).

    Returns:
        scan id -> case name.

    Raises:
        HarmonizeError: two scans would share a name (their files would overwrite each other).
    """
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for scan_id in scan_ids:
        name = scan_export_name(scan_id)
        if owner.setdefault(name, scan_id) != scan_id:
            raise HarmonizeError(out, f"scans {owner[name]} and {scan_id} would both be exported as {name}")
        names[scan_id] = name
    return names


def _shadows(source_id: str, case_id: str) -> bool:
    """True when ``<source>_<case>`` starts like the name of a case of another, longer source id."""
    name = f"{source_id}_{case_id}"
    return any(len(o) > len(source_id) and name.startswith(f"{o}_") for o in all_protocols())


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
