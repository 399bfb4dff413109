"""The mask store: the per-class binary masks of immutable label sets, one file per label set.

Format (chosen by measurement, see docs/mask_store.md and benchmarks/bench_mask_store.py):

* ``<root>/<key>.masks`` holds every class of one label set::

      b"CTMASKS1"                      8 bytes, magic + format version
      blob of class 0, blob of class 1, ...
      index                            UTF-8 JSON: shape, codec, one entry per class
      trailer                          little-endian uint64 index offset, uint64 index length, b"CTMINDEX"

* A class's blob is its bounding box (half-open ``[lo, hi)`` per axis, stored in the index) cut out of the
  volume, bit-packed along the last axis so that every row starts on a byte (``np.packbits(axis=-1)``), and
  zstd-compressed. An empty class has no blob. Each entry carries the blob's offset, length and CRC-32,
  so reading one class seeks to it and decodes nothing else.
* Writes go to a temp file ``.tmp.<pid>.<host>.<token>.<key>.masks`` in ``root`` (same filesystem), are
  fsynced and then linked/renamed into place, so a killed writer never leaves a half-written
  ``<key>.masks``; :meth:`MaskStore.gc` removes the temp files of dead writers.

Label sets are immutable: writing an existing key is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numcodecs import Zstd

from harmonize import geometry
from harmonize.errors import HarmonizeError
from harmonize.masks import CroppedMask

MAGIC = b"CTMASKS1"
TRAILER_MAGIC = b"CTMINDEX"
SUFFIX = ".masks"
TMP_PREFIX = ".tmp."
CODEC = "zstd"
# Level 1: as small as level 3 and the fastest write on the benchmark phantoms; level 9 saves 12-25 % of
# an already tiny file for up to 2x the write time (docs/mask_store.md). Readers accept any level.
ZSTD_LEVEL = 1
# Temp files of writers on another host cannot be checked for a live process; after this long they are
# certainly abandoned (a label set write takes well under a second).
FOREIGN_TMP_STALE_S = 3600.0

_TRAILER = struct.Struct("<QQ8s")
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_MAX_NAME_LEN = 200
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"

# Temp files being written by this process: gc must not remove them (their pid is ours and alive).
_IN_FLIGHT: set[str] = set()
_IN_FLIGHT_LOCK = threading.Lock()

BBox = geometry.BBox


class LabelSetExistsError(HarmonizeError):
    """The label set key is already in the store and ``overwrite`` was not asked for."""


@dataclass(frozen=True)
class ClassEntry:
    """Where one class lives in a label set file and what it holds.

    Args:
        name: class name, e.g. ``"liver"``.
        bbox: half-open voxel bounding box ``((i0, i1), (j0, j1), (k0, k1))`` of the foreground, or None
            when the mask is empty.
        voxels: number of foreground voxels.
        offset: byte offset of the compressed blob in the file (0 for an empty class).
        nbytes: length of the compressed blob in bytes (0 for an empty class).
        crc32: zlib CRC-32 of the compressed blob.
    """

    name: str
    bbox: BBox | None
    voxels: int
    offset: int
    nbytes: int
    crc32: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bbox": None if self.bbox is None else [list(b) for b in self.bbox],
            "voxels": self.voxels,
            "offset": self.offset,
            "nbytes": self.nbytes,
            "crc32": self.crc32,
        }


@dataclass(frozen=True)
class LabelSetIndex:
    """The index of one label set file: its volume shape and its classes in write order.

    Args:
        shape: (i, j, k) voxel shape every mask of the label set has.
        classes: class name -> :class:`ClassEntry`, in the order the classes were written.
    """

    shape: tuple[int, int, int]
    classes: dict[str, ClassEntry]


class MaskStore:
    """Per-class boolean masks of label sets, one immutable file per label set under ``root``.

    Thread-safe and multi-process-safe for readers; writers of different keys never interfere, and two
    writers of the same key cannot both win (the second gets :class:`LabelSetExistsError`).

    Args:
        root: folder of the store; created if missing.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- paths, keys

    def path(self, key: str) -> Path:
        """The file that holds label set ``key`` (whether or not it exists)."""
        return self.root / f"{self._check_key(key)}{SUFFIX}"

    def exists(self, key: str) -> bool:
        """True when label set ``key`` is in the store."""
        return self.path(key).is_file()

    def keys(self) -> list[str]:
        """Every label set key in the store, sorted."""
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.root.iterdir()
            if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file()
        )

    # ---------------------------------------------------------------------------------------- write

    def write_label_set(
        self,
        key: str,
        masks: Mapping[str, np.ndarray | CroppedMask],
        shape: tuple[int, int, int],
        *,
        overwrite: bool = False,
    ) -> int:
        """Write every class of one label set atomically; return the bytes written.

        Args:
            key: label set key, e.g. ``"ls-000123"`` or a uuid: letters, digits, ``.``, ``_``, ``-``;
                no ``/``; must not start with ``.``.
            masks: class name -> (i, j, k) array of dtype bool, or of an integer dtype holding only 0 and 1,
                or a ``harmonize.masks.CroppedMask`` (a bool crop with its offset; never expanded).
                Classes may overlap. Names must not contain path separators, ``..`` or control characters.
            shape: (i, j, k) voxel shape of the scan; every mask must have exactly this shape.
            overwrite: replace an existing label set (label sets are immutable; only repairs need this).

        Returns:
            The size in bytes of the label set file.

        Raises:
            HarmonizeError: bad key, class name, shape or dtype (naming the class), before anything is
                written. LabelSetExistsError (a HarmonizeError) when ``key`` exists and not ``overwrite``.
        """
        final = self.path(key)
        shape = _check_shape(final, shape)
        checked = [
            (_check_name(final, name), _check_mask(final, name, m, shape)) for name, m in masks.items()
        ]
        if not overwrite and final.exists():
            raise LabelSetExistsError(final, f"label set {key!r} exists and label sets are immutable")

        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}.{_HOST}.{uuid.uuid4().hex[:12]}.{key}{SUFFIX}"
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.add(tmp.name)
        try:
            with open(tmp, "xb") as f:
                size = _write_file(f, checked, shape)
                f.flush()
                os.fsync(f.fileno())
            _publish(tmp, final, key, overwrite)
            _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT.discard(tmp.name)
        return size

    # ----------------------------------------------------------------------------------------- read

    def index(self, key: str) -> LabelSetIndex:
        """The shape and per-class entries (bbox, voxel count) of label set ``key``, without decoding."""
        path = self._existing(key)
        with open(path, "rb") as f:
            return _read_index(path, f)

    def names(self, key: str) -> list[str]:
        """Class names of label set ``key`` in the order they were written."""
        return list(self.index(key).classes)

    def read(self, key: str, name: str) -> np.ndarray:
        """One class of label set ``key`` as a bool array of the full (i, j, k) shape.

        Only this class's blob is read and decoded.
        """
        path = self._existing(key)
        with open(path, "rb") as f:
            index = _read_index(path, f)
            return _read_full(path, f, index, _entry(path, index, name))

    def read_crop(self, key: str, name: str) -> tuple[np.ndarray, BBox | None]:
        """One class cut to its bounding box: (bool crop of shape (i1-i0, j1-j0, k1-k0), bbox).

        An empty class gives a (0, 0, 0) array and None. Cheaper than :meth:`read` for statistics.
        """
        path = self._existing(key)
        with open(path, "rb") as f:
            index = _read_index(path, f)
            entry = _entry(path, index, name)
            return _read_crop(path, f, entry), entry.bbox

    def read_many(self, key: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Several classes (all when ``names`` is None) as name -> bool (i, j, k) arrays, in that order."""
        path = self._existing(key)
        with open(path, "rb") as f:
            index = _read_index(path, f)
            wanted = list(index.classes) if names is None else list(names)
            entries = [_entry(path, index, n) for n in wanted]
            return {e.name: _read_full(path, f, index, e) for e in entries}

    # -------------------------------------------------------------------------------- delete, clean

    def delete(self, key: str) -> bool:
        """Remove label set ``key``; True if it existed."""
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def gc(self, *, dry_run: bool = False) -> list[Path]:
        """Remove temp files of dead writers; published label sets are never touched here (whether one
        is still needed is the catalog's business: :meth:`storage.workspace.Workspace.collect_garbage`).

        A temp file is left alone while its writer may still be running: this process's own writes in
        flight, a live process on this host, or (for another host) a file younger than
        ``FOREIGN_TMP_STALE_S``.

        Args:
            dry_run: list what would be removed and remove nothing.

        Returns:
            The removed (or, with ``dry_run``, removable) paths, sorted.
        """
        removed: list[Path] = []
        for p in self.root.iterdir():
            if p.name.startswith(TMP_PREFIX) and _tmp_is_abandoned(p):
                if dry_run:
                    removed.append(p)
                    continue
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                removed.append(p)
        if removed and not dry_run:
            _fsync_dir(self.root)
        return sorted(removed)

    # ------------------------------------------------------------------------------------- helpers

    def _check_key(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise HarmonizeError(
                self.root,
                f"label set key {key!r} is not valid: use 1-200 letters, digits, '.', '_' or '-', "
                "not starting with '.', without '/'",
            )
        return key

    def _existing(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise HarmonizeError(path, f"no label set {key!r} in the mask store")
        return path


# ------------------------------------------------------------------------------------- validation


def _check_shape(path: Path, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise HarmonizeError(path, f"shape {shape!r} is not three integers") from None
    if len(out) != 3 or min(out) < 1 or any(s != o for s, o in zip(shape, out)):
        raise HarmonizeError(path, f"shape {shape!r} is not three positive integers")
    return out[0], out[1], out[2]


def _check_name(path: Path, name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > _MAX_NAME_LEN
        or "/" in name
        or "\\" in name
        or ".." in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise HarmonizeError(
            path,
            f"class name {name!r} is not safe: use 1-{_MAX_NAME_LEN} printable characters without '/', "
            "'\\' or '..'",
        )
    return name


def _check_mask(
    path: Path, name: str, mask: np.ndarray | CroppedMask, shape: tuple[int, int, int]
) -> np.ndarray | CroppedMask:
    if isinstance(mask, CroppedMask):
        # Already a tight bool crop (the harmonizer's output): no full-volume array is ever built.
        if tuple(mask.shape) != shape:
            raise HarmonizeError(path, f"class {name!r}: mask shape {mask.shape} != label set shape {shape}")
        if mask.data.dtype != np.bool_:
            raise HarmonizeError(path, f"class {name!r}: cropped mask dtype {mask.data.dtype} is not bool")
        return mask
    if not isinstance(mask, np.ndarray):
        raise HarmonizeError(path, f"class {name!r}: mask is a {type(mask).__name__}, not a numpy array")
    if mask.shape != shape:
        raise HarmonizeError(path, f"class {name!r}: mask shape {mask.shape} != label set shape {shape}")
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise HarmonizeError(path, f"class {name!r}: mask dtype {mask.dtype} is not bool or integer 0/1")
    lo, hi = (0, int(mask.max())) if np.issubdtype(mask.dtype, np.unsignedinteger) else _min_max(mask)
    if lo < 0 or hi > 1:
        raise HarmonizeError(path, f"class {name!r}: integer mask holds values in [{lo}, {hi}], not only 0/1")
    return mask


def _min_max(a: np.ndarray) -> tuple[int, int]:
    return int(a.min()), int(a.max())


# ---------------------------------------------------------------------------------------- encoding


def _encode_class(name: str, mask: np.ndarray | CroppedMask, offset: int) -> tuple[ClassEntry, bytes]:
    """Crop, bit-pack and compress one (i, j, k) 0/1 mask; the entry records where its blob will sit."""
    if isinstance(mask, CroppedMask):
        origin = mask.offset
        inner = geometry.bbox(mask.data) if mask.data.size else None
        if inner is None:
            return ClassEntry(name, None, 0, 0, 0, 0), b""
        crop = mask.data[tuple(slice(a, b) for a, b in inner)]
        shifted: BBox = tuple((o + a, o + b) for o, (a, b) in zip(origin, inner))  # type: ignore[assignment]
        return _encode_crop(name, crop, shifted, offset)
    if mask.dtype != np.bool_:
        # Validated to hold only 0/1: one-byte ints already are bools byte for byte.
        mask = mask.view(np.bool_) if mask.dtype.itemsize == 1 else mask != 0
    bbox = geometry.bbox(mask)
    if bbox is None:
        return ClassEntry(name, None, 0, 0, 0, 0), b""
    (i0, i1), (j0, j1), (k0, k1) = bbox
    return _encode_crop(name, mask[i0:i1, j0:j1, k0:k1], bbox, offset)


def _encode_crop(name: str, crop: np.ndarray, bbox: BBox, offset: int) -> tuple[ClassEntry, bytes]:
    voxels = int(np.count_nonzero(crop))
    # packbits keeps the memory order of its input; the codec reads raw memory, so force C order.
    packed = np.ascontiguousarray(np.packbits(crop, axis=-1))
    blob = bytes(Zstd(level=ZSTD_LEVEL).encode(packed))
    return ClassEntry(name, bbox, voxels, offset, len(blob), zlib.crc32(blob)), blob


def _write_file(
    f: BinaryIO, checked: list[tuple[str, np.ndarray | CroppedMask]], shape: tuple[int, int, int]
) -> int:
    """Stream magic, blobs, index and trailer to ``f``; holds one encoded class at a time."""
    f.write(MAGIC)
    offset = len(MAGIC)
    entries = []
    for name, mask in checked:
        entry, blob = _encode_class(name, mask, offset)
        f.write(blob)
        offset += len(blob)
        entries.append(entry.to_json())
    index = json.dumps(
        {
            "format": 1,
            "shape": list(shape),
            "codec": CODEC,
            "packing": "bbox-packbits-last-axis",
            "classes": entries,
        },
        separators=(",", ":"),
    ).encode()
    f.write(index)
    f.write(_TRAILER.pack(offset, len(index), TRAILER_MAGIC))
    return offset + len(index) + _TRAILER.size


def _publish(tmp: Path, final: Path, key: str, overwrite: bool) -> None:
    """Move the finished temp file to its final name; without overwrite, never clobber a racing writer."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        # link() fails if the name exists, so of two writers of one key exactly one wins.
        os.link(tmp, final)
    except FileExistsError:
        raise LabelSetExistsError(final, f"label set {key!r} exists and label sets are immutable") from None
    except OSError:
        # Filesystems without hard links: check-then-rename (a tiny race between writers of one key).
        if final.exists():
            raise LabelSetExistsError(
                final, f"label set {key!r} exists and label sets are immutable"
            ) from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make renames/unlinks in ``folder`` durable (POSIX; Windows has no directory fsync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_is_abandoned(p: Path) -> bool:
    """True when nobody can still be writing temp file ``p`` (``.tmp.<pid>.<host>.<token>.<key>.masks``)."""
    with _IN_FLIGHT_LOCK:
        if p.name in _IN_FLIGHT:
            return False
    parts = p.name[len(TMP_PREFIX) :].split(".", 3)
    try:
        pid, host = int(parts[0]), parts[1]
    except (IndexError, ValueError):
        pid, host = -1, ""
    if host == _HOST and pid > 0 and os.name != "nt":
        # Our own pid but not in flight: a leftover of an earlier process that had this pid.
        return pid == os.getpid() or not _pid_alive(pid)
    try:
        age = time.time() - p.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_TMP_STALE_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------- decoding


def _read_index(path: Path, f: BinaryIO) -> LabelSetIndex:
    size = os.fstat(f.fileno()).st_size
    if size < len(MAGIC) + _TRAILER.size or f.read(len(MAGIC)) != MAGIC:
        raise HarmonizeError(path, "not a mask store file (bad magic or truncated)")
    f.seek(size - _TRAILER.size)
    index_offset, index_len, trailer_magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if trailer_magic != TRAILER_MAGIC or index_offset + index_len + _TRAILER.size != size:
        raise HarmonizeError(path, "mask store file is truncated or corrupt (bad trailer)")
    f.seek(index_offset)
    try:
        raw = json.loads(f.read(index_len))
        i, j, k = (int(s) for s in raw["shape"])
        shape = (i, j, k)
        classes = {
            c["name"]: ClassEntry(
                c["name"],
                _parse_bbox(c["bbox"]),
                int(c["voxels"]),
                int(c["offset"]),
                int(c["nbytes"]),
                int(c["crc32"]),
            )
            for c in raw["classes"]
        }
        codec = raw["codec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HarmonizeError(path, f"mask store index is corrupt: {exc}") from None
    if codec != CODEC:
        raise HarmonizeError(path, f"mask store file has codec {codec!r}; this version reads {CODEC!r}")
    for e in classes.values():
        if e.offset + e.nbytes > index_offset:
            raise HarmonizeError(path, f"class {e.name!r}: blob lies outside the file")
    return LabelSetIndex(shape, classes)


def _parse_bbox(raw: list[list[int]] | None) -> BBox | None:
    if raw is None:
        return None
    (i0, i1), (j0, j1), (k0, k1) = raw
    return (int(i0), int(i1)), (int(j0), int(j1)), (int(k0), int(k1))


def _entry(path: Path, index: LabelSetIndex, name: str) -> ClassEntry:
    try:
        return index.classes[name]
    except KeyError:
        raise HarmonizeError(
            path, f"no class {name!r} in this label set (has {list(index.classes)})"
        ) from None


def _read_crop(path: Path, f: BinaryIO, entry: ClassEntry) -> np.ndarray:
    if entry.bbox is None:
        return np.zeros((0, 0, 0), dtype=bool)
    f.seek(entry.offset)
    blob = f.read(entry.nbytes)
    if len(blob) != entry.nbytes or zlib.crc32(blob) != entry.crc32:
        raise HarmonizeError(path, f"class {entry.name!r}: blob is corrupt (CRC-32 mismatch)")
    (i0, i1), (j0, j1), (k0, k1) = entry.bbox
    rows = (i1 - i0, j1 - j0, (k1 - k0 + 7) // 8)
    packed = np.frombuffer(Zstd().decode(blob), dtype=np.uint8)
    if packed.size != rows[0] * rows[1] * rows[2]:
        raise HarmonizeError(path, f"class {entry.name!r}: decoded {packed.size} bytes, expected {rows}")
    return np.unpackbits(packed.reshape(rows), axis=-1, count=k1 - k0).view(bool)


def _read_full(path: Path, f: BinaryIO, index: LabelSetIndex, entry: ClassEntry) -> np.ndarray:
    out = np.zeros(index.shape, dtype=bool)
    if entry.bbox is not None:
        (i0, i1), (j0, j1), (k0, k1) = entry.bbox
        out[i0:i1, j0:j1, k0:k1] = _read_crop(path, f, entry)
    return out
