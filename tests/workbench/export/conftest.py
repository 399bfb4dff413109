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

#: Each export with its defaults, held-out scans kept (these tests are about names and damage, and the
#: three scans of one source hold one out); ``export_monai`` with 2 folds (3 scans).
EXPORTERS: dict[str, Exporter] = {
    "abdomenatlas": lambda ws, out: export_abdomenatlas(ws, out, include_held_out=True, progress=False),
    "nnunet": lambda ws, out: export_nnunet(ws, out, include_held_out=True, progress=False),
    "monai": lambda ws, out: export_monai(ws, out, include_held_out=True, n_folds=2, progress=False),
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


# ------------------------------------------------------------- a mixed, partially labelled workspace

#: Grid and spacing (mm) of :func:`mixed_ws`'s scans; the body is a box of 40 HU in -1000 HU air.
MIXED_SHAPE = (24, 20, 12)
MIXED_SPACING = 2.0
BODY = (slice(2, 22), slice(2, 18), slice(0, 12))
#: The classes of a mixed export: kits23 knows the kidneys, lits the liver, nobody the spleen.
MIXED_CLASSES = ["spleen", "kidney_right", "kidney_left", "liver"]


def box(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """A bool mask on :data:`MIXED_SHAPE`, True on ``[lo, hi)``."""
    m = np.zeros(MIXED_SHAPE, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


#: Every class's true place in every mixed scan (the pseudo-labels predict exactly these).
ORGANS = {
    "kidney_right": box((4, 4, 2), (8, 8, 6)),  # 64 voxels
    "kidney_left": box((16, 4, 2), (20, 8, 6)),  # 64
    "liver": box((4, 10, 2), (12, 16, 8)),  # 288
    "spleen": box((16, 12, 4), (19, 15, 7)),  # 27
}
KNOWN = {"kits23": ("kidney_right", "kidney_left"), "lits": ("liver",)}


@dataclasses.dataclass
class MixedWorkspace:
    """:func:`mixed_ws`: the workspace, its held-out scans, and the pseudo-label sets and reviews.

    Args:
        ws: the workspace (3 kits23 + 3 lits scans; the split holds out one per source).
        held_out: the held-out scan ids.
        pseudo: scan id -> its pseudo label set id (predicting every class but its source's own).
        accepted: (scan, class) a reviewer accepted: the liver of the first kits23 training scan.
        rejected: (scan, class) a reviewer rejected: the liver of the second kits23 training scan.
        classes: :data:`MIXED_CLASSES`; organs: :data:`ORGANS` (every scan's true masks); body: the body
            box as a mask; spacing_mm: the isotropic spacing.
    """

    ws: Workspace
    held_out: set[str]
    pseudo: dict[str, str]
    accepted: tuple[str, str]
    rejected: tuple[str, str]
    classes: list[str] = dataclasses.field(default_factory=lambda: list(MIXED_CLASSES))
    organs: dict[str, np.ndarray] = dataclasses.field(default_factory=lambda: dict(ORGANS))
    body: np.ndarray = dataclasses.field(default_factory=lambda: _body())
    spacing_mm: float = MIXED_SPACING


def _body() -> np.ndarray:
    m = np.zeros(MIXED_SHAPE, bool)
    m[BODY] = True
    return m


def _ct(path: Path) -> np.ndarray:
    ct = np.full(MIXED_SHAPE, -1000, np.int16)
    ct[BODY] = 40
    for i, m in enumerate(ORGANS.values()):
        ct[m] = 60 + 20 * i  # 60, 80, 100, 120 HU
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct, np.diag([MIXED_SPACING] * 3 + [1.0])), path)
    return ct


def _label_set(ws: Workspace, scan_id: str, origin: str, masks: dict[str, np.ndarray], **kw: Any) -> str:
    ls_id = new_label_set_id()
    ws.masks.write_label_set(ls_id, masks, MIXED_SHAPE)
    coverage = {n: "annotated_present" for n in masks}
    ws.catalog.add_label_set(LabelSetRecord(ls_id, scan_id, None, origin, ls_id, **kw), coverage, [])
    return ls_id


@pytest.fixture
def mixed_ws(tmp_path: Path) -> MixedWorkspace:
    """Three kits23 scans (kidneys known) and three lits scans (liver known), every one with a real CT and
    a pseudo-label of every class its source does not annotate; the split (fraction 0.2) holds out one
    scan per source; on kits23's first training scan a reviewer accepted the liver, on its second rejected
    it."""
    from workbench.learning.split import held_out_split
    from workbench.review import record_decision

    ws = Workspace.open(tmp_path / "ws")
    affine = np.diag([MIXED_SPACING] * 3 + [1.0])
    pseudo = {}
    for source, known in KNOWN.items():
        for i in range(3):
            scan_id = f"{source}:case{i}"
            image = ws.root / "images" / f"{source}_{i}.nii.gz"
            _ct(image)
            scan = dataclasses.replace(
                synthetic_scan(scan_id, shape=MIXED_SHAPE, affine=affine), image_path=str(image)
            )
            ls_id = new_label_set_id()
            ws.masks.write_label_set(ls_id, {n: ORGANS[n] for n in known}, MIXED_SHAPE)
            coverage = {n: "annotated_present" for n in known}
            ws.catalog.add_label_set(
                LabelSetRecord(ls_id, scan_id, None, "original", ls_id), coverage, [], scan=scan
            )
            others = {n: m for n, m in ORGANS.items() if n not in known}
            pseudo[scan_id] = _label_set(ws, scan_id, "pseudo", others, run_id="run-test")
    held = held_out_split(ws)
    kits_train = sorted(s for s in pseudo if s.startswith("kits23:") and s not in held)
    accepted, rejected = (kits_train[0], "liver"), (kits_train[1], "liver")
    record_decision(ws, *accepted, pseudo[accepted[0]], "accept", "Dr Ada")
    record_decision(ws, *rejected, pseudo[rejected[0]], "reject", "Dr Ada")
    return MixedWorkspace(ws, held, pseudo, accepted, rejected)
