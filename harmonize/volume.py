"""The in-memory volume every reader returns and every harmonizer step takes.

Data format, used everywhere in the project:

* ``array`` is indexed ``[i, j, k]`` in the file's own voxel order. Readers never reorient, so masks
  written back on this grid open over the original CT in 3D Slicer.
* ``affine`` is the 4x4 matrix mapping ``(i, j, k, 1)`` to patient coordinates in millimetres, in the
  **RAS+** convention of NIfTI and nibabel: x increases towards the patient's **Right**, y towards
  **Anterior**, z towards **Superior** (so the patient's left side has the smaller x). DICOM's LPS
  coordinates are converted on read (x and y negated).
* ``meta`` holds non-identifying facts only (modality, series UID hash, rescale, source format). Readers
  never copy patient names, IDs, birth dates or accession numbers.

Example:
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    >>> v.spacing, v.axcodes, round(v.voxel_volume_ml, 6)
    ((0.8, 0.8, 2.5), ('R', 'A', 'S'), 0.0016)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class Volume:
    """A 3D array with its voxel-to-RAS affine.

    Args:
        array: (i, j, k) voxel data; CT in Hounsfield units (rescale already applied), labels as ints.
        affine: (4, 4) float64 voxel-index -> RAS+ millimetres.
        meta: non-identifying facts about the source file.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume needs a 4x4 affine, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ('L', 'P', 'S') for LPS order."""
        return axcodes(self.affine)

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """Map (n, 3) voxel indices to (n, 3) RAS+ millimetres."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """Direction codes of the three array axes of an RAS+ affine (the dominant world axis of each)."""
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    codes = []
    for col in rot.T:
        world_axis = int(np.argmax(np.abs(col)))
        codes.append(_AXIS_LETTERS[world_axis][int(col[world_axis] > 0)])
    return tuple(codes)  # type: ignore[return-value]
