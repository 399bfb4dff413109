"""Fixtures of the export tests: a workspace of scans with hostile case names, the three exporters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from storage.catalog import LabelSetRecord, new_label_set_id
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace
from workbench.export import export_abdomenatlas, export_monai, export_nnunet

#: Three case folders that one sanitiser used to map to one name.
HOSTILE_CASES = ("case 1", "case_1", "case(1)")
SHAPE = (12, 10, 8)

Exporter = Callable[[Workspace, Path], dict[str, Any]]

#: Each export with its defaults; ``export_monai`` with 2 folds (3 scans).
EXPORTERS: dict[str, Exporter] = {
    "abdomenatlas": lambda ws, out: export_abdomenatlas(ws, out, progress=False),
    "nnunet": lambda ws, out: export_nnunet(ws, out, progress=False),
    "monai": lambda ws, out: export_monai(ws, out, n_folds=2, progress=False),
}


def add_scan(ws: Workspace, scan_id: str, seed: int) -> str:
    """Add one KiTS-like scan with a real CT file and an original label set (two kidneys present,
    tumour and cyst absent).

    Args:
        ws: the workspace.
        scan_id: ``kits23:<case>``.
        seed: the CT's noise.

    Returns:
        The label set id (also its mask key).
    """
    ct = np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)
    image = ws.root / "images" / f"{seed}.nii.gz"
    image.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct, np.eye(4)), image)
    scan = dataclasses.replace(synthetic_scan(scan_id, shape=SHAPE), image_path=str(image))
    right, left = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    right[1:4, 2:5, 2:6] = True
    left[7:10, 2:5, 2:6] = True
    ls_id = new_label_set_id()
    ws.masks.write_label_set(ls_id, {"kidney_right": right, "kidney_left": left}, SHAPE)
    coverage = {
        "kidney_right": "annotated_present",
        "kidney_left": "annotated_present",
        "kidney_tumor": "annotated_absent",
        "kidney_cyst": "annotated_absent",
    }
    ws.catalog.add_label_set(LabelSetRecord(ls_id, scan_id, None, "original", ls_id), coverage, [], scan=scan)
    return ls_id


@pytest.fixture
def hostile_ws(tmp_path: Path) -> Workspace:
    """A workspace of three kits23 scans whose case ids are :data:`HOSTILE_CASES`."""
    ws = Workspace.open(tmp_path / "ws")
    for seed, case in enumerate(HOSTILE_CASES):
        add_scan(ws, f"kits23:{case}", seed)
    return ws


@pytest.fixture
def exporters() -> dict[str, Exporter]:
    """format -> :data:`EXPORTERS`' call of it (tests parametrize over ``abdomenatlas, monai, nnunet``)."""
    return EXPORTERS


@pytest.fixture
def hostile_cases() -> tuple[str, ...]:
    """The case ids of :func:`hostile_ws` (:data:`HOSTILE_CASES`)."""
    return HOSTILE_CASES
