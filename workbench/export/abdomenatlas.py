"""The AbdomenAtlas export: one folder per case, one binary file per class.

``OUT/<case>/ct.nii.gz`` plus ``OUT/<case>/segmentations/<class>.nii.gz``, binary uint8 on exactly the
CT's grid (same shape and affine), one file for every class whose state is known (``annotated_present``
-> its mask, ``annotated_absent`` -> all zeros); ``not_annotated`` classes get no file, so "absent" and
"unknown" stay apart. The labels of each scan x class come from the assembly rule
(:mod:`workbench.export.selection`: revised > original > accepted pseudo > pseudo, a rejected pseudo-label
never; by default accepted pseudo-labels fill what the source did not annotate), held-out scans left out
unless asked. ``OUT/manifest.json`` lists every case with its scan, per-class state, label set, origin and
basis, whether (and how many) held-out scans were left out, and the SHA-256 of every file written, so an
export can be checked and reproduced.

Each case is read completely first, then written into a hidden temp folder and renamed into place, so an
interrupted export never leaves a half-written case folder; re-running it rewrites what is missing. A case
that cannot be read (a damaged mask file, a missing CT) is skipped and listed under ``"skipped"`` in the
manifest (:mod:`workbench.export.skipped`); the rest is written. Case folders are named by
:func:`~workbench.export.nifti.scan_export_name` (unique per scan; each manifest case names its scan).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.readers import read_volume
from harmonize.volume import Volume
from storage.files import PARTIAL_PREFIX, atomic_write_json, file_sha256, remove_abandoned_partials
from storage.workspace import Workspace
from workbench.export.nifti import case_names, ct_array, save_nifti
from workbench.export.selection import case_labels, select
from workbench.export.skipped import READ_ERRORS, remove_stale, skipped_case
from workbench.training_set import TrainingEntry


def export_abdomenatlas(
    ws: Workspace,
    out: str | Path,
    *,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    pseudo: str = "accepted",
    include_held_out: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Export each scan's labels by the assembly rule in the AbdomenAtlas layout.

    Args:
        ws: the workspace.
        out: output folder (created).
        sources: only these source ids (default: all).
        classes: only these universal classes (default: all 32).
        pseudo: which pseudo-labels fill partial labels: ``accepted`` (default), ``all`` (not rejected) or
            ``none``.
        include_held_out: keep the held-out scans (default: left out, the export is for training).
        progress: show a tqdm bar.

    Returns:
        The manifest (also written to ``out/manifest.json``), with ``"skipped"``: the cases that could not
        be read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(out)  # temp files of an export that was killed here before
    sel = select(ws, sources=sources, classes=classes, pseudo=pseudo, include_held_out=include_held_out)
    names = case_names([e.scan_id for e in sel.entries], out)
    manifest: dict[str, Any] = {
        "format": "abdomenatlas",
        "classes": sel.classes,
        "parameters": {"sources": list(sources or []), **sel.parameters()},
        "held_out": sel.held_out(),
        "cases": [],
        "skipped": [],
    }
    for entry in tqdm(sel.entries, desc="export abdomenatlas", unit="scan", disable=not progress):
        case_dir = out / names[entry.scan_id]
        try:
            image, masks = _read_case(entry, sel.classes)
        except READ_ERRORS as exc:
            manifest["skipped"].append(skipped_case(entry.scan_id, case_dir.name, exc))
            remove_stale([case_dir])
            continue
        manifest["cases"].append(_write_case(entry, sel.classes, image, masks, case_dir))
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _states(entry: TrainingEntry, wanted: list[str]) -> dict[str, str]:
    """Exported class -> its state in the entry (``not_annotated`` when unknown)."""
    present, known = set(entry.present), set(entry.annotated)
    return {
        n: (ANNOTATED_PRESENT if n in present else ANNOTATED_ABSENT) if n in known else NOT_ANNOTATED
        for n in wanted
    }


def _read_case(entry: TrainingEntry, wanted: list[str]) -> tuple[Volume, dict[str, np.ndarray]]:
    """The CT and the present masks of one case, read before anything of it is written."""
    image_path = Path(entry.image_path)
    if not image_path.exists():
        raise HarmonizeError(image_path, f"image of scan {entry.scan_id} is no longer there")
    image = read_volume(image_path, kind="image")
    masks = {n: entry.masks[n] for n in wanted if n in entry.present}
    for name, mask in masks.items():
        if mask.shape != image.shape:
            where = f"{name} of label set {entry.label_sets[name]}"
            raise HarmonizeError(image_path, f"mask of {where} has shape {mask.shape}, CT has {image.shape}")
    return image, masks


def _write_case(
    entry: TrainingEntry,
    wanted: list[str],
    image: Volume,
    masks: dict[str, np.ndarray],
    case_dir: Path,
) -> dict[str, Any]:
    """Write one case into a hidden temp folder and rename it into place; its manifest entry."""
    tmp = case_dir.parent / f"{PARTIAL_PREFIX}{case_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "segmentations").mkdir(parents=True)
    save_nifti(ct_array(image.array), image.affine, tmp / "ct.nii.gz")
    known = [n for n in wanted if n in entry.annotated]
    files = {"ct.nii.gz": file_sha256(tmp / "ct.nii.gz")}
    for name in known:
        mask = masks[name].astype(np.uint8) if name in masks else np.zeros(image.shape, np.uint8)
        path = tmp / "segmentations" / f"{name}.nii.gz"
        save_nifti(mask, image.affine, path)
        files[f"segmentations/{name}.nii.gz"] = file_sha256(path)
    shutil.rmtree(case_dir, ignore_errors=True)
    tmp.rename(case_dir)
    return {
        "case": case_dir.name,
        "scan_id": entry.scan_id,
        "source": entry.source_id,
        "states": _states(entry, wanted),
        **case_labels(entry, wanted),
        "sha256": files,
    }
