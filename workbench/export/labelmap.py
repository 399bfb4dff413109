"""Label-map exports (nnU-Net v2, MONAI): label values, the ignore label, painting, the case files and
the manifest that :mod:`workbench.export.nnunet` and :mod:`workbench.export.monai_datalist` share.

Both take each scan's labels per class by the assembly rule (:mod:`workbench.export.selection`: revised >
original > accepted pseudo > pseudo, a rejected pseudo-label never; accepted pseudo-labels fill partial
labels by default) and write ONE label map per scan; the manifest records each scan x class's ``basis``
and label set.

Label values: background 0, then the exported classes numbered 1..n in universal (model) order, then
``ignore`` = n + 1, the highest value, as nnU-Net v2 requires for its ignore label. nnU-Net needs
consecutive values, so with a class subset the values are NOT the universal indices; ``dataset.json`` /
``datalist.json`` and the manifest list the mapping.

Partial labels are expressed with the **ignore label**: a scan that does not know every exported class
gets ``ignore`` (no loss) only where an unknown class may be (:mod:`workbench.export.ignore`: near its
non-rejected pseudo-label, else inside the body), true background elsewhere; a scan that knows every
exported class gets true background 0 outside its classes. A scan that knows none of them is left out.
Each case and the manifest say how many voxels are ignore and background, and the manifest holds the CT
intensity statistics over annotated voxels only (:mod:`workbench.export.intensity`).

Overlaps (a tumour inside its organ, the hepatic vessels inside the liver) are resolved by painting in
:func:`harmonize.taxonomy.paint_order` (organs and vessels, then structures inside organs, then tumours
and cysts; later wins), so the tumour keeps its own value and the organ's label is the organ minus the
tumour, the usual nnU-Net convention (e.g. KiTS, LiTS).

Files: ``imagesTr/<case>_0000.nii.gz`` (nnU-Net) or ``imagesTr/<case>.nii.gz`` (MONAI), the CT as int16
where integral, and ``labelsTr/<case>.nii.gz`` (uint8) on the CT's own grid; ``dataset.json`` (nnU-Net) or
``datalist.json`` (MONAI); ``manifest.json`` with the export parameters, each case's scan, per-class label
set, origin and basis, and the SHA-256 of every file, so an export can be checked (:func:`verify_manifest`)
and reproduced. Each file is written to a hidden temp name and renamed into place, the label after its
image, so an interrupted export never leaves a half-written file; re-running it rewrites everything. A case
that cannot be read (a damaged mask file, a missing CT) is skipped and listed under ``"skipped"``
(:mod:`workbench.export.skipped`); the rest is written. Case names are
:func:`~workbench.export.nifti.scan_export_name` (unique per scan, mapped back in the manifest).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from harmonize.taxonomy import class_by_name, class_names, paint_order
from harmonize.volume import Volume
from storage.files import atomic_write_json, file_sha256, remove_abandoned_partials
from storage.workspace import Workspace
from workbench.export.ignore import DEFAULT_MARGIN_MM, ignore_region, ignore_totals
from workbench.export.intensity import PROPERTIES_KEY, IntensityAccumulator
from workbench.export.nifti import case_names, ct_array, write_nifti
from workbench.export.selection import Selection, case_labels, select
from workbench.export.skipped import READ_ERRORS, remove_stale, skipped_case
from workbench.training_set import TrainingEntry, assemble_training_set

#: ``on_progress(done, total, case)``: the app's progress bar.
ProgressFn = Callable[[int, int, str], None]
#: The label values that are not classes.
BACKGROUND, IGNORE = "background", "ignore"


def label_values(classes: Sequence[str]) -> dict[str, int]:
    """The label values of an export of ``classes``.

    Args:
        classes: universal class names, in any order.

    Returns:
        ``{"background": 0, class: 1..n (in universal order), "ignore": n + 1}``.
    """
    order = {n: i for i, n in enumerate(class_names())}
    ordered = sorted(classes, key=order.__getitem__)
    out = {BACKGROUND: 0}
    out.update({n: i + 1 for i, n in enumerate(ordered)})
    out[IGNORE] = len(ordered) + 1
    return out


def exported_classes(values: Mapping[str, int]) -> list[str]:
    """The class names of :func:`label_values`, in label order."""
    return [n for n in values if n not in (BACKGROUND, IGNORE)]


def label_map(
    entry: TrainingEntry,
    values: dict[str, int],
    shape: tuple[int, int, int],
    ignore: np.ndarray | None = None,
) -> np.ndarray:
    """The label map of one training entry under the rules of the module docstring.

    Args:
        entry: the scan's labels (masks on the CT grid).
        values: :func:`label_values` of the exported classes.
        shape: the CT's (i, j, k) shape.
        ignore: (i, j, k) bool, where the scan's unknown classes may be (:func:`ignore_region`); None:
            everywhere. Unused when the scan knows every exported class.

    Returns:
        (i, j, k) uint8 label map.

    Raises:
        HarmonizeError: a mask is not on the CT's grid.
    """
    exported = exported_classes(values)
    known = set(entry.annotated) & set(exported)
    out = np.zeros(shape, dtype=np.uint8)
    if known != set(exported):
        if ignore is None:
            out[...] = values[IGNORE]
        else:
            out[ignore] = values[IGNORE]
    for name in paint_order([n for n in entry.present if n in known]):
        m = entry.masks[name]
        if m.shape != shape:
            raise HarmonizeError(entry.image_path, f"mask of {name} has shape {m.shape}, CT has {shape}")
        out[m] = values[name]
    return out


@dataclass(frozen=True)
class LabelMapExport:
    """One label-map export's inputs: what it writes, how, and where the ignore region's hints come from.

    Args:
        selection: the scans and labels (:func:`workbench.export.selection.select`).
        values: :func:`label_values` of the exported classes.
        hints: scan id -> its non-rejected pseudo-labels (``current_label_of(['pseudo'])``), the ignore
            region's hints.
        margin_mm: the margin around a hint, mm.
    """

    selection: Selection
    values: dict[str, int]
    hints: dict[str, TrainingEntry]
    margin_mm: float


def plan_export(
    ws: Workspace,
    sources: Sequence[str] | None,
    classes: Sequence[str] | None,
    pseudo: str,
    include_held_out: bool,
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> LabelMapExport:
    """The inputs of a label-map export.

    Args:
        ws: the workspace.
        sources / classes: only these (None or empty: all sources, all 32 classes).
        pseudo: ``accepted`` (default of the exports), ``all`` or ``none``.
        include_held_out: keep the held-out scans.
        margin_mm: ignore margin around an unknown class's pseudo-label, mm (>= 0).

    Returns:
        The :class:`LabelMapExport`.

    Raises:
        KeyError: a class is not a universal class.
        ValueError: an unknown pseudo-label policy or a negative margin.
    """
    if margin_mm < 0:
        raise ValueError(f"ignore margin must be >= 0 mm, got {margin_mm}")
    sel = select(ws, sources=sources, classes=classes, pseudo=pseudo, include_held_out=include_held_out)
    values = label_values(sel.classes)
    partial = [e.scan_id for e in sel.entries if not set(sel.classes) <= set(e.annotated)]
    hints = {}
    if partial:
        hints = {e.scan_id: e for e in assemble_training_set(ws, scan_ids=partial, origins=("pseudo",))}
    return LabelMapExport(sel, values, hints, float(margin_mm))


def write_cases(
    plan: LabelMapExport,
    out: Path,
    image_name: Callable[[str], str],
    desc: str,
    progress: bool,
    on_progress: ProgressFn | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]], IntensityAccumulator]:
    """Write every entry's CT into ``out/imagesTr`` and its label map into ``out/labelsTr``.

    Each case is read completely (CT and masks) before its files are written; a case that cannot be read
    (:data:`workbench.export.skipped.READ_ERRORS`: a missing or unreadable CT, a damaged mask file, a
    mask off the CT's grid) is skipped, files an earlier export left under its names are removed, and the
    rest is written.

    Args:
        plan: :func:`plan_export`.
        out: the export folder (the two subfolders are created).
        image_name: case name -> the CT's file name (nnU-Net appends the channel, ``_0000``).
        desc: the tqdm bar's label; progress: show it.
        on_progress: called ``(done, total, case)`` before each case and once at the end.

    Returns:
        ``(cases, skipped, intensities)``: one manifest case per written entry (``case, scan_id, source,
        image, label, annotated, present, complete, label_sets, origins, bases, voxels, ignore_voxels,
        ignore_share, background_voxels, foreground_voxels, ignore_classes, sha256``, paths relative to
        ``out``), one :func:`~workbench.export.skipped.skipped_case` per skipped entry, and the annotated
        foreground intensities of the written cases.

    Raises:
        HarmonizeError: two scans would get the same case name (never with
            :func:`~workbench.export.nifti.scan_export_name`; a guard against overwriting).
    """
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(out)  # temp files of an export that was killed here before
    entries = plan.selection.entries
    names = case_names([e.scan_id for e in entries], out)
    cases, skipped, intensities = [], [], IntensityAccumulator()
    for n, e in enumerate(tqdm(entries, desc=desc, unit="scan", disable=not progress)):
        case = names[e.scan_id]
        if on_progress is not None:
            on_progress(n, len(entries), case)
        img_rel, lab_rel = f"imagesTr/{image_name(case)}", f"labelsTr/{case}.nii.gz"
        try:
            image, labels, how = _read_case(plan, e)
        except READ_ERRORS as exc:
            skipped.append(skipped_case(e.scan_id, case, exc))
            remove_stale([out / img_rel, out / lab_rel])
            continue
        sha_img = write_nifti(ct_array(image.array), image.affine, out / img_rel)
        sha_lab = write_nifti(labels, image.affine, out / lab_rel)
        foreground = intensities.add(image.array, labels, plan.values[IGNORE])
        files = {
            "case": case,
            "image": img_rel,
            "label": lab_rel,
            "sha256": {img_rel: sha_img, lab_rel: sha_lab},
        }
        cases.append(
            _case_record(e, plan.selection.classes, labels, plan.values[IGNORE], how, foreground) | files
        )
    if on_progress is not None:
        on_progress(len(entries), len(entries), "")
    return cases, skipped, intensities


def _case_record(
    e: TrainingEntry,
    classes: list[str],
    labels: np.ndarray,
    ignore_value: int,
    how: dict[str, str],
    foreground: int,
) -> dict[str, Any]:
    """The manifest case of one written entry (without its file names and hashes)."""
    known = [c for c in classes if c in e.annotated]
    ignored = int((labels == ignore_value).sum())
    return {
        "scan_id": e.scan_id,
        "source": e.source_id,
        "annotated": known,
        "present": [c for c in e.present if c in known],
        "complete": len(known) == len(classes),
        **case_labels(e, classes),
        "voxels": int(labels.size),
        "ignore_voxels": ignored,
        "ignore_share": ignored / labels.size if labels.size else 0.0,
        "background_voxels": int((labels == 0).sum()),
        "foreground_voxels": foreground,
        "ignore_classes": how,
    }


def _read_case(plan: LabelMapExport, entry: TrainingEntry) -> tuple[Volume, np.ndarray, dict[str, str]]:
    """The CT, the label map and how its ignore region was drawn, read before anything is written."""
    path = Path(entry.image_path)
    if not path.exists():
        raise HarmonizeError(path, f"image of scan {entry.scan_id} is no longer there")
    image = read_volume(path, kind="image")
    unknown = [c for c in plan.selection.classes if c not in entry.annotated]
    region: np.ndarray | None = None
    how: dict[str, str] = {}
    if unknown:
        hint = plan.hints.get(entry.scan_id)
        hinted = set(hint.present) if hint is not None else set()
        masks = {c: hint.masks[c] for c in unknown if hint is not None and c in hinted}
        absent = [c for c in unknown if hint is not None and c in hint.annotated and c not in hinted]
        region, how = ignore_region(
            unknown,
            masks,
            np.asarray(image.array),
            image.affine,
            plan.margin_mm,
            absent=absent,
            organs=_parent_masks(absent, entry, hint),
        )
    return image, label_map(entry, plan.values, image.shape, region), how


def _parent_masks(
    classes: Sequence[str], entry: TrainingEntry, hint: TrainingEntry | None
) -> dict[str, np.ndarray]:
    """The scan's masks of the parent organs of ``classes``: its known label first, else its pseudo-label."""
    out: dict[str, np.ndarray] = {}
    for parent in {p for c in classes for p in class_by_name(c).parents}:
        if parent in entry.present:
            out[parent] = entry.masks[parent]
        elif hint is not None and parent in hint.present:
            out[parent] = hint.masks[parent]
    return out


def write_json(obj: Any, path: Path) -> str:
    """Write ``obj`` as indented JSON atomically (:func:`storage.files.atomic_write_json`).

    Returns:
        The SHA-256 (hex) of the written file.
    """
    atomic_write_json(path, obj)
    return file_sha256(path)


def export_parameters(plan: LabelMapExport, sources: Sequence[str] | None, **extra: Any) -> dict[str, Any]:
    """The ``parameters`` of a manifest.

    Args:
        plan: :func:`plan_export`.
        sources: the chosen sources (None: all).
        extra: format-specific parameters (MONAI: ``n_folds``, ``seed``).

    Returns:
        ``{"sources", "classes", "pseudo", "bases", "include_held_out", "priority", "ignore_margin_mm",
        **extra}`` (``priority``: bases, winner first).
    """
    return {
        "sources": list(sources or []),
        **plan.selection.parameters(),
        "ignore_margin_mm": plan.margin_mm,
        **extra,
    }


def build_manifest(
    fmt: str,
    params: dict[str, Any],
    plan: LabelMapExport,
    written: tuple[list[dict[str, Any]], list[dict[str, str]], IntensityAccumulator],
    extra: dict[str, str],
) -> dict[str, Any]:
    """The ``manifest.json`` of a label-map export.

    Args:
        fmt: ``nnunet_v2`` or ``monai_datalist``.
        params: :func:`export_parameters`.
        plan: :func:`plan_export`.
        written: what :func:`write_cases` returned (each case maps its ``case`` name back to its
            ``scan_id``).
        extra: further files written (relative path -> SHA-256), e.g. ``dataset.json``.

    Returns:
        ``format, parameters, labels, partial_labels, overlap_priority, held_out, ignore,
        foreground_intensity_properties_per_channel, nnunet_default_intensity_properties, intensity_note,
        cases, skipped`` and ``sha256`` (every file's hash,
        sorted by path).
    """
    cases, skipped, intensities = written
    files = {k: v for c in cases for k, v in c["sha256"].items()}
    files.update(extra)
    return {
        "format": fmt,
        "parameters": params,
        "labels": plan.values,
        "partial_labels": "ignore label where a class the scan does not know may be (near its pseudo-label, "
        "else inside the body); background elsewhere",
        "overlap_priority": "organs/vessels < structures inside organs < tumours and cysts (later wins)",
        "held_out": plan.selection.held_out(),
        "ignore": ignore_totals(cases, plan.margin_mm),
        PROPERTIES_KEY: intensities.properties(),
        "nnunet_default_intensity_properties": intensities.nnunet_default_properties(),
        "intensity_note": f"{PROPERTIES_KEY}: CT statistics over annotated voxels only (label 1..n, not "
        "ignore), sampled as nnU-Net samples; nnunet_default_intensity_properties: what nnU-Net computes "
        "itself (label > 0, ignore included); replace nnU-Net's with the first: docs/exports.md",
        "cases": cases,
        "skipped": skipped,
        "sha256": dict(sorted(files.items())),
    }


def verify_manifest(out: str | Path) -> list[str]:
    """Check an export's files against its manifest.

    Args:
        out: the export folder (holds ``manifest.json``).

    Returns:
        The files (relative paths) whose SHA-256 differs from ``manifest.json`` or that are missing; []
        when all match.
    """
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    return [
        rel
        for rel, digest in manifest["sha256"].items()
        if not (out / rel).is_file() or file_sha256(out / rel) != digest
    ]
