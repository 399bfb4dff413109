"""Label-map exports (nnU-Net v2, MONAI): label values, the ignore label, painting, the case files and
the manifest that :mod:`workbench.export.nnunet` and :mod:`workbench.export.monai_datalist` share.

Both take each scan's labels per class from :func:`workbench.training_set.assemble_training_set`
(priority ``revised`` > ``original`` > ``pseudo``, newest version first) and write ONE label map per scan.

Label values: background 0, then the exported classes numbered 1..n in universal (model) order, then
``ignore`` = n + 1, the highest value, as nnU-Net v2 requires for its ignore label. nnU-Net needs
consecutive values, so with a class subset the values are NOT the universal indices; ``dataset.json`` /
``datalist.json`` and the manifest list the mapping.

Partial labels are expressed with the **ignore label**, not with regions: when a scan does not annotate
every exported class (coverage ``not_annotated`` for at least one), any voxel outside its known classes
might belong to an unknown class, so it is ``ignore`` (no loss) instead of background. A scan that knows
every exported class gets true background 0. A scan that knows none of them is left out.

Overlaps (a tumour inside its organ, the hepatic vessels inside the liver) are resolved by painting in
:func:`harmonize.taxonomy.paint_order` (organs and vessels, then structures inside organs, then tumours
and cysts; later wins), so the tumour keeps its own value and the organ's label is the organ minus the
tumour, the usual nnU-Net convention (e.g. KiTS, LiTS).

Files: ``imagesTr/<case>_0000.nii.gz`` (nnU-Net) or ``imagesTr/<case>.nii.gz`` (MONAI), the CT as int16
where integral, and ``labelsTr/<case>.nii.gz`` (uint8) on the CT's own grid; ``dataset.json`` (nnU-Net) or
``datalist.json`` (MONAI); ``manifest.json`` with the export parameters, each case's scan, per-class label
set and origin, and the SHA-256 of every file, so an export can be checked (:func:`verify_manifest`) and
reproduced. Each file is written to a hidden temp name and renamed into place, the label after its image,
so an interrupted export never leaves a half-written file; re-running it rewrites everything. A case
that cannot be read (a damaged mask file, a missing CT) is skipped and listed under ``"skipped"``
(:mod:`workbench.export.skipped`); the rest is written. Case names are
:func:`~workbench.export.nifti.scan_export_name` (unique per scan, mapped back in the manifest).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from harmonize.taxonomy import class_names, paint_order
from harmonize.volume import Volume
from storage.files import atomic_write_json, file_sha256, remove_abandoned_partials
from storage.schema import ORIGIN_PRIORITY
from storage.workspace import Workspace
from workbench.export.nifti import case_names, ct_array, write_nifti
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


def label_map(entry: TrainingEntry, values: dict[str, int], shape: tuple[int, int, int]) -> np.ndarray:
    """The label map of one training entry under the rules of the module docstring.

    Args:
        entry: the scan's labels (masks on the CT grid).
        values: :func:`label_values` of the exported classes.
        shape: the CT's (i, j, k) shape.

    Returns:
        (i, j, k) uint8 label map.

    Raises:
        HarmonizeError: a mask is not on the CT's grid.
    """
    exported = [n for n in values if n not in (BACKGROUND, IGNORE)]
    known = set(entry.annotated) & set(exported)
    complete = known == set(exported)
    out = np.full(shape, 0 if complete else values[IGNORE], dtype=np.uint8)
    for name in paint_order([n for n in entry.present if n in known]):
        m = entry.masks[name]
        if m.shape != shape:
            raise HarmonizeError(entry.image_path, f"mask of {name} has shape {m.shape}, CT has {shape}")
        out[m] = values[name]
    return out


def training_entries(
    ws: Workspace, sources: Sequence[str] | None, classes: Sequence[str] | None, origins: Sequence[str]
) -> tuple[list[TrainingEntry], list[str]]:
    """The training entries a label-map export writes: those that know at least one exported class.

    Args:
        ws: the workspace.
        sources / classes: only these (None or empty: all sources, all 32 classes).
        origins: label origins that may contribute.

    Returns:
        ``(entries, classes)``: the entries, and the exported class names.

    Raises:
        KeyError: a class is not a universal class.
    """
    wanted = list(classes) if classes else class_names()
    unknown = sorted(set(wanted) - set(class_names()))
    if unknown:
        raise KeyError(f"unknown classes {unknown}")
    entries = assemble_training_set(ws, sources=sources, origins=origins)
    return [e for e in entries if set(e.annotated) & set(wanted)], wanted


def write_cases(
    entries: list[TrainingEntry],
    values: dict[str, int],
    out: Path,
    image_name: Callable[[str], str],
    desc: str,
    progress: bool,
    on_progress: ProgressFn | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Write every entry's CT into ``out/imagesTr`` and its label map into ``out/labelsTr``.

    Each case is read completely (CT and masks) before its files are written; a case that cannot be read
    (:data:`workbench.export.skipped.READ_ERRORS`: a missing or unreadable CT, a damaged mask file, a
    mask off the CT's grid) is skipped, files an earlier export left under its names are removed, and the
    rest is written.

    Args:
        entries: the scans (:func:`training_entries`).
        values: :func:`label_values` of the exported classes.
        out: the export folder (the two subfolders are created).
        image_name: case name -> the CT's file name (nnU-Net appends the channel, ``_0000``).
        desc: the tqdm bar's label; progress: show it.
        on_progress: called ``(done, total, case)`` before each case and once at the end.

    Returns:
        ``(cases, skipped)``: one manifest case per written entry (``case, scan_id, source, image, label,
        annotated, present, complete, label_sets, origins, sha256``, paths relative to ``out``), and one
        :func:`~workbench.export.skipped.skipped_case` per skipped entry.

    Raises:
        HarmonizeError: two scans would get the same case name (never with
            :func:`~workbench.export.nifti.scan_export_name`; a guard against overwriting).
    """
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(out)  # temp files of an export that was killed here before
    exported = [n for n in values if n not in (BACKGROUND, IGNORE)]
    names = case_names([e.scan_id for e in entries], out)
    cases, skipped = [], []
    for n, e in enumerate(tqdm(entries, desc=desc, unit="scan", disable=not progress)):
        case = names[e.scan_id]
        if on_progress is not None:
            on_progress(n, len(entries), case)
        img_rel, lab_rel = f"imagesTr/{image_name(case)}", f"labelsTr/{case}.nii.gz"
        try:
            image, labels = _read_case(e, values)
        except READ_ERRORS as exc:
            skipped.append(skipped_case(e.scan_id, case, exc))
            remove_stale([out / img_rel, out / lab_rel])
            continue
        sha_img = write_nifti(ct_array(image.array), image.affine, out / img_rel)
        sha_lab = write_nifti(labels, image.affine, out / lab_rel)
        known = [c for c in exported if c in e.annotated]
        cases.append(
            {
                "case": case,
                "scan_id": e.scan_id,
                "source": e.source_id,
                "image": img_rel,
                "label": lab_rel,
                "annotated": known,
                "present": [c for c in e.present if c in known],
                "complete": len(known) == len(exported),
                "label_sets": {c: e.label_sets[c] for c in known},
                "origins": {c: e.origins[c] for c in known},
                "sha256": {img_rel: sha_img, lab_rel: sha_lab},
            }
        )
    if on_progress is not None:
        on_progress(len(entries), len(entries), "")
    return cases, skipped


def _read_case(entry: TrainingEntry, values: dict[str, int]) -> tuple[Volume, np.ndarray]:
    """The CT and the label map of one entry, read before anything of the case is written."""
    path = Path(entry.image_path)
    if not path.exists():
        raise HarmonizeError(path, f"image of scan {entry.scan_id} is no longer there")
    image = read_volume(path, kind="image")
    return image, label_map(entry, values, image.shape)


def write_json(obj: Any, path: Path) -> str:
    """Write ``obj`` as indented JSON atomically (:func:`storage.files.atomic_write_json`).

    Returns:
        The SHA-256 (hex) of the written file.
    """
    atomic_write_json(path, obj)
    return file_sha256(path)


def export_parameters(
    sources: Sequence[str] | None, classes: list[str], origins: Sequence[str], **extra: Any
) -> dict[str, Any]:
    """The ``parameters`` of a manifest.

    Args:
        sources: the chosen sources (None: all); classes: the exported classes; origins: the allowed
            origins; extra: format-specific parameters (MONAI: ``n_folds``, ``seed``).

    Returns:
        ``{"sources", "classes", "origins", **extra, "priority"}`` (``priority``: origins, winner first).
    """
    return {
        "sources": list(sources or []),
        "classes": classes,
        "origins": list(origins),
        **extra,
        "priority": sorted(ORIGIN_PRIORITY, key=ORIGIN_PRIORITY.__getitem__, reverse=True),
    }


def build_manifest(
    fmt: str,
    params: dict[str, Any],
    values: dict[str, int],
    cases: list[dict[str, Any]],
    extra: dict[str, str],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    """The ``manifest.json`` of a label-map export.

    Args:
        fmt: ``nnunet_v2`` or ``monai_datalist``.
        params: :func:`export_parameters`.
        values: :func:`label_values`.
        cases: :func:`write_cases` (each maps its ``case`` name back to its ``scan_id``).
        extra: further files written (relative path -> SHA-256), e.g. ``dataset.json``.
        skipped: the skipped cases of :func:`write_cases`.

    Returns:
        ``format, parameters, labels, partial_labels, overlap_priority, cases, skipped`` and ``sha256``
        (every file's hash, sorted by path).
    """
    files = {k: v for c in cases for k, v in c["sha256"].items()}
    files.update(extra)
    return {
        "format": fmt,
        "parameters": params,
        "labels": values,
        "partial_labels": "ignore label: voxels outside the known classes of a scan that does not annotate "
        "every exported class",
        "overlap_priority": "organs/vessels < structures inside organs < tumours and cysts (later wins)",
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
