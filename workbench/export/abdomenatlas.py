"""The AbdomenAtlas export: one folder per case, one binary file per class.

``OUT/<case>/ct.nii.gz`` plus ``OUT/<case>/segmentations/<class>.nii.gz``, binary uint8 on exactly the
CT's grid (same shape and affine), one file for every class whose state is known (``annotated_present``
-> its mask, ``annotated_absent`` -> all zeros); ``not_annotated`` classes get no file, so "absent" and
"unknown" stay apart. The labels are each scan's current ``original`` label set. ``OUT/manifest.json``
lists every case with its scan, label set, origin and per-class state, and the SHA-256 of every file
written, so an export can be checked and reproduced.

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
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT
from harmonize.readers import read_volume
from harmonize.taxonomy import class_names
from harmonize.volume import Volume
from storage.files import PARTIAL_PREFIX, atomic_write_json, file_sha256, remove_abandoned_partials
from storage.workspace import Workspace
from workbench.export.nifti import case_names, ct_array, save_nifti
from workbench.export.skipped import READ_ERRORS, remove_stale, skipped_case


def export_abdomenatlas(
    ws: Workspace,
    out: str | Path,
    *,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export each scan's current original labels in the AbdomenAtlas layout.

    Args:
        ws: the workspace.
        out: output folder (created).
        sources: only these source ids (default: all).
        classes: only these universal classes (default: all 32).
        progress: show a tqdm bar.

    Returns:
        The manifest (also written to ``out/manifest.json``), with ``"skipped"``: the cases that could not
        be read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(out)  # temp files of an export that was killed here before
    wanted = list(classes) if classes else class_names()
    unknown = sorted(set(wanted) - set(class_names()))
    if unknown:
        raise KeyError(f"unknown classes {unknown}")
    rows = ws.catalog.current_original_label_sets(sources).to_dict("records")
    states = ws.catalog.coverages([r["label_set_id"] for r in rows])
    names = case_names([r["scan_id"] for r in rows], out)
    manifest: dict[str, Any] = {"format": "abdomenatlas", "classes": wanted, "cases": [], "skipped": []}
    for row in tqdm(rows, desc="export abdomenatlas", unit="scan", disable=not progress):
        case_dir = out / names[row["scan_id"]]
        case_states = states.get(row["label_set_id"], {})
        try:
            image, masks = _read_case(ws, row, case_states, wanted)
        except READ_ERRORS as exc:
            manifest["skipped"].append(skipped_case(row["scan_id"], case_dir.name, exc))
            remove_stale([case_dir])
            continue
        manifest["cases"].append(_write_case(row, case_states, wanted, image, masks, case_dir))
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _read_case(
    ws: Workspace, row: dict[str, Any], states: dict[str, str], wanted: list[str]
) -> tuple[Volume, dict[str, np.ndarray]]:
    """The CT and the present masks of one case, read before anything of it is written."""
    image_path = Path(row["image_path"])
    if not image_path.exists():
        raise HarmonizeError(image_path, f"image of scan {row['scan_id']} is no longer there")
    image = read_volume(image_path, kind="image")
    present = [n for n in wanted if states.get(n) == ANNOTATED_PRESENT]
    masks = ws.masks.read_many(row["mask_key"], present) if present else {}
    for name, mask in masks.items():
        if mask.shape != image.shape:
            raise HarmonizeError(
                ws.masks.path(row["mask_key"]), f"mask of {name} has shape {mask.shape}, CT has {image.shape}"
            )
    return image, masks


def _write_case(
    row: dict[str, Any],
    states: dict[str, str],
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
    known = [n for n in wanted if states.get(n) in (ANNOTATED_PRESENT, ANNOTATED_ABSENT)]
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
        "scan_id": row["scan_id"],
        "source": row["source_id"],
        "label_set_id": row["label_set_id"],
        "origin": row["origin"],
        "label_version": int(row["version"]),
        "states": {n: states.get(n, "not_annotated") for n in wanted},
        "sha256": files,
    }
