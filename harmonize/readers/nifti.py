"""NIfTI-1/-2 reader (.nii, .nii.gz) on top of nibabel.

The affine is exactly nibabel's ``img.affine`` (sform if its code is set, else qform, else the fallback
nibabel documents), already in RAS+ mm. Voxels come from ``img.dataobj`` in the file's own order. When the
header's scl_slope/scl_inter are 1/0 (or unset) the on-disk dtype is kept, so an int16 CT stays int16 and
the read costs what nibabel's own ``np.asanyarray(img.dataobj)`` costs; with real scaling an integer image
is scaled straight into float32 (half the memory of nibabel's float64 default).

Fast path: a single-file NIfTI-1/-2 (magic ``n+1`` / ``n+2``) is decoded here, not through nibabel's
``GzipFile``: the header (and its extensions) is parsed by nibabel's own header class from the first bytes,
then the voxels are inflated straight into a writable numpy buffer through
:class:`harmonize.readers._gzip.VoxelStream` (python-isal's igzip when installed, zlib otherwise),
with nibabel's scaling rule (``ArrayProxy._get_scaled``) applied unchanged. The affine is
``header.get_best_affine()``, which is what ``nib.load`` sets. Anything else (an Analyze header, a pair
header in a ``.nii``, a file too short for a header) goes through ``nib.load`` as before, so its errors
read as they always did.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import Kind, check_kind, finish_array, squeeze_to_3d
from harmonize.readers._files import require_file
from harmonize.readers._gzip import VoxelStream
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
    fast = _read_single_file(path, kind)
    if fast is not None:
        return fast
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
        raise _damaged(path, exc) from exc
    return _volume(path, kind, array, img.header, np.array(img.affine, dtype=np.float64), slope, inter)


#: sizeof_hdr of a single-file NIfTI header -> (its header class, its magic)
_SINGLE_FILE_HEADERS: dict[int, tuple[type[nib.Nifti1Header], bytes]] = {
    348: (nib.Nifti1Header, b"n+1\x00"),
    540: (nib.Nifti2Header, b"n+2\x00"),
}
_MAGIC_AT = {348: 344, 540: 4}


def _damaged(path: Path, exc: BaseException) -> HarmonizeError:
    return HarmonizeError(
        path, f"voxel data unreadable, file truncated or corrupt ({type(exc).__name__}: {exc})"
    )


def _header_class(head: bytes) -> type[nib.Nifti1Header] | None:
    """The header class of a single-file NIfTI-1/-2 whose first bytes are ``head``, else None."""
    if len(head) < 4:
        return None
    for order in "<>":
        (size,) = struct.unpack(f"{order}i", head[:4])
        if size in _SINGLE_FILE_HEADERS:
            klass, magic = _SINGLE_FILE_HEADERS[size]
            at = _MAGIC_AT[size]
            return klass if head[at : at + 4] == magic else None
    return None


def _read_single_file(path: Path, kind: Kind) -> Volume | None:
    """The fast path (module docstring); ``None`` when the file is not a single-file NIfTI-1/-2."""
    try:
        stream = VoxelStream(path)
    except OSError as exc:
        raise HarmonizeError(path, f"not a readable NIfTI header ({type(exc).__name__}: {exc})") from exc
    with stream:
        try:
            head = stream.read(540)
            klass = _header_class(head)
            if klass is None:
                return None
            size = klass.sizeof_hdr
            offset = int(klass.from_fileobj(io.BytesIO(head[:size]), check=False).get_data_offset())
            if offset < size + 4:  # vox_offset inside the header: leave the oddity to nibabel
                return None
            prefix = head + stream.read(offset - len(head)) if offset > len(head) else head
            header = klass.from_fileobj(io.BytesIO(prefix))
            shape, dtype = header.get_data_shape(), header.get_data_dtype()
            slope, inter = header.get_slope_inter()
        except Exception as exc:  # nibabel raises many types for a bad header; all mean "unreadable"
            raise HarmonizeError(path, f"not a readable NIfTI header ({type(exc).__name__}: {exc})") from exc
        if len(shape) < 3:
            raise HarmonizeError(path, f"expected a 3D volume, header says shape {shape}")
        try:
            raw = _voxels(stream, prefix[offset:], shape, dtype)
        except Exception as exc:  # zlib / isal errors, EOFError, OSError: a damaged data block
            raise _damaged(path, exc) from exc
    # ArrayProxy's rule: no valid scaling in the header means slope 1, intercept 0
    proxy_slope = 1.0 if slope is None else slope
    proxy_inter = 0.0 if inter is None else inter
    meta_slope, meta_inter = _normalised(proxy_slope, proxy_inter)
    to_float32 = kind == "image" and (meta_slope, meta_inter) != (1.0, 0.0) and dtype.kind in "iu"
    array = _scaled(raw, proxy_slope, proxy_inter, np.dtype(np.float32) if to_float32 else None)
    affine = np.array(header.get_best_affine(), dtype=np.float64)
    return _volume(path, kind, array, header, affine, meta_slope, meta_inter)


def _voxels(stream: VoxelStream, first: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The unscaled voxels in file (Fortran) order, inflated into a fresh writable buffer.

    Args:
        stream: positioned after ``first``.
        first: the voxel bytes already read with the header.
        shape: the header's data shape.
        dtype: the on-disk dtype (byte order included).
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes, dtype=np.uint8)
    got = min(len(first), nbytes)
    buf[:got] = np.frombuffer(first, dtype=np.uint8, count=got)
    got += stream.read_into(memoryview(buf)[got:])  # type: ignore[arg-type]
    if got < nbytes:
        raise EOFError(f"expected {nbytes} bytes of voxels, the file holds {got}")
    stream.drain()
    return buf.view(dtype).reshape(shape, order="F")


def _scaled(raw: np.ndarray, slope: float, inter: float, dtype: np.dtype | None) -> np.ndarray:
    """``np.asarray(img.dataobj, dtype)`` of nibabel (``ArrayProxy._get_scaled`` and numpy's final cast):
    the same casts, so values are bit-identical to reading through ``nib.load``."""
    scl_slope, scl_inter = np.asanyarray(slope), np.asanyarray(inter)
    use_dtype = scl_slope.dtype if dtype is None else dtype
    if np.can_cast(scl_slope, use_dtype):
        scl_slope = scl_slope.astype(use_dtype)
    if np.can_cast(scl_inter, use_dtype):
        scl_inter = scl_inter.astype(use_dtype)
    scaled = apply_read_scaling(raw, scl_slope, scl_inter)  # type: ignore[arg-type]
    if dtype is not None:
        scaled = scaled.astype(np.promote_types(scaled.dtype, dtype), copy=False)
        scaled = scaled.astype(dtype, copy=False)  # what np.asarray(proxy, dtype) does after __array__
    return scaled


def _volume(
    path: Path,
    kind: Kind,
    array: np.ndarray,
    header: nib.Nifti1Header,
    affine: np.ndarray,
    slope: float,
    inter: float,
) -> Volume:
    """Apply the ``kind`` contract and record the non-identifying header facts."""
    disk_dtype = header.get_data_dtype()
    array = finish_array(squeeze_to_3d(array, path), kind, path)
    meta = {
        "format": "nifti",
        "dtype": str(array.dtype),
        "disk_dtype": str(disk_dtype),
        "scl_slope": slope,
        "scl_inter": inter,
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
    }
    return Volume(array, affine, meta)


def _normalised(slope: float, inter: float) -> tuple[float, float]:
    """Unset/NaN/zero slope means 1, unset/NaN intercept means 0 (the ``meta`` convention)."""
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _scaling(img: nib.Nifti1Image | nib.Nifti2Image) -> tuple[float, float]:
    """The (slope, intercept) nibabel applies on read; unset/NaN header fields mean (1, 0)."""
    proxy = img.dataobj
    return _normalised(getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0))
