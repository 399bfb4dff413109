"""Write a phantom the way a public source publishes its data, driven only by the source's Protocol.

Everything comes from the protocol (data, not code): the layout templates give the paths, ``[labels]``
or ``[files]`` the native values or file stems, ``[native]`` the axcodes and dtypes. The only branching
is on ``layout.kind``:

* ``paired``: image + one label map. Each voxel gets the native value whose targets are the most
  specific match of the universal classes present there: a value matches when every one of its targets
  is present (a pair name such as ``kidney`` is present when either side is); among matches the one with
  the most targets wins, then the one whose classes lie deepest (a tumour inside its organ beats the
  organ), then the smaller value. So a KiTS tumour voxel gets 2 (kidney + tumour), not 1, and both
  kidneys get the same value when the source merges them.
* ``per_class_files``: a folder with one binary file per stem of ``[files]``; a stem holds the voxels
  matching its targets. When several stems have the same targets (lung lobes drawn as ``lung_right``),
  the class is split into that many slabs along the array's third axis, in stem order, one file each.
* ``dicom_png``: a DICOM series (one file per slice, pydicom, LPS geometry, RescaleSlope 1 and
  RescaleIntercept -1024, synthetic ``2.25.`` UIDs derived from the case id) plus one 8-bit PNG per
  slice holding the native values. PNG ``i`` belongs to the DICOM file ``i`` in sorted file-name order
  and PNG rows/columns are DICOM rows/columns (the ``harmonize.readers.png_stack`` convention).

Formats follow each template's ending: ``.nii.gz``/``.nii`` is NIfTI (qform and sform code 1), a path
without a file ending is a DICOM series folder (also for per-class items when the image is a DICOM
folder, as in 3D-IRCADb; ``native.class_file_suffix`` overrides). Per-class files and DICOM masks hold
``native.mask_value`` (default 1 in NIfTI, 255 in DICOM) on a zero background.

Orientation: ``native.axcodes`` (default ``RAS`` for NIfTI, ``LPS`` for DICOM) is applied with nibabel's
orientation tools, flipping/permuting the array AND the affine so every voxel keeps its world position.
For a DICOM series the three letters are (column direction, row direction, direction of rising file
name); the grid reported in :class:`NativeCase` is the one ``read_dicom_series`` returns: (column, row,
slice sorted by position along the normal row x column).

Example:
    >>> import tempfile
    >>> from harmonize.phantoms import make_phantom
    >>> from harmonize.protocols import get_protocol
    >>> case = write_native(make_phantom(1), get_protocol("kits23"), Path(tempfile.mkdtemp()), "case_00001")
    >>> case.image.name, case.axcodes, list(case.expected)
    ('imaging.nii.gz', ('I', 'P', 'L'), ['kidney_right', 'kidney_left', 'kidney_tumor', 'kidney_cyst'])
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from harmonize.phantoms.anatomy import Phantom
from harmonize.protocols import Protocol
from harmonize.taxonomy import PAIRS, class_by_name, expand_target

CORRUPTIONS = ("truncate", "shape_mismatch", "affine_mismatch", "unknown_value", "nan", "empty_label")
_RESCALE_INTERCEPT = -1024
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class NativeCase:
    """What :func:`write_native` wrote, and what a correct harmonizer must recover from it.

    Args:
        protocol_id: the source id.
        case: the case id put into ``{case}``.
        root: the dataset root the paths are relative to.
        fields: the value of every template placeholder (``case`` included).
        image: the image file (NIfTI) or DICOM series folder.
        label: the label path of the layout: the label map, the per-class folder or the PNG folder.
        image_files: every image file written (one, or one per DICOM slice).
        label_files: every label file written.
        class_files: per_class_files only: stem -> its file (or DICOM folder).
        affine: (4, 4) voxel -> RAS+ mm of the image grid as a reader returns it.
        axcodes: direction codes of that grid.
        expected: every class the protocol annotates (that the written stems cover) -> bool mask on
            that grid (empty when absent): the truth restricted to annotated classes, merged pairs
            resolved to their left/right truth.
            Voxels the native format cannot express (two annotated classes no single value covers)
            are left out and counted in ``unrepresented``; an ``empty_label`` case expects nothing.
        unrepresented: class -> truth voxels missing from ``expected`` for that reason.
        corrupt: the fault injected, or ``None``.
        unknown_value: the value injected by ``corrupt="unknown_value"``.
    """

    protocol_id: str
    case: str
    root: Path
    fields: dict[str, str]
    image: Path
    label: Path
    image_files: tuple[Path, ...]
    label_files: tuple[Path, ...]
    affine: np.ndarray
    axcodes: tuple[str, str, str]
    expected: dict[str, np.ndarray]
    unrepresented: dict[str, int] = field(default_factory=dict)
    class_files: dict[str, Path] = field(default_factory=dict)
    corrupt: str | None = None
    unknown_value: int | None = None


# --- mapping truth -> native values -------------------------------------------------------------------


def _depth(name: str) -> int:
    parents = class_by_name(name).parents
    return 1 + max(_depth(p) for p in parents) if parents else 0


def _target_mask(masks: dict[str, np.ndarray], target: str) -> np.ndarray | None:
    """Voxels where ``target`` (a class, or a pair: either side) is present; None when nowhere."""
    present = [masks[c] for c in expand_target(target) if c in masks]
    if not present:
        return None
    out = present[0].copy()
    for m in present[1:]:
        out |= m
    return out


def _match(masks: dict[str, np.ndarray], targets: tuple[str, ...]) -> np.ndarray | None:
    """Voxels where every target is present; None when that is nowhere."""
    out: np.ndarray | None = None
    for t in targets:
        m = _target_mask(masks, t)
        if m is None:
            return None
        out = m if out is None else out & m
    return out if out is not None and out.any() else None


def _specificity(value: int, targets: tuple[str, ...]) -> tuple[int, int, int]:
    deepest = max(_depth(c) for t in targets for c in expand_target(t))
    return (len(targets), deepest, -value)


def native_label_map(
    masks: dict[str, np.ndarray], labels: dict[int, tuple[str, ...]], shape: tuple[int, ...]
) -> np.ndarray:
    """Invert a protocol's ``[labels]``: the most specific matching native value per voxel.

    Args:
        masks: universal class -> bool array of ``shape`` (truth; classes absent are missing keys).
        labels: native value -> targets, as in ``Protocol.labels``.
        shape: the array shape.

    Returns:
        (shape) int64 array of native values, 0 where no value matches.
    """
    out = np.zeros(shape, dtype=np.int64)
    for value, targets in sorted(labels.items(), key=lambda kv: _specificity(*kv)):
        hit = _match(masks, targets)
        if hit is not None:
            out[hit] = value  # ascending specificity: the most specific match is painted last
    return out


def _expected_from(
    hits: list[tuple[np.ndarray, tuple[str, ...]]],
    masks: dict[str, np.ndarray],
    annotated: tuple[str, ...],
    shape: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """Classes recovered from (voxels, targets) pairs, pair targets resolved by the truth's side."""
    expected = {c: np.zeros(shape, dtype=bool) for c in annotated}
    for where, targets in hits:
        for t in targets:
            for c in expand_target(t):
                if c in expected and c in masks:
                    expected[c] |= where & masks[c] if t in PAIRS else where
    return expected


# --- per-class files ----------------------------------------------------------------------------------


def _class_file_masks(
    masks: dict[str, np.ndarray], files: dict[str, tuple[str, ...]], shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """stem -> bool mask; stems sharing the same targets split their mask into slabs along axis 2."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for stem, targets in files.items():
        groups.setdefault(tuple(sorted(targets)), []).append(stem)
    out: dict[str, np.ndarray] = {}
    for targets, stems in groups.items():
        hit = _match(masks, targets)
        if hit is None:
            hit = np.zeros(shape, dtype=bool)
        if len(stems) == 1:
            out[stems[0]] = hit
            continue
        # Equal voxel counts per part, cut between slices along the third array axis.
        per_slice = np.cumsum(hit.sum(axis=(0, 1)))
        total = int(per_slice[-1]) if per_slice.size else 0
        bounds = (
            [0]
            + [int(np.searchsorted(per_slice, total * p / len(stems))) + 1 for p in range(1, len(stems))]
            + [shape[2]]
        )
        for n, stem in enumerate(stems):
            part = np.zeros(shape, dtype=bool)
            part[:, :, bounds[n] : bounds[n + 1]] = hit[:, :, bounds[n] : bounds[n + 1]]
            out[stem] = part
    return out


# --- orientation and files ----------------------------------------------------------------------------


def reorient(array: np.ndarray, affine: np.ndarray, codes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute ``array`` to axcodes ``codes`` and return it with the affine that keeps world positions.

    Args:
        array: 3D array on the grid of ``affine``.
        affine: (4, 4) voxel -> RAS+ mm.
        codes: target direction codes, e.g. ``('L', 'P', 'S')``.

    Returns:
        (C-contiguous array, (4, 4) affine) with ``nib.aff2axcodes(affine) == codes``.
    """
    start = nio.io_orientation(affine)
    transform = nio.ornt_transform(start, nio.axcodes2ornt(tuple(codes)))
    out = np.ascontiguousarray(nio.apply_orientation(array, transform))
    return out, affine @ nio.inv_ornt_aff(transform, array.shape)


def _is_nifti(path: str) -> bool:
    return path.endswith(_NIFTI_SUFFIXES)


def _is_dicom_folder(path: str) -> bool:
    return not re.search(r"\.[A-Za-z][A-Za-z0-9]*(\.gz)?$", Path(path).name)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype: str) -> None:
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _dicom_codes(codes: tuple[str, ...]) -> tuple[tuple[str, str, str], bool]:
    """The position-sorted grid codes of a DICOM series written with ``codes``, and whether its file
    names run against the slice normal (column x row direction, as ``read_dicom_series`` sorts)."""
    ornt = nio.axcodes2ornt(tuple(codes))
    r, c = np.zeros(3), np.zeros(3)
    r[int(ornt[0, 0])] = ornt[0, 1]
    c[int(ornt[1, 0])] = ornt[1, 1]
    normal = np.cross(r, c)  # the LPS flip of x and y leaves the cross product's direction unchanged
    axis = int(np.argmax(np.abs(normal)))
    third = str(nio.ornt2axcodes([[axis, np.sign(normal[axis])]])[0])
    return (codes[0], codes[1], third), third != codes[2]


def _uid(parts: list[str]) -> str:
    """A deterministic, non-identifying ``2.25.<integer>`` UID (UUID-derived form, PS3.5 B.2).

    The integer always has 38 digits, so every UID has the same length (the fast writer patches them)."""
    digest = int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:16], "big")
    return f"2.25.{10**37 + digest % (9 * 10**37)}"


def _ds(values: np.ndarray) -> str:
    """Fixed-width decimal strings (15 characters each) so a header can be patched in place."""
    return "\\".join(f"{float(v):+015.6f}" for v in values)


def _value_span(header: bytes, tag: tuple[int, int], vr: str) -> slice:
    """Byte range of an explicit-VR little-endian element's value (short-length VRs only)."""
    key = struct.pack("<HH", *tag) + vr.encode()
    at = header.index(key)
    length = struct.unpack("<H", header[at + 6 : at + 8])[0]
    return slice(at + 8, at + 8 + length)


def _write_dicom_series(
    folder: Path, array: np.ndarray, affine: np.ndarray, *, reverse_files: bool, uid_seed: str, is_mask: bool
) -> list[Path]:
    """One CT slice per file; ``array`` is (column, row, slice) on ``affine``; returns the files by name.

    pydicom writes the first slice; the others copy its header with the per-slice values (instance
    number, position, SOP instance UID) patched in place, which is ~100x faster than a full write per
    slice and yields byte-identical headers apart from those values.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = array.shape[2]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step)))
    iop = [*(col_step / spacing[1]), *(row_step / spacing[0])]
    slice_mm = float(np.linalg.norm(lps[:3, 2]))
    intercept = 0 if is_mask else _RESCALE_INTERCEPT

    def position(k: int) -> np.ndarray:
        return lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]

    def sop(k: int) -> str:
        return _uid([uid_seed, folder.name, str(k)])

    def pixels(k: int) -> bytes:
        values = np.ascontiguousarray(array[:, :, k].T).astype(np.int32) - intercept
        return np.clip(values, 0, 65535).astype("<u2").tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop(0))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop(0)
    ds.StudyInstanceUID = _uid([uid_seed, "study"])
    ds.SeriesInstanceUID = _uid([uid_seed, folder.name, "series"])
    ds.FrameOfReferenceUID = _uid([uid_seed, "frame"])
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM"
    ds.InstanceNumber = "999999"
    ds.ImagePositionPatient = _ds(position(0)).split("\\")
    ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
    ds.PixelSpacing = [round(v, 4) for v in spacing]
    ds.SliceThickness = round(slice_mm, 4)
    ds.SpacingBetweenSlices = round(slice_mm, 4)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, intercept, "HU"
    ds.Rows, ds.Columns = array.shape[1], array.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels(0)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    written = buffer.getvalue()
    n_pixel = array.shape[0] * array.shape[1] * 2
    header = written[: len(written) - n_pixel]
    spans = {
        "meta_uid": _value_span(header, (0x0002, 0x0003), "UI"),
        "uid": _value_span(header, (0x0008, 0x0018), "UI"),
        "number": _value_span(header, (0x0020, 0x0013), "IS"),
        "position": _value_span(header, (0x0020, 0x0032), "DS"),
    }
    files = []
    for rank in range(n):
        k = n - 1 - rank if reverse_files else rank
        patched = bytearray(header)
        values = {
            "meta_uid": sop(k).encode(),
            "uid": sop(k).encode(),
            "number": str(rank + 1).encode(),
            "position": _ds(position(k)).encode(),
        }
        for key, span in spans.items():
            width = span.stop - span.start
            pad = b"\0" if key.endswith("uid") else b" "
            assert len(values[key]) <= width, key
            patched[span] = values[key].ljust(width, pad)
        path = folder / f"slice_{rank:04d}.dcm"
        path.write_bytes(bytes(patched) + pixels(k))
        files.append(path)
    return files


def _write_pngs(folder: Path, array: np.ndarray, *, reverse_files: bool) -> list[Path]:
    """One 8-bit PNG per slice of a (column, row, slice) array, file ``i`` = DICOM file ``i``."""
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"PNG masks hold 0..255; native values span {array.min()}..{array.max()}")
    folder.mkdir(parents=True, exist_ok=True)
    n = array.shape[2]
    files = []
    for rank in range(n):
        k = n - 1 - rank if reverse_files else rank
        path = folder / f"mask_{rank:04d}.png"
        Image.fromarray(np.ascontiguousarray(array[:, :, k].T).astype(np.uint8), mode="L").save(path)
        files.append(path)
    return files


def _write_volume(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray,
    dtype: str,
    *,
    codes_dicom: bool,
    reverse_files: bool,
    uid_seed: str,
    is_mask: bool,
) -> list[Path]:
    """NIfTI or DICOM folder, chosen by the path's ending."""
    if _is_nifti(path.name):
        _save_nifti(path, array, affine, dtype)
        return [path]
    if codes_dicom:
        return _write_dicom_series(
            path, array, affine, reverse_files=reverse_files, uid_seed=uid_seed, is_mask=is_mask
        )
    raise ValueError(f"{path}: cannot write this format (NIfTI .nii/.nii.gz or a DICOM folder)")


# --- the writer ---------------------------------------------------------------------------------------


def _fill(template: str, fields: dict[str, str]) -> str:
    return template.format(**fields)


def _placeholders(*templates: str) -> list[str]:
    return sorted({m for t in templates for m in re.findall(r"\{([a-z_]+)\}", t)})


def write_native(phantom: Phantom, protocol: Protocol, root: Path, case: str, **opts: Any) -> NativeCase:
    """Write ``phantom`` as one case of ``protocol``'s source under ``root``.

    Args:
        phantom: the phantom (RAS+ array order).
        protocol: the source protocol; its layout, labels/files and ``[native]`` table drive everything.
        root: dataset root (created when missing).
        case: the case id for ``{case}``.
        **opts: ``template`` (int, default 0): which layout template pair; ``fields`` (dict): values for
            placeholders other than ``{case}`` (default: the placeholder's own name); ``image``
            (ndarray, phantom shape, RAS order): written instead of the CT; ``corrupt``: one of
            ``CORRUPTIONS`` (``truncate`` cuts the first label file in half, ``shape_mismatch`` drops
            the label's last slice, ``affine_mismatch`` shifts the label 2 voxels along axis 0,
            ``unknown_value`` writes a value the protocol does not list into a 2x2x2 corner block,
            ``nan`` writes a float32 image with NaN voxels, ``empty_label`` writes all-zero labels);
            ``stems`` (per_class_files only): write just these stems of ``[files]`` (a patient with only
            some structures, as in 3D-IRCADb); ``expected`` then holds only the classes they cover.

    Returns:
        The :class:`NativeCase` (paths, grid, expected masks).

    Raises:
        ValueError: unknown option or corruption, a corruption the format cannot carry (NaN or an affine
            shift in DICOM/PNG), a native value beyond the label dtype.
    """
    unknown = set(opts) - {"template", "fields", "image", "corrupt", "stems"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    corrupt = opts.get("corrupt")
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ValueError(f"corrupt={corrupt!r}; choose one of {CORRUPTIONS}")
    layout = protocol.layout
    t = int(opts.get("template", 0))
    image_tpl, label_tpl = layout.images[t], layout.labels[t]
    fields = {name: name for name in _placeholders(image_tpl, label_tpl)}
    fields.update(opts.get("fields", {}))
    fields["case"] = case
    root = Path(root)
    image_path = root / _fill(image_tpl, fields)
    label_path = root / _fill(label_tpl, fields)

    native = protocol.native
    image_is_dicom = _is_dicom_folder(image_tpl)
    codes = tuple(str(native.get("axcodes", "LPS" if image_is_dicom else "RAS")).upper())
    reverse_files = False
    if image_is_dicom:
        grid_codes, reverse_files = _dicom_codes(codes)
    else:
        grid_codes = codes  # type: ignore[assignment]
    ras_affine = phantom.ct.affine
    shape = phantom.ct.shape

    # Native values / stems on the RAS grid, and the expected classes they carry.
    masks = phantom.masks
    annotated = protocol.annotated
    hits: list[tuple[np.ndarray, tuple[str, ...]]] = []
    if layout.kind == "per_class_files":
        chosen = list(opts.get("stems") or protocol.files)
        bad = [s for s in chosen if s not in protocol.files]
        if bad:
            raise ValueError(f"stems= {bad} are not in the protocol's [files]")
        files = {s: protocol.files[s] for s in chosen}
        stem_masks = _class_file_masks(masks, files, shape)
        hits = [(stem_masks[s], files[s]) for s in files]
        covered = {c for targets in files.values() for t in targets for c in expand_target(t)}
        annotated = tuple(c for c in annotated if c in covered)
        label_arrays = {s: m for s, m in stem_masks.items()}
    else:
        value_map = native_label_map(masks, protocol.labels, shape)
        hits = [(value_map == v, targets) for v, targets in protocol.labels.items()]
        label_arrays = {"": value_map}
    expected = _expected_from(hits, masks, annotated, shape)
    unrepresented = {c: int(masks[c].sum() - expected[c].sum()) for c in annotated if c in masks}

    image_ras = opts.get("image")
    image_ras = phantom.ct.array if image_ras is None else np.asarray(image_ras)
    if image_ras.shape != shape:
        raise ValueError(f"image= has shape {image_ras.shape}, the phantom {shape}")
    image, affine = reorient(image_ras, ras_affine, grid_codes)
    label_arrays = {k: reorient(a, ras_affine, grid_codes)[0] for k, a in label_arrays.items()}
    per_class = layout.kind == "per_class_files"
    class_is_dicom = per_class and _class_items_are_dicom(native, image_is_dicom)
    mask_value = int(native.get("mask_value", 255 if class_is_dicom else 1))
    if per_class:
        label_arrays = {k: a.astype(np.int64) * mask_value for k, a in label_arrays.items()}
    expected = {c: reorient(m, ras_affine, grid_codes)[0] for c, m in expected.items()}

    image_dtype = str(native.get("image_dtype", "int16"))
    label_dtype = str(native.get("label_dtype", "uint8"))
    label_affine = affine.copy()
    unknown_value = None

    if corrupt == "nan":
        if image_is_dicom:
            raise ValueError("corrupt='nan' needs a float image; DICOM pixel data are integers")
        image = image.astype(np.float32)
        image[:3, :3, :3] = np.nan
        image_dtype = "float32"
    if corrupt == "shape_mismatch":
        label_arrays = {k: a[:, :, :-1] for k, a in label_arrays.items()}
    if corrupt == "affine_mismatch":
        if layout.kind == "dicom_png":
            raise ValueError("corrupt='affine_mismatch' cannot be expressed in PNG masks (no geometry)")
        label_affine = affine.copy()
        label_affine[:3, 3] += 2.0 * affine[:3, 0]
    if corrupt == "empty_label":
        label_arrays = {k: np.zeros_like(a) for k, a in label_arrays.items()}
        expected = {c: np.zeros_like(m) for c, m in expected.items()}
        unrepresented = {}
    if corrupt == "unknown_value":
        known = set(protocol.labels) if not per_class else {mask_value}
        unknown_value = next(v for v in range(1, 256) if v not in known)
        for a in label_arrays.values():
            a[:2, :2, :2] = unknown_value

    uid_seed = f"phantom:{protocol.id}:{case}:{phantom.seed}"
    image_files = _write_volume(
        image_path,
        image,
        affine,
        image_dtype,
        codes_dicom=image_is_dicom,
        reverse_files=reverse_files,
        uid_seed=uid_seed,
        is_mask=False,
    )
    label_files: list[Path] = []
    class_files: dict[str, Path] = {}
    if layout.kind == "paired":
        value_map = label_arrays[""]
        _check_dtype(value_map, label_dtype)
        label_files = _write_volume(
            label_path,
            value_map,
            label_affine,
            label_dtype,
            codes_dicom=_is_dicom_folder(label_tpl),
            reverse_files=reverse_files,
            uid_seed=uid_seed,
            is_mask=True,
        )
    elif layout.kind == "dicom_png":
        label_files = _write_pngs(label_path, label_arrays[""], reverse_files=reverse_files)
    else:
        suffix = str(native.get("class_file_suffix", "" if class_is_dicom else ".nii.gz"))
        for stem, m in label_arrays.items():
            path = label_path / f"{stem}{suffix}"
            _check_dtype(m, label_dtype)
            written = _write_volume(
                path,
                m,
                label_affine,
                label_dtype,
                codes_dicom=class_is_dicom,
                reverse_files=reverse_files,
                uid_seed=uid_seed,
                is_mask=True,
            )
            class_files[stem] = path
            label_files.extend(written)

    if corrupt == "truncate":
        first = label_files[0]
        data = first.read_bytes()
        first.write_bytes(data[: len(data) // 2])

    return NativeCase(
        protocol_id=protocol.id,
        case=case,
        root=root,
        fields=fields,
        image=image_path,
        label=label_path,
        image_files=tuple(image_files),
        label_files=tuple(label_files),
        affine=affine,
        axcodes=tuple(grid_codes),  # type: ignore[arg-type]
        expected=expected,
        unrepresented=unrepresented,
        class_files=class_files,
        corrupt=corrupt,
        unknown_value=unknown_value,
    )


def _class_items_are_dicom(native: dict[str, Any], image_is_dicom: bool) -> bool:
    suffix = native.get("class_file_suffix")
    if suffix is None:
        return image_is_dicom
    return not str(suffix)


def _check_dtype(values: np.ndarray, dtype: str) -> None:
    if np.issubdtype(np.dtype(dtype), np.integer) and values.size:
        info = np.iinfo(np.dtype(dtype))
        if values.min() < info.min or values.max() > info.max:
            raise ValueError(f"native values {values.min()}..{values.max()} do not fit label dtype {dtype}")
