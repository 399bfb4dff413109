"""Corrections: a reviewer's corrected mask of one class becomes a new ``revised`` label set.

A correction is a NEW label set of origin ``revised`` (``parent_id`` = the label set it corrects) plus a
``corrected`` review row pointing at it (``result_label_set_id``). The revised set holds the corrected
class and, when the base is an ``original`` or ``revised`` set, a copy of the base's other classes (masks,
coverage, statistics), so it is a complete version. Classes of a ``pseudo`` base are NOT copied (they stay
``not_annotated`` in the revised set): a correction of one class must not promote the model's other,
unreviewed guesses above the original labels (training priority is revised > original > pseudo, per
class).

The corrected mask comes from the app's edits (:func:`keep_largest`, :func:`remove_component`,
:func:`keep_component` on ``harmonize.geometry``'s 26-connected components; :func:`brush` and eraser
with a radius in mm, :func:`fill_hole`, both over a range of slices), from any caller of :func:`correct`,
or from an edited NIfTI file (:func:`import_correction`; :func:`import_correction_upload` for the app's
uploads), e.g. the label map of :func:`workbench.review.slicer.export_case_for_slicer` edited in 3D
Slicer or ITK-SNAP. A label map gives a class with its nested classes (a tumour painted over its kidney
is kidney too: :func:`workbench.review.nesting.decode_class`), so an export imported back unchanged is
bit-identical, and such an import writes nothing (:attr:`Correction.changed` is False).

Example:
    >>> corr = correct(ws, "btcv:demo000", "liver", fixed, "Dr Ada", "trimmed")  # doctest: +SKIP
    >>> corr.label_set_id  # doctest: +SKIP
    'ls-4f1c...'
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from harmonize.errors import HarmonizeError
from harmonize.geometry import GRID_TOLERANCE_MM, grid_difference_mm, label_components, largest_component
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.masks import CroppedMask
from harmonize.stats import class_stats
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord, ReviewRecord, new_label_set_id
from storage.files import atomic_write_bytes
from storage.workspace import Workspace
from workbench.review.nesting import decode_class
from workbench.review.slicer import slicer_case_dir
from workbench.review.validation import (
    check_class,
    check_upload_name,
    label_set_row,
    scan_affine,
    scan_row,
    validate_comment,
    validate_reviewer,
)


@dataclass(frozen=True)
class Correction:
    """What :func:`correct` wrote: the ``corrected`` review row and the new ``revised`` label set.

    An import that changes nothing (:func:`import_correction` of a mask equal to the current one) writes
    neither: then ``changed`` is False, ``review_id`` is ``""`` and ``label_set_id`` is the label set that
    already holds the mask."""

    review_id: str
    label_set_id: str
    changed: bool = True


def write_revised(
    ws: Workspace,
    scan: Mapping[str, Any],
    base: Mapping[str, Any],
    class_name: str,
    mask: np.ndarray,
    state: str,
    author: str,
    note: str,
    image: np.ndarray | None,
    review: ReviewRecord,
    *,
    keep_long_tail: bool = True,
) -> str:
    """Write a revised label set: ``class_name`` = ``mask`` with ``state``; the base's other classes
    copied unless the base is pseudo. Masks first (atomic file), then one catalog transaction, which
    allocates the scan's next version and stores ``review`` (the decision that produced it) with it, so a
    kill never leaves a correction without its review row or the other way round.

    Every mask travels as a crop to its bounding box (the copied classes are decoded cut to theirs, the
    changed one is cut once): a 512 x 512 x 300 scan is never expanded or scanned whole again for the
    statistics and the encoding.

    Args:
        ws: the workspace.
        scan: the scan's catalog row.
        base: the catalog row of the label set this one revises (its parent).
        class_name: the class that changes.
        mask: its (i, j, k) bool mask on the scan's grid.
        state: its coverage state (``annotated_present`` or ``annotated_absent``).
        author: who made the change.
        note: the label set's note.
        image: the (i, j, k) CT in HU for the class's HU statistics (None: NaN).
        keep_long_tail: keep the long tail current in the write's transaction; False leaves that to the
            caller's ``ws.catalog.keep_long_tail()`` (the Review page runs it after the viewer's answer).

    Returns:
        The new label set's id (also its mask key).
    """
    i, j, k = (int(s) for s in scan["shape"])
    shape = (i, j, k)
    affine = scan_affine(scan)
    base_cov = ws.catalog.coverage(str(base["id"]))
    copy_others = base["origin"] != "pseudo"
    coverage = {n: NOT_ANNOTATED for n in class_names()}
    masks: dict[str, CroppedMask] = {}
    stats: list[dict[str, Any]] = []
    if copy_others:
        coverage.update({n: s for n, s in base_cov.items() if n != class_name})
        stored = set(ws.masks.names(str(base["mask_key"])))
        others = [n for n in class_names() if n != class_name and coverage[n] == ANNOTATED_PRESENT]
        masks.update({n: _stored_crop(ws, str(base["mask_key"]), n, shape) for n in others if n in stored})
        stats += ws.catalog.class_stats_rows(str(base["id"]), exclude=class_name)
    coverage[class_name] = state
    if state == ANNOTATED_PRESENT:
        cut = CroppedMask.from_full(mask)
        region = tuple(slice(o, o + n) for o, n in zip(cut.offset, cut.data.shape))
        hu = None if image is None else image[region]
        masks[class_name] = cut
        stats.append(class_stats(class_name, cut.data, affine, hu, offset=cut.offset).as_dict())
    ls_id = new_label_set_id()
    ws.masks.write_label_set(ls_id, masks, shape)  # type: ignore[arg-type]
    record = LabelSetRecord(
        id=ls_id,
        scan_id=str(scan["id"]),
        version=None,
        origin="revised",
        mask_key=ls_id,
        parent_id=str(base["id"]),
        author=author,
        midline_x_mm=None if pd.isna(base.get("midline_x_mm")) else float(base["midline_x_mm"]),
        notes=(note,),
    )
    try:
        ws.catalog.add_label_set(
            record,
            coverage,
            stats,
            review=dataclasses.replace(review, result_label_set_id=ls_id),
            keep_long_tail=keep_long_tail,
        )
    except BaseException:
        ws.masks.delete(ls_id)  # the catalog refused: leave no orphan mask file
        raise
    return ls_id


def _stored_crop(ws: Workspace, key: str, name: str, shape: tuple[int, int, int]) -> CroppedMask:
    """Class ``name`` of label set ``key`` as a :class:`CroppedMask`, decoded cut to its bounding box."""
    crop, box = ws.masks.read_crop(key, name)
    if box is None:
        return CroppedMask.empty(shape)
    return CroppedMask(shape, tuple(int(a) for a, _ in box), crop)  # type: ignore[arg-type]


def correct(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    new_mask: np.ndarray,
    reviewer: str,
    comment: str | None = "",
    base_label_set_id: str | None = None,
    *,
    image: np.ndarray | None = None,
    keep_long_tail: bool = True,
) -> Correction:
    """Store a corrected mask of one class as a new ``revised`` label set and a ``corrected`` review row.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.
        class_name: the corrected universal class.
        new_mask: (i, j, k) bool (or 0/1 integer) mask on the scan's grid, in file voxel order; an empty
            mask records the class as ``annotated_absent``.
        reviewer: who corrected it.
        comment: free text.
        base_label_set_id: the label set that was corrected (default: the current label set of the scan x
            class, else the scan's newest label set).
        image: the (i, j, k) CT in HU, for the HU statistics of the class (NaN without it).
        keep_long_tail: False leaves the long tail's upkeep to the caller (``ws.catalog.keep_long_tail()``
            after what cannot wait, as the Review page does).

    Returns:
        The :class:`Correction` (review id, new label set id).

    Raises:
        HarmonizeError: bad reviewer/comment, unknown scan, class or label set, or a mask of the wrong
            shape or values. Nothing is stored then.
    """
    name = validate_reviewer(ws, reviewer)
    text = validate_comment(ws, comment)
    class_name = check_class(ws, class_name)
    scan = scan_row(ws, scan_id)
    shape = tuple(int(s) for s in scan["shape"])
    mask = np.asarray(new_mask)
    if mask.shape != shape:
        raise HarmonizeError(ws.catalog.path, f"corrected mask shape {mask.shape} != scan shape {shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or (mask.size and (mask.min() < 0 or mask.max() > 1)):
            raise HarmonizeError(ws.catalog.path, "corrected mask must be bool or hold only 0 and 1")
        mask = mask.astype(bool)
    if base_label_set_id is None:
        base_label_set_id = ws.catalog.current_label_set(scan_id, class_name)
    if base_label_set_id is None:
        latest = ws.catalog.label_sets(scan_id)
        if latest.empty:
            raise HarmonizeError(ws.catalog.path, f"scan {scan_id} has no label set to correct")
        base_label_set_id = str(latest["id"].iloc[-1])
    base = label_set_row(ws, base_label_set_id, scan_id)
    state = ANNOTATED_PRESENT if mask.any() else ANNOTATED_ABSENT
    note = f"correction of {class_name} by {name} (base {base_label_set_id}, origin {base['origin']})"
    review = ReviewRecord(scan_id, class_name, base_label_set_id, "corrected", text, name)
    ls_id = write_revised(
        ws, scan, base, class_name, mask, state, name, note, image, review, keep_long_tail=keep_long_tail
    )
    return Correction(review.id, ls_id)


# ------------------------------------------------------------------------------------------ quick fixes


def remove_component(mask: np.ndarray, voxel: Sequence[int]) -> np.ndarray:
    """A copy of ``mask`` without the 26-connected component that contains ``voxel``.

    Args:
        mask: (i, j, k) bool mask.
        voxel: (i, j, k) index of a voxel of the component to remove.

    Returns:
        The (i, j, k) bool mask without that component (``mask`` itself is not changed).

    Raises:
        ValueError: ``voxel`` lies outside the volume or is not in the mask.
    """
    m = np.asarray(mask, dtype=bool)
    v = tuple(int(x) for x in voxel)
    if len(v) != m.ndim or any(x < 0 or x >= s for x, s in zip(v, m.shape)):
        raise ValueError(f"voxel {v} lies outside the volume of shape {m.shape}")
    if not m[v]:
        raise ValueError(f"voxel {v} is not in the mask: pick a voxel of the component to remove")
    labels, _ = label_components(m)
    return m & (labels != labels[v])


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component (``harmonize.geometry.largest_component``).

    Args:
        mask: (i, j, k) bool mask.

    Returns:
        A new (i, j, k) bool mask with its largest component (empty stays empty; of equal-sized
        components the first in scan order is kept).
    """
    return largest_component(mask)[0]


def keep_component(mask: np.ndarray, voxel: Sequence[int]) -> np.ndarray:
    """A copy of ``mask`` with only the 26-connected component that contains ``voxel``.

    Args:
        mask: (i, j, k) bool mask.
        voxel: (i, j, k) index of a voxel of the component to keep.

    Returns:
        The (i, j, k) bool mask of that component alone.

    Raises:
        ValueError: ``voxel`` lies outside the volume or is not in the mask.
    """
    m = np.asarray(mask, dtype=bool)
    v = _inside(m.shape, voxel)
    if not m[v]:
        raise ValueError(f"voxel {v} is not in the mask: pick a voxel of the component to keep")
    labels, _ = label_components(m)
    return np.asarray(labels == labels[v])


def _inside(shape: Sequence[int], voxel: Sequence[int]) -> tuple[int, ...]:
    """``voxel`` as a tuple of ints; ValueError when it lies outside ``shape``."""
    v = tuple(int(x) for x in voxel)
    if len(v) != len(shape) or any(x < 0 or x >= s for x, s in zip(v, shape)):
        raise ValueError(f"voxel {v} lies outside the volume of shape {tuple(shape)}")
    return v


def _slab(shape: Sequence[int], axis: int, centre: int, depth: int) -> range:
    """The slices ``centre - depth .. centre + depth`` along ``axis`` that exist in ``shape``."""
    if depth < 0:
        raise ValueError(f"slice depth {depth} is negative")
    return range(max(centre - depth, 0), min(centre + depth, int(shape[axis]) - 1) + 1)


def disc_offsets(radius_mm: float, spacing: Sequence[float], axis: int) -> np.ndarray:
    """The in-plane voxel offsets of a disc of ``radius_mm`` in the plane normal to ``axis``.

    Args:
        radius_mm: the disc's radius in mm (> 0); a radius under half a voxel is the centre voxel alone.
        spacing: (i, j, k) voxel size in mm.
        axis: the axis normal to the plane (0, 1 or 2).

    Returns:
        (n, 3) int offsets, 0 along ``axis``: every voxel whose centre lies within ``radius_mm`` of the
        disc's centre (distances in mm, so a disc on 0.8 x 5 mm voxels is round on the patient).
    """
    if not radius_mm > 0:
        raise ValueError(f"brush radius {radius_mm} mm is not positive")
    a, b = (x for x in range(3) if x != axis)
    ra, rb = int(radius_mm // spacing[a]), int(radius_mm // spacing[b])
    da, db = np.meshgrid(np.arange(-ra, ra + 1), np.arange(-rb, rb + 1), indexing="ij")
    inside = (da * spacing[a]) ** 2 + (db * spacing[b]) ** 2 <= radius_mm**2
    out = np.zeros((int(inside.sum()), 3), np.int64)
    out[:, a], out[:, b] = da[inside], db[inside]
    return out


def stroke_centres(points: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """The voxel centres of a brush stroke: ``points`` and, between consecutive ones, enough points that
    no two centres are further apart than half the radius (so a fast stroke leaves no gaps).

    Args:
        points: (n, 3) voxel indices (i, j, k) along the stroke, n >= 1.
        radius_mm: the brush radius in mm.
        spacing: (i, j, k) voxel size in mm.

    Returns:
        (m, 3) int voxel indices, m >= n, in stroke order, repeats removed.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise ValueError("a brush stroke needs at least one point")
    step = max(radius_mm / 2.0, 1e-6)
    parts = [p[:1]]
    for a, b in itertools.pairwise(p):
        n = max(1, int(np.ceil(np.linalg.norm((b - a) * np.asarray(spacing)) / step)))
        parts.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    centres = np.rint(np.concatenate(parts)).astype(np.int64)
    _, first = np.unique(centres, axis=0, return_index=True)
    return centres[np.sort(first)]


def brush(
    mask: np.ndarray,
    points: np.ndarray,
    radius_mm: float,
    spacing: Sequence[float],
    axis: int,
    *,
    erase: bool = False,
    depth: int = 0,
) -> np.ndarray:
    """Paint (or erase) a brush stroke: discs of ``radius_mm`` in the plane normal to ``axis`` along the
    stroke, on the stroke's slice and ``depth`` slices either side (a 3D-aware edit over a slice range).

    Args:
        mask: (i, j, k) bool mask.
        points: (n, 3) voxel indices of the stroke; all on one slice along ``axis`` (the first point's).
        radius_mm: brush radius in mm (:func:`disc_offsets`).
        spacing: (i, j, k) voxel size in mm.
        axis: the axis normal to the painted plane.
        erase: remove voxels instead of adding them.
        depth: slices either side of the stroke's slice that get the same stroke (0: that slice only).

    Returns:
        A new (i, j, k) bool mask (``mask`` is not changed); voxels of the disc outside the volume are
        left out.

    Raises:
        ValueError: a point outside the volume, no point, a radius <= 0 or a negative depth.
    """
    m = np.array(mask, dtype=bool)
    pts = np.asarray(points, np.int64).reshape(-1, 3)
    for p in pts:
        _inside(m.shape, p.tolist())
    centres = stroke_centres(pts, radius_mm, spacing)
    # repeats are harmless in the assignment below (no sort of the stroke's voxels needed)
    voxels = (centres[:, None, :] + disc_offsets(radius_mm, spacing, axis)[None]).reshape(-1, 3)
    keep = np.all((voxels >= 0) & (voxels < np.asarray(m.shape)), axis=1)
    voxels = voxels[keep]
    for s in _slab(m.shape, axis, int(pts[0, axis]), depth):
        voxels[:, axis] = s
        m[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = not erase
    return m


def fill_hole(mask: np.ndarray, voxel: Sequence[int], axis: int, *, depth: int = 0) -> np.ndarray:
    """Fill the hole that ``voxel`` lies in: on the slice normal to ``axis`` through ``voxel``, the
    4-connected background region containing it, when that region does not reach the slice's edge (then
    it is enclosed by the mask: a hole). With ``depth``, the same is done at the voxel's in-plane position
    on ``depth`` slices either side, on each slice where that position lies in a hole of its own.

    Args:
        mask: (i, j, k) bool mask.
        voxel: (i, j, k) index of a background voxel inside the hole.
        axis: the axis normal to the slice (0, 1 or 2).
        depth: slices either side that get filled too (0: the clicked slice only).

    Returns:
        A new (i, j, k) bool mask.

    Raises:
        ValueError: ``voxel`` outside the volume or in the mask, or its region on the clicked slice
            reaches the edge (not a hole).
    """
    m = np.array(mask, dtype=bool)
    v = _inside(m.shape, voxel)
    if m[v]:
        raise ValueError(f"voxel {v} is in the mask: click inside the hole to fill")
    for s in _slab(m.shape, axis, v[axis], depth):
        at = list(v)
        at[axis] = s
        index: list[int | slice] = [slice(None)] * 3
        index[axis] = s
        plane = m[tuple(index)]
        pos = tuple(x for a, x in enumerate(at) if a != axis)
        if plane[pos]:
            continue
        regions, _ = ndimage.label(~plane)
        region = regions == regions[pos]
        touches = region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()
        if touches:
            if s == v[axis]:
                raise ValueError(
                    f"voxel {v} is not in a hole: its background region reaches the slice's edge"
                )
            continue
        plane[region] = True
    return m


# ------------------------------------------------------------------------------- edited NIfTI files


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """Open ``path`` as NIfTI-1/2 or raise one clear HarmonizeError (checks the magic, not the suffix).

    Only the header is read: the voxels stay on disk (nibabel's lazy ``dataobj``) until
    :func:`_read_voxels`, so a header that claims a huge volume is refused from its shape before a byte of
    voxel data is decoded."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            header = f.read(348 + 4)
    except (OSError, EOFError) as e:
        raise HarmonizeError(path, f"cannot read the file: {e}") from None
    magic_ok = len(header) >= 348 and (
        header[344:348] in (b"n+1\x00", b"ni1\x00") or header[4:8] == b"n+2\x00"
    )
    if not magic_ok:
        raise HarmonizeError(path, "not a NIfTI file (no NIfTI header magic)")
    try:
        img: Any = nib.load(str(path))  # the header only; the voxels are decoded by _read_voxels
    except Exception as e:  # nibabel raises many types for broken files
        raise HarmonizeError(path, f"not a readable NIfTI file: {e}") from None
    if len(img.shape) != 3:
        raise HarmonizeError(path, f"label image must be 3D, got shape {img.shape}")
    return img  # type: ignore[return-value]


def _read_voxels(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """Decode the voxels of a NIfTI whose header was checked; a truncated or corrupt file is one error."""
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # EOFError, zlib.error, OSError, ValueError: a damaged data block
        raise HarmonizeError(path, f"not a readable NIfTI file: {e}") from None


def label_values_to_mask(
    path: str | Path,
    data: np.ndarray,
    class_name: str,
    value_map: Mapping[int, int] | None = None,
    *,
    label_map: bool = False,
) -> np.ndarray:
    """Turn an imported label image into one class's bool mask.

    Rules: with ``value_map`` (label value -> 0/1) every value in the file must be in the map. Without it,
    a file holding only 0 and 1 is a binary mask (unless ``label_map``); otherwise it is a label map in the
    convention of :func:`workbench.review.slicer.export_case_for_slicer` (value = universal class index,
    1-based): the class's own index is foreground, and so are its nested classes painted over it
    (:func:`workbench.review.nesting.decode_class`: a tumour touching its organ is part of the organ);
    other class indices are background.

    Args:
        path: the file (named in errors).
        data: its (i, j, k) label values.
        class_name: the class to extract.
        value_map: label value -> 0/1, or None for the rules above.
        label_map: the file is known to be a label map of an export (its ``labels.json`` lists it), so
            0/1 means background/spleen, not a binary mask.

    Returns:
        The (i, j, k) bool mask of the class.

    Raises:
        HarmonizeError: non-integral values, or values the rule does not cover (listed).
    """
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise HarmonizeError(path, "label values are not integers: not a label map (is it the CT?)")
        arr = arr.astype(np.int64)
    values = {int(v) for v in np.unique(arr)}
    if value_map is not None:
        mapped = {int(k): int(v) for k, v in value_map.items()}
        bad = sorted(values - set(mapped))
        if bad or any(v not in (0, 1) for v in mapped.values()):
            raise HarmonizeError(
                path, f"label values {_some(bad)} are not in the value map {mapped} (0/1 targets)"
            )
        fg = [k for k, v in mapped.items() if v == 1]
        return np.isin(arr, fg)
    if values <= {0, 1} and not label_map:
        return arr == 1
    bad = sorted(v for v in values if v != 0 and not 1 <= v <= len(class_names()))
    if bad:
        raise HarmonizeError(
            path,
            f"label values {_some(bad)} are neither 0/1 nor universal class indices 1-{len(class_names())}: "
            "not a label map of the workbench's classes (is it the CT?); pass a value map",
        )
    return decode_class(arr, class_name)


def _some(values: Sequence[int], limit: int = 8) -> str:
    """``values`` for an error line: all of a few, else the first ``limit``, the count and the range."""
    if len(values) <= limit:
        return str(list(values))
    head = ", ".join(str(v) for v in values[:limit])
    return f"[{head}, ...] ({len(values)} values, {values[0]} to {values[-1]})"


def _on_scan_grid(
    path: Path, img: nib.Nifti1Image, scan_id: str, scan: Mapping[str, Any]
) -> np.ndarray | None:
    """Check from the header alone that the file lies on the scan's voxel grid.

    A file on the same grid in another voxel order (a tool that saved it reoriented, e.g. to RAS) is
    accepted: the returned nibabel orientation transform brings its voxels into the scan's order.

    Returns:
        None when the voxel order is the scan's, else the (3, 2) orientation transform.

    Raises:
        HarmonizeError: another shape, or another grid (the largest difference in mm is named).
    """
    shape = tuple(int(s) for s in scan["shape"])
    target = scan_affine(scan)
    affine = np.asarray(img.affine)
    if tuple(img.shape) == shape and grid_difference_mm(affine, target) <= GRID_TOLERANCE_MM:
        return None
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(target)
    )
    turned_shape = tuple(int(img.shape[int(a)]) for a in np.argsort(ornt[:, 0]))
    turned = affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    if turned_shape == shape and grid_difference_mm(turned, target) <= GRID_TOLERANCE_MM:
        return ornt
    if tuple(img.shape) != shape and turned_shape != shape:
        raise HarmonizeError(path, f"shape {tuple(img.shape)} differs from scan {scan_id}'s shape {shape}")
    diff = min(grid_difference_mm(affine, target), grid_difference_mm(turned, target))
    raise HarmonizeError(
        path,
        f"affine differs from scan {scan_id}'s by up to {diff:.4g} mm (tolerance "
        f"{GRID_TOLERANCE_MM} mm): the file is not on the scan's voxel grid",
    )


def _export_layers(path: Path, folder: Path) -> dict[str, list[str]] | None:
    """The ``layers`` of the case export in ``folder`` (``labels.json``: layer file -> classes), or None
    when ``path``'s name is not a layer file listed there (another file, or no export manifest)."""
    manifest = folder / "labels.json"
    try:
        layers = json.loads(manifest.read_text()).get("layers")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(layers, dict) or path.name not in layers:
        return None
    return {str(k): [str(c) for c in v] for k, v in layers.items() if isinstance(v, list)}


def _check_layer(path: Path, class_name: str, layers: Mapping[str, Sequence[str]]) -> None:
    """Refuse to read ``class_name`` from an export's layer file when the export put it in another one
    (it would read as absent)."""
    if class_name in layers.get(path.name, ()):
        return
    elsewhere = [f for f, classes in layers.items() if class_name in classes]
    if elsewhere:
        raise HarmonizeError(
            path,
            f"{class_name} is in {elsewhere[0]} of this export, not in {path.name}: import that file for it",
        )


def _unchanged_label_set(
    ws: Workspace, scan_id: str, class_name: str, mask: np.ndarray, base_label_set_id: str | None
) -> str | None:
    """The label set that already holds exactly ``mask`` as ``class_name`` (its state known, its mask
    equal voxel for voxel): the base given, else the current label set of the scan x class; None when the
    import changes something."""
    base_id = base_label_set_id or ws.catalog.current_label_set(scan_id, class_name)
    if base_id is None:
        return None
    base = label_set_row(ws, base_id, scan_id)
    state = ws.catalog.coverage(base_id).get(class_name, NOT_ANNOTATED)
    if state == NOT_ANNOTATED or (state == ANNOTATED_PRESENT) != bool(mask.any()):
        return None
    if state == ANNOTATED_ABSENT:
        return base_id
    stored = ws.masks.read(str(base["mask_key"]), class_name)
    return base_id if np.array_equal(stored, mask) else None


def import_correction(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    nifti_path: str | Path,
    reviewer: str,
    comment: str | None = "",
    *,
    value_map: Mapping[int, int] | None = None,
    base_label_set_id: str | None = None,
    export_dir: str | Path | None = None,
) -> Correction:
    """Import a corrected label NIfTI (from 3D Slicer or ITK-SNAP) for one class as a correction.

    Checks (each failure is one HarmonizeError naming the file, and nothing is stored): NIfTI header
    magic, the header's shape equal to the scan's (before any voxel is decoded: a header claiming 2048^3
    voxels costs nothing), the affine within :data:`harmonize.geometry.GRID_TOLERANCE_MM` of the scan's
    (a file of the same grid in another voxel order, e.g. saved as RAS from an LPS scan, is turned back),
    readable voxels, label values, and for a layer file of an export (listed in the ``labels.json``
    beside it) that the class is in that layer. Writes only to the workspace's catalog and store; a mask
    equal to the current one writes nothing (``changed`` False).

    Args:
        ws: the workspace.
        scan_id / class_name: what was corrected.
        nifti_path: the edited NIfTI (e.g. the ``labels.nii.gz`` of
            :func:`workbench.review.slicer.export_case_for_slicer`).
        reviewer / comment: as in :func:`correct`.
        value_map: label value -> 0/1 (see :func:`label_values_to_mask`).
        base_label_set_id: as in :func:`correct`.
        export_dir: the folder of the case export whose ``labels.json`` describes the file (default: the
            file's own folder).

    Returns:
        The :class:`Correction` (``changed`` False when the file holds the class as it is).
    """
    path = Path(nifti_path)
    validate_reviewer(ws, reviewer)
    validate_comment(ws, comment)
    class_name = check_class(ws, class_name)
    scan = scan_row(ws, scan_id)
    img = _load_nifti(path)
    ornt = _on_scan_grid(path, img, scan_id, scan)  # from the header, before any voxel is decoded
    layers = _export_layers(path, path.parent if export_dir is None else Path(export_dir))
    if layers is not None:
        _check_layer(path, class_name, layers)
    data = _read_voxels(path, img)
    if ornt is not None:
        data = nib.orientations.apply_orientation(data, ornt)
    mask = label_values_to_mask(path, data, class_name, value_map, label_map=layers is not None)
    same = _unchanged_label_set(ws, scan_id, class_name, mask, base_label_set_id)
    if same is not None:
        return Correction("", same, changed=False)
    return correct(ws, scan_id, class_name, mask, reviewer, comment, base_label_set_id)


def import_correction_upload(
    ws: Workspace,
    scan_id: str,
    class_name: str,
    file_name: str,
    data: bytes,
    reviewer: str,
    comment: str | None = "",
    *,
    value_map: Mapping[int, int] | None = None,
    base_label_set_id: str | None = None,
) -> Correction:
    """:func:`import_correction` for uploaded bytes (the app): the name must be a plain ``.nii``/``.nii.gz``
    file name; the bytes are staged in the workspace's ``imports`` folder and removed afterwards. A file
    named like a layer of the scan's export (:func:`workbench.review.slicer.slicer_case_dir`) is read
    with that export's ``labels.json``.

    Args:
        ws: the workspace.
        scan_id / class_name: what was corrected.
        file_name: the uploaded file's name (checked by
            :func:`workbench.review.validation.check_upload_name`; errors name it).
        data: the file's bytes.
        reviewer / comment / value_map / base_label_set_id: as in :func:`import_correction`.

    Returns:
        The :class:`Correction`.
    """
    name = check_upload_name(file_name)
    staging = ws.imports
    staging.mkdir(exist_ok=True)
    folder = staging / f"upload-{uuid.uuid4().hex[:16]}"  # keeps the uploaded name: the export's layers
    folder.mkdir()
    tmp = folder / name
    try:
        atomic_write_bytes(tmp, data)
        return import_correction(
            ws,
            scan_id,
            class_name,
            tmp,
            reviewer,
            comment,
            value_map=value_map,
            base_label_set_id=base_label_set_id,
            export_dir=slicer_case_dir(ws, scan_id),
        )
    except HarmonizeError as e:
        raise HarmonizeError(name, e.problem) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
