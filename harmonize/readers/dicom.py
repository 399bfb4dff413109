"""DICOM series reader (a folder of single-frame CT/MR slices) on top of pydicom.

Geometry, from DICOM PS3.3 C.7.6.2 (Image Plane module):

* ``ImageOrientationPatient`` = (row cosine ``r``, column cosine ``c``): ``r`` is the direction in which
  the column index grows along a row, ``c`` the direction in which the row index grows.
* ``PixelSpacing`` = (spacing between rows, spacing between columns) in mm.
* The volume array is ``[i, j, k] = [column, row, slice]`` (the order ITK, 3D Slicer and dcm2niix use, and
  the order of the NRRD label maps that 3D Slicer / dcmqi write on a DICOM series), so
  ``Volume.array[:, :, k] == pixel_array.T`` of slice ``k``. It is a transposed view of the
  (slice, row, column) stack, i.e. Fortran-contiguous, like a NIfTI read by nibabel.
* Slices are sorted by ``ImagePositionPatient`` projected on the slice normal ``n = r x c``, ascending.
  The LPS affine has columns ``r * PixelSpacing[1]``, ``c * PixelSpacing[0]``, the mean step between
  consecutive slice positions (equal to ``n * spacing`` without gantry tilt, sheared with it) and the
  origin ``ImagePositionPatient`` of slice 0; x and y are negated to get RAS+.

Pixel values get ``RescaleSlope``/``RescaleIntercept`` per slice (CT: Hounsfield units). If every slope is
1 and every intercept a whole number the result stays integer (int16 when it fits, else int32); otherwise
it is float32. Compressed transfer syntaxes decode through pydicom's pixel handlers (RLE natively; JPEG,
JPEG-LS lossless and JPEG 2000 through the pylibjpeg plugins).

Privacy: neither ``meta`` nor any error message holds a patient, study or institution value, nor any raw
UID: a series is identified by the SHA-1 of its SeriesInstanceUID only (messages name it by the first
:data:`SERIES_TAG_CHARS` hex digits, ``series 3f2a9c01d4e5``, and ``series_uid=`` accepts that prefix), and
the text of pydicom's exceptions passes :func:`redact` before it reaches a message.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import Kind, check_kind, finish_array
from harmonize.readers._files import BROKEN_LINK, PERMISSION_DENIED, require_file, require_folder
from harmonize.volume import Volume

# A slice step may deviate from the series' median step by this much before it counts as a gap or an
# irregular series; scanners write positions with ~1e-3 mm jitter, a missing slice is a whole step off.
_STEP_RTOL = 0.01
_STEP_ATOL_MM = 0.01
_ORIENTATION_ATOL = 1e-4
#: Hex digits of a series' SHA-1 that name it in messages (and that ``series_uid=`` accepts as a prefix).
SERIES_TAG_CHARS = 12
#: A DICOM UID (PS3.5 9.1: digit components joined by dots) or a DICOM date/time run of 8+ digits.
_UID = re.compile(r"\d+(?:\.\d+){3,}")
_LONG_NUMBER = re.compile(r"\d{8,}")


def series_uid_sha1(series_uid: str) -> str:
    """Hex SHA-1 of a SeriesInstanceUID: links scans to their series without storing the UID itself."""
    return hashlib.sha1(series_uid.strip().encode("ascii")).hexdigest()


def series_tag(series_uid: str) -> str:
    """How messages name a series: ``series <first SERIES_TAG_CHARS hex digits of its SHA-1>``."""
    return f"series {series_uid_sha1(series_uid)[:SERIES_TAG_CHARS]}"


def redact(text: str) -> str:
    """``text`` with every UID-like run (``1.2.840...``) replaced by ``uid-<8 hex digits of its SHA-1>``
    and every other run of 8 or more digits (DICOM dates, patient numbers) by ``<number>``: pydicom's
    exception texts may quote element values, and slice files are often named by their UID."""
    text = _UID.sub(lambda m: f"uid-{series_uid_sha1(m.group(0))[:8]}", text)
    return _LONG_NUMBER.sub("<number>", text)


def _problem(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, redacted (see :func:`redact`)."""
    return redact(f"{type(exc).__name__}: {exc}")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders the digit runs of a file name by value ('i2' < 'i10'); for zero-padded names
    such as CHAOS' ``i0001,0000b.dcm`` it is the plain lexical order."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None, kind: Kind = "image") -> Volume:
    """Read one DICOM series from a folder of single-frame slice files into a Volume.

    Args:
        folder: a folder holding the slice files (not searched recursively; files that are not DICOM are
            skipped). A path to one ``.dcm`` file means "the series of this file, in its folder".
        series_uid: the series to read when the folder holds several: its SeriesInstanceUID, or the hex
            SHA-1 of it (at least 8 leading digits: the prefix the "several series" message lists).
        kind: ``'image'`` (rescaled int or float32 array) or ``'label'`` (integer array).

    Returns:
        Volume with the (columns, rows, slices) array, its 4x4 voxel->RAS+ mm affine (see the module
        docstring) and meta ``{'format': 'dicom', 'dtype', 'modality', 'series_uid_sha1', 'slice_count',
        'slice_spacing_mm', 'rescale_slope', 'rescale_intercept', 'transfer_syntax', 'filename_rank'}``.
        ``filename_rank[k]`` is the position of slice k's file among the series' files sorted by name
        (natural order); ``read_png_stack`` pairs per-slice masks through it. Slopes/intercepts that vary
        between slices are stored as None.

    Raises:
        HarmonizeError: no DICOM slices, several series and no ``series_uid`` (the message lists them),
            an unknown ``series_uid``, multi-frame files, missing geometry, inconsistent orientation /
            size / pixel spacing, duplicate slice positions, gaps or irregular spacing, undecodable pixels.
    """
    check_kind(kind)
    path = Path(folder)
    if path.is_file() or (path.is_symlink() and not path.exists()):
        path = require_file(path)
        if series_uid is None:
            series_uid = _header(path).get("SeriesInstanceUID")
            if not series_uid:
                raise HarmonizeError(_where(path), "DICOM file has no SeriesInstanceUID")
        path = path.parent
    require_folder(path)

    series = _headers_by_series(path)
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(
                f"{series_uid_sha1(uid)[:SERIES_TAG_CHARS]} ({len(files)} files, "
                f"{redact(str(files[0][1].get('Modality', '?')))})"
                for uid, files in sorted(series.items(), key=lambda item: series_uid_sha1(item[0]))
            )
            raise HarmonizeError(
                path,
                f"{len(series)} series in the folder; pass series_uid= one of these SHA-1 prefixes: "
                f"{listing}",
            )
        series_uid = next(iter(series))
    else:
        series_uid = _resolve_series(path, series, series_uid)

    members = sorted(series[series_uid], key=lambda item: natural_key(item[0].name))
    rank_by_file = {file: rank for rank, (file, _) in enumerate(members)}
    headers = [header for _, header in members]
    _check_single_frame(path, members)
    orientation, normal = _orientation(path, headers)
    positions = np.array([_floats(h, "ImagePositionPatient", 3, path) for h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    members = [members[i] for i in order]
    positions = positions[order]
    step = _slice_step(path, positions, normal, members[0][1])

    rows, cols = _same_value(path, [(int(h.Rows), int(h.Columns)) for _, h in members], "Rows/Columns")
    spacings = [_floats(h, "PixelSpacing", 2, path) for _, h in members]
    pixel_spacing = _same_vector(path, spacings, "PixelSpacing")
    slopes = [float(h.get("RescaleSlope", 1.0) or 1.0) for _, h in members]
    intercepts = [float(h.get("RescaleIntercept", 0.0) or 0.0) for _, h in members]
    stack = _read_pixels(path, [file for file, _ in members], rows, cols, slopes, intercepts)

    lps = np.eye(4)
    lps[:3, 0] = orientation[0] * pixel_spacing[1]
    lps[:3, 1] = orientation[1] * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    array = finish_array(stack.transpose(2, 1, 0), kind, path)
    first = members[0][1]
    meta: dict[str, Any] = {
        "format": "dicom",
        "dtype": str(array.dtype),
        "modality": str(first.get("Modality", "")),
        "series_uid_sha1": series_uid_sha1(series_uid),
        "slice_count": len(members),
        "slice_spacing_mm": float(np.linalg.norm(step)),
        "rescale_slope": slopes[0] if len(set(slopes)) == 1 else None,
        "rescale_intercept": intercepts[0] if len(set(intercepts)) == 1 else None,
        "transfer_syntax": _transfer_syntax_name(first),
        "filename_rank": [rank_by_file[file] for file, _ in members],
    }
    return Volume(array, affine, meta)


def _resolve_series(folder: Path, series: dict[str, list[tuple[Path, Dataset]]], wanted: str) -> str:
    """The SeriesInstanceUID in ``series`` that ``wanted`` names (the UID itself, or a SHA-1 prefix)."""
    wanted = wanted.strip()
    if wanted in series:
        return wanted
    digest = wanted.lower()
    matches = (
        [uid for uid in series if series_uid_sha1(uid).startswith(digest)]
        if len(digest) >= 8 and _is_hex(digest)
        else []
    )
    if len(matches) == 1:
        return matches[0]
    named = f"series {digest[:SERIES_TAG_CHARS]}" if _is_hex(digest) else series_tag(wanted)
    raise HarmonizeError(folder, f"no slice of {named} in the folder ({len(series)} series)")


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def _where(file: Path) -> Path:
    """A slice file as messages name it: its folder and its name with UIDs redacted (PACS exports often
    name slice files by their SOPInstanceUID)."""
    return file.parent / redact(file.name)


def _header(file: Path) -> Dataset:
    try:
        return pydicom.dcmread(file, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise HarmonizeError(_where(file), f"not a readable DICOM file ({_problem(exc)})") from exc


def _headers_by_series(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Headers (without pixel data) of the image slices in ``folder``, grouped by SeriesInstanceUID."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    entries = sorted(folder.iterdir())
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        raise HarmonizeError(_where(broken[0]), f"{BROKEN_LINK}; {len(broken)} slice file(s) of the folder")
    for file in (p for p in entries if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, EOFError):
            continue  # README, DICOMDIR-less junk, thumbnails: not part of any series
        except PermissionError as exc:
            raise HarmonizeError(_where(file), PERMISSION_DENIED) from exc
        except (OSError, ValueError) as exc:
            raise HarmonizeError(_where(file), f"unreadable DICOM file ({_problem(exc)})") from exc
        if "Rows" not in header or "SeriesInstanceUID" not in header:
            continue  # no image (structured report, presentation state, DICOMDIR)
        series[str(header.SeriesInstanceUID)].append((file, header))
    if not series:
        raise HarmonizeError(folder, "no DICOM image slices in the folder")
    return dict(series)


def _check_single_frame(folder: Path, members: list[tuple[Path, Dataset]]) -> None:
    for file, header in members:
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise HarmonizeError(
                _where(file),
                "multi-frame (enhanced) DICOM is not supported; convert it to single-frame slices",
            )


def _floats(header: Dataset, keyword: str, count: int, folder: Path) -> np.ndarray:
    value = header.get(keyword)
    if value is None or len(value) != count:
        raise HarmonizeError(folder, f"a slice lacks {keyword} (needed to place it in space)")
    return np.array([float(v) for v in value], dtype=np.float64)


def _orientation(folder: Path, headers: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3) row/column direction cosines shared by all slices, and the unit slice normal r x c."""
    iops = np.array([_floats(h, "ImageOrientationPatient", 6, folder) for h in headers])
    if not np.allclose(iops, iops[0], atol=_ORIENTATION_ATOL):
        raise HarmonizeError(folder, "slices have different ImageOrientationPatient (not one stack)")
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_cos, col_cos)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise HarmonizeError(folder, f"ImageOrientationPatient {iops[0].tolist()} is degenerate")
    return np.stack([row_cos, col_cos]), normal / norm


def _slice_step(folder: Path, positions: np.ndarray, normal: np.ndarray, first: Dataset) -> np.ndarray:
    """The 3-vector from one slice origin to the next; checks for duplicates, gaps and a straight line."""
    if len(positions) == 1:
        spacing = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return normal * spacing
    along = positions @ normal
    steps = np.diff(along)
    tol = _STEP_ATOL_MM + _STEP_RTOL * float(np.median(np.abs(steps)))
    duplicates = np.flatnonzero(steps < tol)
    if duplicates.size:
        at = along[duplicates[0]]
        raise HarmonizeError(
            folder,
            f"{duplicates.size} duplicate slice position(s), e.g. two slices at {at:.3f} mm along the normal",
        )
    median = float(np.median(steps))
    off = np.flatnonzero(np.abs(steps - median) > tol)
    if off.size:
        raise HarmonizeError(
            folder,
            f"irregular slice spacing: median step {median:.3f} mm but step {steps[off[0]]:.3f} mm after "
            f"{along[off[0]]:.3f} mm (missing slices or mixed reconstructions)",
        )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    line = positions[0] + np.arange(len(positions))[:, None] * step
    if np.abs(positions - line).max() > tol:
        raise HarmonizeError(folder, "slice positions do not lie on one line (not one stack)")
    return step


def _same_value(folder: Path, values: list[tuple[int, int]], what: str) -> tuple[int, int]:
    if len(set(values)) != 1:
        raise HarmonizeError(folder, f"slices differ in {what}: {sorted(set(values))}")
    return values[0]


def _same_vector(folder: Path, values: list[np.ndarray], what: str) -> np.ndarray:
    stacked = np.stack(values)
    if not np.allclose(stacked, stacked[0], atol=1e-4):
        raise HarmonizeError(folder, f"slices differ in {what}")
    return stacked[0]


def _read_pixels(
    folder: Path, files: list[Path], rows: int, cols: int, slopes: list[float], intercepts: list[float]
) -> np.ndarray:
    """(slices, rows, cols) rescaled pixels: int16/int32 when the rescale is integral, else float32."""
    integral = all(s == 1.0 for s in slopes) and all(float(b).is_integer() for b in intercepts)
    stack = np.empty((len(files), rows, cols), dtype=np.int32 if integral else np.float32)
    for k, file in enumerate(files):
        try:
            pixels = pydicom.dcmread(file).pixel_array
        except Exception as exc:  # decoder plugins raise many types; all mean "cannot decode this slice"
            raise HarmonizeError(
                _where(file),
                f"pixel data cannot be decoded ({_problem(exc)}); for compressed files "
                "install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg",
            ) from exc
        if pixels.shape != (rows, cols):
            raise HarmonizeError(
                _where(file), f"pixel array {pixels.shape} is not Rows x Columns {(rows, cols)}"
            )
        if integral:
            stack[k] = pixels.astype(np.int32) + int(intercepts[k])
        else:
            stack[k] = pixels.astype(np.float32) * np.float32(slopes[k]) + np.float32(intercepts[k])
    if integral and stack.size:
        info = np.iinfo(np.int16)
        if info.min <= stack.min() and stack.max() <= info.max:
            return stack.astype(np.int16)
    return stack


def _transfer_syntax_name(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid.name) if uid is not None else "unknown"
