"""NRRD reader (.nrrd with attached data, .nhdr with a detached data file) on top of pynrrd.

The array keeps the file's sample order (pynrrd's default Fortran index order: axis 0 is the fastest,
as listed in ``sizes``). Geometry comes from ``space``, ``space directions`` and ``space origin``: column
``a`` of the affine is the ``space directions`` vector of spatial axis ``a`` and the translation is
``space origin`` (the centre of the first sample, for cell- and node-centred data alike), both in the
header's ``space``; left-/posterior-based spaces are flipped to RAS+.

Label maps written by 3D Slicer (``.seg.nrrd``) or dcmqi carry extra keys (``Segment0_ID``, ...); they
are ignored. A segmentation with a non-spatial ``list`` axis of length 1 (one layer) is squeezed to 3D;
several layers (overlapping segments) are refused, since a label map must give each voxel one value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nrrd
import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import Kind, check_kind, finish_array
from harmonize.readers._files import require_file
from harmonize.volume import Volume

NRRD_SUFFIXES = (".nrrd", ".nhdr")

# Sign that turns each axis of an anatomical NRRD space into RAS+ (x: right, y: anterior, z: superior).
_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


def is_nrrd_path(path: str | Path) -> bool:
    """Whether ``path`` ends in .nrrd or .nhdr (case-insensitive)."""
    return str(path).lower().endswith(NRRD_SUFFIXES)


def read_nrrd(path: str | Path, kind: Kind = "image") -> Volume:
    """Read a .nrrd / .nhdr file into a Volume.

    Args:
        path: the file (a .nhdr names its data file in its header).
        kind: ``'image'`` (int or float array; NaN/inf voxels are an error) or ``'label'`` (integer
            array; float files must hold whole numbers and are cast to the smallest integer dtype).

    Returns:
        Volume with the (i, j, k) array in file order, the 4x4 voxel->RAS+ mm affine, and meta
        ``{'format': 'nrrd', 'dtype', 'space'}`` (``space`` as written in the header).

    Raises:
        HarmonizeError: missing file; unreadable header or truncated/corrupt data; no anatomical
            ``space`` (e.g. ``scanner-xyz``, or only ``spacings``); not 3 spatial axes; several segment
            layers; NaN/inf voxels; non-integral labels.
    """
    check_kind(kind)
    path = require_file(path)
    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # NRRDError, zlib.error, OSError, ValueError: all an unreadable file
        raise HarmonizeError(path, f"not a readable NRRD file ({type(exc).__name__}: {exc})") from exc

    space = str(header.get("space", "")).strip().lower()
    if space not in _SPACE_TO_RAS:
        raise HarmonizeError(
            path,
            f"NRRD space {header.get('space')!r} is not an anatomical 3D space (need one of "
            "right-anterior-superior, left-anterior-superior, left-posterior-superior)",
        )
    directions = header.get("space directions")
    if directions is None:
        raise HarmonizeError(path, "NRRD header has no 'space directions'; voxel geometry unknown")
    directions = np.asarray(directions, dtype=np.float64)
    data = np.asarray(data)
    spatial = [a for a in range(data.ndim) if np.all(np.isfinite(directions[a]))]
    other = [a for a in range(data.ndim) if a not in spatial]
    if len(spatial) != 3:
        raise HarmonizeError(path, f"expected 3 spatial axes, header has {len(spatial)} (shape {data.shape})")
    if any(data.shape[a] != 1 for a in other):
        raise HarmonizeError(
            path,
            f"{data.shape[other[0]]} layers along non-spatial axis {other[0]} (kinds {header.get('kinds')}); "
            "overlapping segment layers are not a label map, export one labelmap per layer",
        )
    data = np.squeeze(data, axis=tuple(other)) if other else data

    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise HarmonizeError(path, f"NRRD 'space origin' {origin.tolist()} is not a 3D point")
    affine_space = np.eye(4)
    affine_space[:3, :3] = directions[spatial].T
    affine_space[:3, 3] = origin
    affine = np.diag([*_SPACE_TO_RAS[space], 1.0]) @ affine_space

    array = finish_array(data, kind, path)
    meta: dict[str, Any] = {"format": "nrrd", "dtype": str(array.dtype), "space": str(header["space"])}
    return Volume(array, affine, meta)
