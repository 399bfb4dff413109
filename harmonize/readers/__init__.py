"""Image and label readers: every one returns a ``harmonize.volume.Volume``.

Contract (all readers): the array is in the FILE's voxel order (never reoriented), the affine maps voxel
indices to RAS+ millimetres, and ``meta`` holds non-identifying facts only (format, dtype, modality, a
SHA-1 of the DICOM SeriesInstanceUID, ...). Images come back as int or float arrays with CT rescale
applied (Hounsfield units); labels as integer arrays (float label files must hold whole numbers). Bad
input raises ``harmonize.errors.HarmonizeError`` naming the file and the problem.

Example:
    >>> from harmonize.readers import read_volume
    >>> ct = read_volume("case_00000/imaging.nii.gz")                      # doctest: +SKIP
    >>> seg = read_volume("case_00000/segmentation.nii.gz", kind="label")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import Kind, check_kind
from harmonize.readers._files import path_problem
from harmonize.readers._gzip import GZIP_ENGINE, VoxelStream, gzip_compress
from harmonize.readers.dicom import read_dicom_series, series_uid_sha1
from harmonize.readers.nifti import is_nifti_path, read_nifti
from harmonize.readers.nrrd import is_nrrd_path, read_nrrd
from harmonize.readers.png_stack import read_png_stack
from harmonize.volume import Volume

__all__ = [
    "GZIP_ENGINE",
    "Kind",
    "VoxelStream",
    "gzip_compress",
    "read_dicom_series",
    "read_nifti",
    "read_nrrd",
    "read_png_stack",
    "read_volume",
    "read_volumes",
    "series_uid_sha1",
]


def read_volume(path: str | Path, *, kind: Kind = "image") -> Volume:
    """Read an image or label volume, choosing the reader by suffix or folder.

    Dispatch: ``.nii`` / ``.nii.gz`` -> ``read_nifti``; ``.nrrd`` / ``.nhdr`` -> ``read_nrrd``; a folder
    -> ``read_dicom_series`` (the folder must hold exactly one series). A single ``.dcm`` file is refused:
    reading its whole series is an explicit choice, ``read_dicom_series(path)``. PNG mask folders need
    their DICOM reference: ``read_png_stack(folder, reference=...)``.

    Args:
        path: file or DICOM folder.
        kind: ``'image'`` (int or float array, rescale applied) or ``'label'`` (integer array).

    Returns:
        The Volume (array in file voxel order, voxel->RAS+ mm affine, non-identifying meta).

    Raises:
        HarmonizeError: missing path, broken link (data not fetched), not a regular file, permission
            denied, unsupported file type, or any error of the chosen reader.
    """
    check_kind(kind)
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise HarmonizeError(path, "file or folder not found")
    if path.is_dir():
        return read_dicom_series(path, kind=kind)
    problem = path_problem(path)
    if problem is not None:
        raise HarmonizeError(path, problem)
    if is_nifti_path(path):
        return read_nifti(path, kind)
    if is_nrrd_path(path):
        return read_nrrd(path, kind)
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        raise HarmonizeError(
            path,
            "a single DICOM slice; read its series explicitly with read_dicom_series(path) "
            "or pass the series folder",
        )
    raise HarmonizeError(
        path, "unsupported file type (expected .nii, .nii.gz, .nrrd, .nhdr or a DICOM folder)"
    )


#: Most files decoded at the same time by :func:`read_volumes` (gzip inflate releases the GIL).
READ_THREADS = 4


def read_volumes(items: Sequence[tuple[str | Path, Kind]]) -> list[Volume]:
    """Read several volumes at the same time (an image and its label, a folder of per-class files).

    Decoding runs in up to :data:`READ_THREADS` threads: zlib and isal release the GIL, so an image and
    its label cost about as much as the image alone.

    Args:
        items: ``(path, kind)`` per volume, as for :func:`read_volume`.

    Returns:
        The volumes, in the order of ``items``.

    Raises:
        HarmonizeError: the error of the first item (in ``items`` order) that could not be read, as
            :func:`read_volume` raises it; every read has finished (or failed) by then.
    """
    if len(items) <= 1:
        return [read_volume(path, kind=kind) for path, kind in items]
    with ThreadPoolExecutor(min(READ_THREADS, len(items))) as pool:
        futures = [pool.submit(read_volume, path, kind=kind) for path, kind in items]
        return [f.result() for f in futures]
