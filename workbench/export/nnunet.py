"""The nnU-Net v2 export: a raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json``) of label maps.

Label values, the ignore label for partial labels and the overlap rule are those of
:mod:`workbench.export.labelmap`; name the output folder ``DatasetXXX_Name`` for nnU-Net.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storage.workspace import Workspace
from workbench.export.labelmap import (
    ProgressFn,
    build_manifest,
    export_parameters,
    label_values,
    training_entries,
    write_cases,
    write_json,
)


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
        The manifest (also ``out/manifest.json``); cases that could not be read are left out of the
        dataset and listed under ``"skipped"`` (:mod:`workbench.export.skipped`).
    """
    out = Path(out)
    entries, wanted = training_entries(ws, sources, classes, origins)
    values = label_values(wanted)
    cases, skipped = write_cases(
        entries, values, out, lambda c: f"{c}_0000.nii.gz", "export nnunet", progress, on_progress
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
    extra = {"dataset.json": write_json(dataset, out / "dataset.json")}
    params = export_parameters(sources, wanted, origins)
    manifest = build_manifest("nnunet_v2", params, values, cases, extra, skipped)
    write_json(manifest, out / "manifest.json")
    return manifest
