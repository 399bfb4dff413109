"""The MONAI export: images, label maps and a datalist (``datalist.json``) with k-fold cross-validation
folds, as ``monai.data.load_decathlon_datalist`` reads it.

Label values, the ignore label for partial labels and the overlap rule are those of
:mod:`workbench.export.labelmap`. (Not named ``monai.py``: that would read like the monai package.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storage.workspace import Workspace
from workbench.export.ignore import DEFAULT_MARGIN_MM
from workbench.export.labelmap import (
    IGNORE,
    ProgressFn,
    build_manifest,
    export_parameters,
    exported_classes,
    plan_export,
    write_cases,
    write_json,
)


def assign_folds(cases: Sequence[dict[str, Any]], n_folds: int, seed: int) -> dict[str, int]:
    """Cross-validation folds, grouped by scan and mixed across sources.

    Sources and the scans of each source are shuffled with ``seed``, then dealt round-robin (continuing
    across sources) so every fold mixes sources and fold sizes differ by at most one; all entries of one
    scan share a fold.

    Args:
        cases: dicts with ``scan_id`` and ``source`` (manifest cases).
        n_folds: number of folds, at least 2.
        seed: the shuffle's seed; the result depends on it and on the set of cases only.

    Returns:
        scan id -> fold (0..n_folds-1).

    Raises:
        ValueError: ``n_folds`` < 2.
    """
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
    pseudo: str = "accepted",
    include_held_out: bool = False,
    ignore_margin_mm: float = DEFAULT_MARGIN_MM,
    n_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Export images, label maps and a MONAI datalist with k-fold cross-validation folds into ``out``.

    ``datalist.json`` has ``classes`` (the exported classes in label order, once) and ``training``: one
    dict per scan with ``image``, ``label`` (paths relative to ``out``, as
    ``monai.data.load_decathlon_datalist`` expects), ``fold``, ``scan_id``, ``source``, and ``annotated`` /
    ``present``: 0/1 vectors with one entry per class of ``classes`` (the same length for every item, so a
    plain ``monai.data.DataLoader`` batches scans of any sources; a partial-label loss reads ``annotated``
    as its channel mask); plus ``labels``, ``ignore_label``, ``n_folds`` and ``seed``.

    Args:
        ws, out, sources, classes, pseudo, include_held_out, ignore_margin_mm, progress, on_progress: as in
            :func:`workbench.export.nnunet.export_nnunet`.
        n_folds: number of cross-validation folds (:func:`assign_folds`).
        seed: the fold shuffle's seed.

    Returns:
        The manifest (also ``out/manifest.json``); cases that could not be read are left out of the
        datalist and listed under ``"skipped"``.
    """
    out = Path(out)
    plan = plan_export(ws, sources, classes, pseudo, include_held_out, ignore_margin_mm)
    written = write_cases(plan, out, lambda c: f"{c}.nii.gz", "export monai", progress, on_progress)
    cases = written[0]
    folds = assign_folds(cases, n_folds, seed)
    classes_in_order = exported_classes(plan.values)
    datalist = {
        "description": "CT curation workbench export; ignore_label marks voxels where a class the scan "
        "does not know may be",
        "labels": plan.values,
        "classes": classes_in_order,
        "ignore_label": plan.values[IGNORE],
        "n_folds": n_folds,
        "seed": seed,
        "training": [_item(c, folds[c["scan_id"]], classes_in_order) for c in cases],
    }
    extra = {"datalist.json": write_json(datalist, out / "datalist.json")}
    params = export_parameters(plan, sources, n_folds=n_folds, seed=seed)
    manifest = build_manifest("monai_datalist", params, plan, written, extra)
    for c in cases:
        c["fold"] = folds[c["scan_id"]]
    write_json(manifest, out / "manifest.json")
    return manifest


def _item(case: dict[str, Any], fold: int, classes: list[str]) -> dict[str, Any]:
    """One datalist item: files, fold, scan, and the fixed-length 0/1 class vectors."""
    return {
        "image": case["image"],
        "label": case["label"],
        "fold": fold,
        "scan_id": case["scan_id"],
        "source": case["source"],
        "annotated": [int(c in case["annotated"]) for c in classes],
        "present": [int(c in case["present"]) for c in classes],
    }
