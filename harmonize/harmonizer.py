"""Native labels -> per-class binary masks of the universal taxonomy, with coverage and statistics.

The harmonizer is pure: volumes in, :class:`HarmonizedCase` out. Reading files is
:func:`harmonize_case`'s only I/O; storage is someone else's job.

Coverage states, per scan x universal class (the three-way state partial-label training needs):

* ``annotated_present``: the source annotates the class and it is drawn in this scan;
* ``annotated_absent``: the source annotates the class and it is not there (no tumour, a nephrectomy);
* ``not_annotated``: the source does not annotate the class; nothing is known.

Example:
    >>> import numpy as np
    >>> from harmonize.protocols import get_protocol
    >>> from harmonize.volume import Volume
    >>> lab = np.zeros((40, 8, 8), np.uint8)
    >>> lab[2:8, 2:6, 2:6] = 1; lab[30:36, 2:6, 2:6] = 1; lab[3, 3, 3] = 2
    >>> case = harmonize_label_map(Volume(lab, np.eye(4)), get_protocol("kits23"), case_id="c1")
    >>> case.coverage["kidney_left"], case.coverage["kidney_tumor"], case.coverage["kidney_cyst"]
    ('annotated_present', 'annotated_present', 'annotated_absent')
    >>> case.masks["kidney_left"].offset[0], case.masks["kidney_right"].offset[0]
    (2, 30)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.geometry import GRID_TOLERANCE_MM, bbox_slices, grid_difference_mm, same_grid
from harmonize.laterality import (
    SplitDecision,
    estimate_midline_x,
    field_of_view_center_x,
    split_left_right,
)
from harmonize.layout import CaseFiles
from harmonize.masks import CroppedMask, crop_affine
from harmonize.protocols import Protocol
from harmonize.stats import ClassStats, class_stats
from harmonize.taxonomy import CLASSES, PAIRS
from harmonize.volume import Volume

ANNOTATED_PRESENT = "annotated_present"
ANNOTATED_ABSENT = "annotated_absent"
NOT_ANNOTATED = "not_annotated"
COVERAGE_STATES = (ANNOTATED_PRESENT, ANNOTATED_ABSENT, NOT_ANNOTATED)


@dataclass
class HarmonizedCase:
    """One scan's labels in the universal taxonomy.

    Args:
        source: source id.
        case_id: case id within the source.
        shape: (i, j, k) shape of the image grid all masks live on.
        affine: (4, 4) voxel -> RAS+ mm.
        masks: class name -> :class:`CroppedMask`, for every ``annotated_present`` class.
        coverage: all 32 class names -> coverage state.
        stats: class name -> :class:`ClassStats`, for every ``annotated_present`` class.
        splits: one decision per component of every merged pair that was split.
        midline_x_mm: the body midline used for the split (RAS+ x, mm), ``None`` if nothing was split.
        midline_method: ``body`` (from the CT), ``labels`` (centre of the labelled region) or ``fov``.
        native_voxels: native label value (or file stem) -> voxel count, for the record.
        notes: anything a reviewer should know (classes missing from a per-class folder, ...).
    """

    source: str
    case_id: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    masks: dict[str, CroppedMask]
    coverage: dict[str, str]
    stats: dict[str, ClassStats]
    splits: list[SplitDecision] = field(default_factory=list)
    midline_x_mm: float | None = None
    midline_method: str | None = None
    native_voxels: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_same_grid(image: Volume, label: Volume, label_path: str | Path) -> None:
    """Raise :class:`HarmonizeError` naming ``label_path`` unless label and image share one voxel grid."""
    if image.shape != label.shape:
        raise HarmonizeError(label_path, f"label shape {label.shape} differs from image shape {image.shape}")
    diff = grid_difference_mm(image.affine, label.affine)
    if diff > GRID_TOLERANCE_MM:
        raise HarmonizeError(
            label_path,
            f"label affine differs from the image affine by up to {diff:.4g} mm "
            f"(tolerance {GRID_TOLERANCE_MM} mm): the label is not on the image grid",
        )


def _midline(
    image: Volume | None, masks: Mapping[str, CroppedMask], affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[float, str]:
    if image is not None:
        return estimate_midline_x(image), "body"
    boxes = [m for m in masks.values() if not m.is_empty]
    if boxes:
        lo = np.min([m.offset for m in boxes], axis=0)
        hi = np.max([np.add(m.offset, m.data.shape) - 1 for m in boxes], axis=0)
        # The x-extent of the labelled region: take the world x of all 8 corners of its box.
        corners = np.array(
            [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
        )
        x = corners @ affine[0, :3] + affine[0, 3]
        return float((x.min() + x.max()) / 2), "labels"
    return field_of_view_center_x(affine, shape), "fov"


def _finish(
    protocol: Protocol,
    case_id: str,
    image: Volume | None,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    target_masks: dict[str, CroppedMask],
    native_voxels: dict[str, int],
    not_annotated_here: set[str],
    notes: list[str],
) -> HarmonizedCase:
    """Split merged pairs, then derive coverage and statistics (shared by every layout kind)."""
    masks: dict[str, CroppedMask] = {}
    splits: list[SplitDecision] = []
    midline: tuple[float, str] | None = None
    for target, cm in target_masks.items():
        if target not in PAIRS:
            masks[target] = cm.union(masks.get(target))
            continue
        left_name, right_name = PAIRS[target]
        if cm.is_empty:
            continue
        if midline is None:
            midline = _midline(image, target_masks, affine, shape)
        left, right, decisions = split_left_right(
            cm.data, crop_affine(affine, cm.offset), midline_x_mm=midline[0], pair=target
        )
        splits.extend(decisions)
        masks[left_name] = CroppedMask.from_full(left, cm.offset, shape).union(masks.get(left_name))
        masks[right_name] = CroppedMask.from_full(right, cm.offset, shape).union(masks.get(right_name))

    annotated = set(protocol.annotated) - not_annotated_here
    coverage: dict[str, str] = {}
    stats: dict[str, ClassStats] = {}
    present: dict[str, CroppedMask] = {}
    for c in CLASSES:
        found = masks.get(c.name)
        if c.name not in annotated:
            coverage[c.name] = NOT_ANNOTATED
        elif found is None or found.is_empty:
            coverage[c.name] = ANNOTATED_ABSENT
        else:
            cm = found
            coverage[c.name] = ANNOTATED_PRESENT
            present[c.name] = cm
            hu = image.array[cm.box] if image is not None else None
            stats[c.name] = class_stats(c.name, cm.data, affine, hu, offset=cm.offset)
    return HarmonizedCase(
        source=protocol.id,
        case_id=case_id,
        shape=shape,
        affine=affine,
        masks=present,
        coverage=coverage,
        stats=stats,
        splits=splits,
        midline_x_mm=midline[0] if midline else None,
        midline_method=midline[1] if midline else None,
        native_voxels=native_voxels,
        notes=notes,
    )


def harmonize_label_map(
    label: Volume,
    protocol: Protocol,
    *,
    case_id: str,
    image: Volume | None = None,
    label_path: str | Path = "<label>",
) -> HarmonizedCase:
    """Harmonize one native label map (``paired`` and ``dicom_png`` layouts).

    Args:
        label: (i, j, k) integer label map; must be on ``image``'s grid when an image is given.
        protocol: the source's protocol.
        case_id: case id, recorded in the result.
        image: the CT (HU) for statistics and the body midline, or ``None``.
        label_path: the label's file, named in errors.

    Raises:
        HarmonizeError: grid mismatch, negative or unknown label values, an empty label map.
    """
    if image is not None:
        check_same_grid(image, label, label_path)
    return _finish_label_map(_label_targets(label, protocol, label_path), protocol, case_id, image)


@dataclass
class _LabelTargets:
    """What a label map gives on its own (no image needed): per universal target its cropped mask."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    target_masks: dict[str, CroppedMask]
    native: dict[str, int]
    notes: list[str]


def _finish_label_map(
    targets: _LabelTargets, protocol: Protocol, case_id: str, image: Volume | None
) -> HarmonizedCase:
    return _finish(
        protocol,
        case_id,
        image,
        targets.shape,
        targets.affine,
        targets.target_masks,
        targets.native,
        set(),
        targets.notes,
    )


#: Largest label value for which :func:`_value_masks` compares value by value instead of counting all.
PER_VALUE_MAX = 32


def _value_masks(fg: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """The non-zero values of a label crop with their voxel counts, and (for small label maps) each
    value's bool mask.

    Up to :data:`PER_VALUE_MAX`, one ``==`` pass per value (its mask is kept: a target of one value reuses
    it) is cheaper than ``np.bincount``, which first casts every voxel to a 64-bit index; above it,
    ``bincount`` counts and no mask is kept.

    Returns:
        ``(value -> mask, value -> voxels)`` over the values present (never 0).
    """
    top = int(fg.max()) if fg.size else 0
    if top <= PER_VALUE_MAX:
        masks: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for v in range(1, top + 1):
            m = fg == v
            n = int(np.count_nonzero(m))
            if n:
                masks[v], counts[v] = m, n
        return masks, counts
    # order="K" keeps NIfTI's Fortran order: a C-order ravel would copy the whole crop first.
    hist = np.bincount(fg.ravel(order="K"))
    return {}, {int(v): int(hist[v]) for v in np.flatnonzero(hist) if v != 0}


def _label_targets(label: Volume, protocol: Protocol, label_path: str | Path) -> _LabelTargets:
    """The label map's checks and per-target masks (the part of :func:`harmonize_label_map` that needs
    no image, so it can run while the image still decodes).

    Raises:
        HarmonizeError: negative or unknown label values, an empty label map, a non-integer dtype.
    """
    lab = label.array
    if not np.issubdtype(lab.dtype, np.integer):
        raise HarmonizeError(label_path, f"label map has non-integer dtype {lab.dtype}")
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise HarmonizeError(label_path, "label map has negative values")
    # Everything below works inside the labelled region's bounding box: outside it every voxel is 0.
    fg_box = bbox_slices(lab != 0)
    if fg_box is None:
        raise HarmonizeError(label_path, "label map is empty (every voxel is background)")
    fg = lab[fg_box]
    value_masks, counts = _value_masks(fg)
    values = sorted(counts)
    ignored = [v for v in values if v not in protocol.labels]
    unknown = [v for v in ignored if str(v) not in protocol.unmapped]
    if unknown and protocol.strict_values:
        known = ", ".join(str(v) for v in sorted({*protocol.labels, *map(int, protocol.unmapped)}))
        raise HarmonizeError(
            label_path,
            f"label values {unknown} are not in the {protocol.id} protocol (known: 0, {known})",
        )
    shape = label.shape
    fg_origin = tuple(s.start for s in fg_box)
    by_target: dict[str, list[int]] = {}
    for v in values:
        for t in protocol.labels.get(v, ()):
            by_target.setdefault(t, []).append(v)
    target_masks: dict[str, CroppedMask] = {}
    for target, vals in by_target.items():
        if len(vals) == 1:
            m = value_masks[vals[0]] if vals[0] in value_masks else fg == vals[0]
        else:
            m = np.isin(fg, vals)
        target_masks[target] = CroppedMask.from_full(m, fg_origin, shape)  # type: ignore[arg-type]
    notes = []
    if ignored:
        meanings = [
            f"{v} ({protocol.unmapped[str(v)]})" if str(v) in protocol.unmapped else str(v) for v in ignored
        ]
        notes.append(f"label values {', '.join(meanings)} have no universal class and were ignored")
    native = {str(v): counts[v] for v in values}
    return _LabelTargets(shape, label.affine, target_masks, native, notes)


def harmonize_class_files(
    files: Mapping[str, Volume],
    protocol: Protocol,
    *,
    case_id: str,
    image: Volume | None = None,
    paths: Mapping[str, str | Path] | None = None,
) -> HarmonizedCase:
    """Harmonize a folder of one binary file per class (``per_class_files`` layouts).

    Args:
        files: file stem -> binary label volume, for the stems of ``protocol.files`` found in the case.
            A stem of the protocol that is missing here makes its classes ``not_annotated`` for this
            case (and is noted), unless another present stem also draws them.
        protocol: the source's protocol.
        case_id: case id, recorded in the result.
        image: the CT, or ``None``.
        paths: stem -> file path, named in errors.
    """
    paths = paths or {}
    shape: tuple[int, int, int] | None = image.shape if image is not None else None
    affine = image.affine if image is not None else None
    target_masks: dict[str, CroppedMask] = {}
    native: dict[str, int] = {}
    drawn: set[str] = set()
    for stem, vol in files.items():
        where = paths.get(stem, stem)
        if stem not in protocol.files:
            continue
        if image is not None:
            check_same_grid(image, vol, where)
        elif shape is None:
            shape, affine = vol.shape, vol.affine
        elif affine is None or not same_grid(vol.affine, affine, vol.shape, shape):
            raise HarmonizeError(where, "per-class files of this case are not on one voxel grid")
        arr = vol.array
        if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
            raise HarmonizeError(where, f"per-class mask has non-integer dtype {arr.dtype}")
        fg = arr != 0
        native[stem] = int(np.count_nonzero(fg))
        cm = CroppedMask.from_full(fg)
        for t in protocol.files[stem]:
            drawn.add(t)
            target_masks[t] = cm.union(target_masks.get(t))
    if shape is None or affine is None:
        raise HarmonizeError(paths.get("", case_id), "no per-class file of the protocol was found")
    missing_stems = sorted(set(protocol.files) - set(files))
    not_annotated_here: set[str] = set()
    if missing_stems:
        for stem in missing_stems:
            for t in protocol.files[stem]:
                if t not in drawn:
                    not_annotated_here.update(PAIRS.get(t, (t,)))
    notes = [f"per-class files missing: {', '.join(missing_stems)}"] if missing_stems else []
    return _finish(protocol, case_id, image, shape, affine, target_masks, native, not_annotated_here, notes)


def harmonize_case(
    protocol: Protocol, case: CaseFiles, *, on_image: Callable[[Volume], None] | None = None
) -> tuple[Volume, HarmonizedCase]:
    """Read one case from disk and harmonize it.

    Returns ``(image, harmonized)``; the image is returned so the caller need not read it twice.
    ``on_image`` is called with the image once the files are read, before harmonizing: work on the
    image (an ingest's content hash) can run in another thread meanwhile.

    Raises:
        HarmonizeError: any reading or harmonizing problem, naming the file.
    """
    from harmonize.readers import read_dicom_series, read_png_stack, read_volumes

    kind = protocol.layout.kind
    label_missing = not case.label.exists() and not case.label.is_symlink()  # a broken link: read, named
    if kind == "dicom_png":
        image = read_dicom_series(case.image)
        if label_missing:
            raise HarmonizeError(case.label, "label file is missing for this image")
        label = read_png_stack(case.label, reference=image)
        if on_image is not None:
            on_image(image)
        return image, harmonize_label_map(
            label, protocol, case_id=case.case_id, image=image, label_path=case.label
        )
    if kind == "paired" and not label_missing:
        return _harmonize_paired(protocol, case, on_image)
    # image and label files decode at the same time (read_volumes); the image's error comes first
    paths: dict[str, str | Path] = {}
    if kind != "paired" and not label_missing:
        for stem in protocol.files:
            path = _find_class_file(case.label, stem)
            if path is not None:
                paths[stem] = path
    labels: list[str | Path] = (
        [] if label_missing else [case.label] if kind == "paired" else list(paths.values())
    )
    image, *volumes = read_volumes([(case.image, "image"), *((p, "label") for p in labels)])
    if label_missing:
        raise HarmonizeError(case.label, "label file is missing for this image")
    if on_image is not None:
        on_image(image)
    if kind == "paired":
        return image, harmonize_label_map(
            volumes[0], protocol, case_id=case.case_id, image=image, label_path=case.label
        )
    if not paths:
        raise HarmonizeError(case.label, "no per-class file of the protocol is in this folder")
    files = dict(zip(paths, volumes, strict=True))
    return image, harmonize_class_files(files, protocol, case_id=case.case_id, image=image, paths=paths)


def _harmonize_paired(
    protocol: Protocol, case: CaseFiles, on_image: Callable[[Volume], None] | None
) -> tuple[Volume, HarmonizedCase]:
    """:func:`harmonize_case` of an image and its label map: the label is read and turned into per-target
    masks while the image decodes in another thread (inflate releases the GIL, and so do numpy's passes
    over the label), so only the image-dependent work (split midline, statistics) follows the image.

    Errors come in the order of a sequential read and :func:`harmonize_label_map`: the image's read
    error, the label's read error, a grid mismatch, then the label map's own problems.
    """
    from harmonize.readers import read_volume

    with ThreadPoolExecutor(1) as pool:
        image_read = pool.submit(read_volume, case.image, kind="image")
        label: Volume | None = None
        targets: _LabelTargets | None = None
        label_error: HarmonizeError | None = None
        try:
            label = read_volume(case.label, kind="label")
            targets = _label_targets(label, protocol, case.label)
        except HarmonizeError as e:
            label_error = e
        image = image_read.result()
    if label is not None:
        check_same_grid(image, label, case.label)
    if label_error is not None:
        raise label_error
    assert targets is not None
    if on_image is not None:
        on_image(image)
    return image, _finish_label_map(targets, protocol, case.case_id, image)


CLASS_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", "")


def _find_class_file(folder: Path, stem: str) -> Path | None:
    for suffix in CLASS_FILE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.exists() or p.is_symlink():  # a broken link is read (and named) instead of skipped
            return p
    return None
