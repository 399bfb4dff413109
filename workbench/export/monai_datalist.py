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
from workbench.export.labelmap import (
    IGNORE,
    ProgressFn,
    build_manifest,
    export_parameters,
    label_values,
    training_entries,
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
    ``ignore_label``, ``n_folds`` and ``seed``.

    Args:
        ws, out, sources, classes, origins, progress, on_progress: as in
            :func:`workbench.export.nnunet.export_nnunet`.
        n_folds: number of cross-validation folds (:func:`assign_folds`).
        seed: the fold shuffle's seed.

    Returns:
        The manifest (also ``out/manifest.json``); cases that could not be read are left out of the
        datalist and listed under ``"skipped"``.
    """
    out = Path(out)
    entries, wanted = training_entries(ws, sources, classes, origins)
    values = label_values(wanted)
    cases, skipped = write_cases(
        entries, values, out, lambda c: f"{c}.nii.gz", "export monai", progress, on_progress
    )
    folds = assign_folds(cases, n_folds, seed)
    datalist = {
        "description": "CT curation workbench export; ignore_label marks voxels of unknown classes",
        "labels": values,
        "ignore_label": values[IGNORE],
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
    extra = {"datalist.json": write_json(datalist, out / "datalist.json")}
    params = export_parameters(sources, wanted, origins, n_folds=n_folds, seed=seed)
    manifest = build_manifest("monai_datalist", params, values, cases, extra, skipped)
    for c in cases:
        c["fold"] = folds[c["scan_id"]]
    write_json(manifest, out / "manifest.json")
    return manifest
