"""A binary mask kept as its bounding-box crop, so 32 classes of a large CT fit in memory.

Example:
    >>> import numpy as np
    >>> full = np.zeros((8, 8, 8), bool); full[2:4, 3:5, 1:2] = True
    >>> m = CroppedMask.from_full(full)
    >>> m.offset, m.data.shape, m.voxels, bool((m.full() == full).all())
    ((2, 3, 1), (2, 2, 1), 4, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harmonize.geometry import bbox_slices


def crop_affine(affine: np.ndarray, offset: tuple[int, ...] | list[int]) -> np.ndarray:
    """The voxel -> RAS+ affine of a crop whose first voxel sits at ``offset`` of the full grid."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ np.asarray(offset, dtype=np.float64) + out[:3, 3]
    return out


@dataclass(frozen=True)
class CroppedMask:
    """A bool mask of ``shape`` that is zero outside ``data`` placed at ``offset``.

    Args:
        shape: (i, j, k) shape of the full volume.
        offset: (i, j, k) index of ``data[0, 0, 0]`` in the full volume.
        data: bool crop; shape (0, 0, 0) for an empty mask.
    """

    shape: tuple[int, int, int]
    offset: tuple[int, int, int]
    data: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> CroppedMask:
        return cls(tuple(shape), (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))  # type: ignore[arg-type]

    @classmethod
    def from_full(
        cls,
        full: np.ndarray,
        origin: tuple[int, int, int] = (0, 0, 0),
        shape: tuple[int, int, int] | None = None,
    ) -> CroppedMask:
        """Crop a bool array to its bounding box; ``full`` may itself be a crop at ``origin``."""
        shape = tuple(shape or full.shape)  # type: ignore[assignment]
        box = bbox_slices(full)
        if box is None:
            return cls.empty(shape)  # type: ignore[arg-type]
        offset = tuple(int(o) + s.start for o, s in zip(origin, box))
        return cls(shape, offset, np.ascontiguousarray(full[box], dtype=bool))  # type: ignore[arg-type]

    @property
    def box(self) -> tuple[slice, slice, slice]:
        """Slices of ``data`` in the full volume."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.data.shape))  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.data))

    @property
    def is_empty(self) -> bool:
        return self.data.size == 0 or not self.data.any()

    def union(self, other: CroppedMask | None) -> CroppedMask:
        """The voxel-wise OR of two masks of the same volume, cropped to both (``None`` is empty)."""
        if other is None or other.is_empty:
            return self
        if self.is_empty:
            return other
        lo = np.minimum(self.offset, other.offset)
        hi = np.maximum(np.add(self.offset, self.data.shape), np.add(other.offset, other.data.shape))
        out = np.zeros(tuple(hi - lo), dtype=bool)
        for m in (self, other):
            start = np.subtract(m.offset, lo)
            out[tuple(slice(int(s), int(s) + n) for s, n in zip(start, m.data.shape))] |= m.data
        return CroppedMask(self.shape, tuple(int(v) for v in lo), out)  # type: ignore[arg-type]

    def full(self) -> np.ndarray:
        """The (i, j, k) bool mask of the whole volume."""
        out = np.zeros(self.shape, dtype=bool)
        if self.data.size:
            out[self.box] = self.data
        return out
