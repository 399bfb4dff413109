"""The nnU-Net v2 export: a raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json``) of label maps.

Label values, the ignore label for partial labels and the overlap rule are those of
:mod:`workbench.export.labelmap`; name the output folder ``DatasetXXX_Name`` for nnU-Net. ``dataset.json``
follows nnU-Net v2's conventions (``channel_names`` ``{"0": "CT"}``, ``labels`` with ``ignore`` the
highest, consecutive value, ``numTraining``, ``file_ending`` ``.nii.gz``), and the dataset passes
``nnunetv2.experiment_planning.verify_dataset_integrity``. The manifest holds the CT statistics over
annotated voxels that should replace nnU-Net's (``docs/exports.md``,
:func:`workbench.export.intensity.patch_intensity_properties`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storage.workspace import Workspace
from workbench.export.ignore import DEFAULT_MARGIN_MM
from workbench.export.labelmap import (
    ProgressFn,
    build_manifest,
    export_parameters,
    plan_export,
    write_cases,
    write_json,
)


def export_nnunet(
    ws: Workspace,
    out: str | Path,
    *,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    pseudo: str = "accepted",
    include_held_out: bool = False,
    ignore_margin_mm: float = DEFAULT_MARGIN_MM,
    dataset_name: str = "CTWorkbench",
    progress: bool = True,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Export an nnU-Net v2 raw dataset into ``out`` (name it ``DatasetXXX_Name`` for nnU-Net).

    Args:
        ws: the workspace.
        out: dataset folder (created).
        sources / classes: only these (default: all sources, all 32 classes).
        pseudo: which pseudo-labels fill partial labels: ``accepted`` (reviewed and accepted; default),
            ``all`` (every one not rejected) or ``none``.
        include_held_out: keep the held-out scans (default: left out, the export is for training).
        ignore_margin_mm: ignore margin around an unknown class's pseudo-label, mm
            (:mod:`workbench.export.ignore`).
        dataset_name: ``name`` in dataset.json.
        progress: tqdm bar on stderr; on_progress: called ``(done, total, case)`` (the app's bar).

    Returns:
        The manifest (also ``out/manifest.json``); cases that could not be read are left out of the
        dataset and listed under ``"skipped"`` (:mod:`workbench.export.skipped`).
    """
    out = Path(out)
    plan = plan_export(ws, sources, classes, pseudo, include_held_out, ignore_margin_mm)
    written = write_cases(plan, out, lambda c: f"{c}_0000.nii.gz", "export nnunet", progress, on_progress)
    dataset = {
        "name": dataset_name,
        "description": "Harmonized abdominal CT labels exported by the CT curation workbench; partial "
        "labels use the ignore label (see manifest.json)",
        "channel_names": {"0": "CT"},
        "labels": plan.values,
        "numTraining": len(written[0]),
        "file_ending": ".nii.gz",
    }
    extra = {"dataset.json": write_json(dataset, out / "dataset.json")}
    manifest = build_manifest("nnunet_v2", export_parameters(plan, sources), plan, written, extra)
    write_json(manifest, out / "manifest.json")
    return manifest
