"""Training-set exports: nnU-Net v2 raw dataset and MONAI datalist with cross-validation folds.

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
:func:`workbench.review.paint_order` (organs and vessels, then structures inside organs, then tumours and
cysts; later wins), so the tumour keeps its own value and the organ's label is the organ minus the
tumour, the usual nnU-Net convention (e.g. KiTS, LiTS).

Files: ``imagesTr/<case>_0000.nii.gz`` (CT, int16 where integral) and ``labelsTr/<case>.nii.gz`` (uint8)
on the CT's own grid; ``dataset.json`` (nnU-Net) or ``datalist.json`` (MONAI); ``manifest.json`` with the
export parameters, each case's scan, per-class label set and origin, and the SHA-256 of every file, so an
export can be checked and reproduced. Each file is written to a hidden temp name and renamed into place,
the label after its image, so an interrupted export never leaves a half-written file; re-running it
rewrites everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.export import ct_array, export_case_name, file_sha256, save_nifti
from workbench.review import paint_order
from workbench.training_set import ORIGIN_PRIORITY, TrainingEntry, assemble_training_set

ProgressFn = Callable[[int, int, str], None]


def label_values(classes: Sequence[str]) -> dict[str, int]:
    """``{"background": 0, class: 1..n (in universal order), "ignore": n + 1}``."""
    order = {n: i for i, n in enumerate(class_names())}
    ordered = sorted(classes, key=order.__getitem__)
    out = {"background": 0}
    out.update({n: i + 1 for i, n in enumerate(ordered)})
    out["ignore"] = len(ordered) + 1
    return out


def label_map(entry: TrainingEntry, values: dict[str, int], shape: tuple[int, int, int]) -> np.ndarray:
    """The (i, j, k) uint8 label map of one entry under the rules of the module docstring."""
    exported = [n for n in values if n not in ("background", "ignore")]
    known = set(entry.annotated) & set(exported)
    complete = known == set(exported)
    out = np.full(shape, 0 if complete else values["ignore"], dtype=np.uint8)
    for name in paint_order([n for n in entry.present if n in known]):
        m = entry.masks[name]
        if m.shape != shape:
            raise HarmonizeError(entry.image_path, f"mask of {name} has shape {m.shape}, CT has {shape}")
        out[m] = values[name]
    return out


def _atomic_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> str:
    tmp = path.parent / f".partial-{path.name}"
    save_nifti(array, affine, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def _atomic_json(obj: Any, path: Path) -> str:
    tmp = path.parent / f".partial-{path.name}"
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
    return file_sha256(path)


def _entries(
    ws: Workspace, sources: Sequence[str] | None, classes: Sequence[str] | None, origins: Sequence[str]
) -> tuple[list[TrainingEntry], list[str]]:
    wanted = list(classes) if classes else class_names()
    unknown = sorted(set(wanted) - set(class_names()))
    if unknown:
        raise KeyError(f"unknown classes {unknown}")
    entries = assemble_training_set(ws, sources=sources, origins=origins)
    return [e for e in entries if set(e.annotated) & set(wanted)], wanted


def _case_id(ws: Workspace, scan_id: str, source_id: str) -> str:
    case = scan_id.split(":", 1)[1] if ":" in scan_id else scan_id
    return export_case_name(source_id, case)


def _write_cases(
    ws: Workspace,
    entries: list[TrainingEntry],
    values: dict[str, int],
    out: Path,
    image_name: Callable[[str], str],
    desc: str,
    progress: bool,
    on_progress: ProgressFn | None,
) -> list[dict[str, Any]]:
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    exported = [n for n in values if n not in ("background", "ignore")]
    cases = []
    for n, e in enumerate(tqdm(entries, desc=desc, unit="scan", disable=not progress)):
        case = _case_id(ws, e.scan_id, e.source_id)
        if on_progress is not None:
            on_progress(n, len(entries), case)
        path = Path(e.image_path)
        if not path.exists():
            raise HarmonizeError(path, f"image of scan {e.scan_id} is no longer there")
        image = read_volume(path, kind="image")
        img_rel, lab_rel = f"imagesTr/{image_name(case)}", f"labelsTr/{case}.nii.gz"
        sha_img = _atomic_nifti(ct_array(image.array), image.affine, out / img_rel)
        labels = label_map(e, values, image.shape)
        sha_lab = _atomic_nifti(labels, image.affine, out / lab_rel)
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
    return cases


def _manifest(
    fmt: str,
    params: dict[str, Any],
    values: dict[str, int],
    cases: list[dict[str, Any]],
    extra: dict[str, str],
) -> dict[str, Any]:
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
        "sha256": dict(sorted(files.items())),
    }


def export_nnunet(
    ws: Workspace,
    out: str | Path,
    *,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
    dataset_name: str = "CTWorkbench",
    progress: bool = True,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Export an nnU-Net v2 raw dataset into ``out`` (name it ``DatasetXXX_Name`` for nnU-Net).

    Args:
        ws: the workspace.
        out: dataset folder (created).
        sources / classes: only these (default: all sources, all 32 classes).
        origins: label origins that may contribute (priority is always revised > original > pseudo).
        dataset_name: ``name`` in dataset.json.
        progress: tqdm bar on stderr; on_progress: called ``(done, total, case)`` (the app's bar).

    Returns:
        The manifest (also ``out/manifest.json``).
    """
    out = Path(out)
    entries, wanted = _entries(ws, sources, classes, origins)
    values = label_values(wanted)
    cases = _write_cases(
        ws, entries, values, out, lambda c: f"{c}_0000.nii.gz", "export nnunet", progress, on_progress
    )
    dataset = {
        "name": dataset_name,
        "description": "Harmonized abdominal CT labels exported by the CT curation workbench; partial "
        "labels use the ignore label (see manifest.json)",
        "channel_names": {"0": "CT"},
        "labels": values,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    extra = {"dataset.json": _atomic_json(dataset, out / "dataset.json")}
    params = {
        "sources": list(sources or []),
        "classes": wanted,
        "origins": list(origins),
        "priority": sorted(ORIGIN_PRIORITY, key=ORIGIN_PRIORITY.__getitem__, reverse=True),
    }
    manifest = _manifest("nnunet_v2", params, values, cases, extra)
    _atomic_json(manifest, out / "manifest.json")
    return manifest


def assign_folds(cases: Sequence[dict[str, Any]], n_folds: int, seed: int) -> dict[str, int]:
    """scan id -> fold (0..n_folds-1): sources and the scans of each source shuffled with ``seed``, then
    dealt round-robin (continuing across sources) so every fold mixes sources and fold sizes differ by at
    most one; all entries of one scan share a fold (grouped by scan)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for c in cases:
        by_source.setdefault(str(c["source"]), [])
        if c["scan_id"] not in by_source[str(c["source"])]:
            by_source[str(c["source"])].append(str(c["scan_id"]))
    folds: dict[str, int] = {}
    start = 0
    order = sorted(by_source)
    rng.shuffle(order)
    for source in order:
        scans = sorted(by_source[source])
        rng.shuffle(scans)
        for i, s in enumerate(scans):
            folds[s] = (start + i) % n_folds
        start = (start + len(scans)) % n_folds
    return folds


def export_monai(
    ws: Workspace,
    out: str | Path,
    *,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
    n_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Export images, label maps and a MONAI datalist with k-fold cross-validation folds into ``out``.

    ``datalist.json`` has ``training``: one dict per scan with ``image``, ``label`` (paths relative to
    ``out``, as ``monai.data.load_decathlon_datalist`` expects), ``fold``, ``scan_id``, ``source``,
    ``annotated`` (the classes with known state, for partial-label losses); plus ``labels``,
    ``ignore_label``, ``n_folds`` and ``seed``. Arguments as in :func:`export_nnunet`.

    Returns:
        The manifest (also ``out/manifest.json``).
    """
    out = Path(out)
    entries, wanted = _entries(ws, sources, classes, origins)
    values = label_values(wanted)
    cases = _write_cases(
        ws, entries, values, out, lambda c: f"{c}.nii.gz", "export monai", progress, on_progress
    )
    folds = assign_folds(cases, n_folds, seed)
    datalist = {
        "description": "CT curation workbench export; ignore_label marks voxels of unknown classes",
        "labels": values,
        "ignore_label": values["ignore"],
        "n_folds": n_folds,
        "seed": seed,
        "training": [
            {
                "image": c["image"],
                "label": c["label"],
                "fold": folds[c["scan_id"]],
                "scan_id": c["scan_id"],
                "source": c["source"],
                "annotated": c["annotated"],
            }
            for c in cases
        ],
    }
    extra = {"datalist.json": _atomic_json(datalist, out / "datalist.json")}
    params = {
        "sources": list(sources or []),
        "classes": wanted,
        "origins": list(origins),
        "n_folds": n_folds,
        "seed": seed,
        "priority": sorted(ORIGIN_PRIORITY, key=ORIGIN_PRIORITY.__getitem__, reverse=True),
    }
    manifest = _manifest("monai_datalist", params, values, cases, extra)
    for c in cases:
        c["fold"] = folds[c["scan_id"]]
    _atomic_json(manifest, out / "manifest.json")
    return manifest


def verify_manifest(out: str | Path) -> list[str]:
    """Files under ``out`` whose SHA-256 differs from ``manifest.json`` (or that are missing); [] if all
    match."""
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    bad = []
    for rel, digest in manifest["sha256"].items():
        p = out / rel
        if not p.is_file():
            bad.append(rel)
            continue
        with p.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                bad.append(rel)
    return bad
