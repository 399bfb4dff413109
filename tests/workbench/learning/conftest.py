"""Fixtures shared by the learning tests: a two-source workspace, a random vocabulary, and helpers that
write synthetic scans and label sets straight into a catalog (for the split and the evaluation)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.model.text import TextVocabulary

PRESENT, ABSENT, NOT_ANN = "annotated_present", "annotated_absent", "not_annotated"
#: Grid of the synthetic scans of :func:`add_scan`.
SHAPE = (14, 12, 10)
SPACING = (1.5, 2.0, 3.0)


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    """A workspace with one ingested phantom case of kits23 and one of lits."""
    for source, seed in (("kits23", 41), ("lits", 42)):
        write_native(
            make_phantom(seed, shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0)),
            get_protocol(source),
            tmp_path / source,
            "case01",
        )
    ws = Workspace.open(tmp_path / "ws")
    for source in ("kits23", "lits"):
        ingest(ws, source, tmp_path / source, progress=False)
    return ws


@pytest.fixture()
def random_vocab() -> TextVocabulary:
    """A vocabulary of every class with seeded random embeddings."""
    names = tuple(class_names())
    emb = np.random.default_rng(0).standard_normal((len(names), 512))
    return TextVocabulary(names, names, "V1", "random-test-embeddings", "none", emb)


def _add_scan(
    ws: Workspace, source: str, case: str, masks: dict[str, np.ndarray], annotated: set[str]
) -> str:
    """A scan with an original label set: ``annotated`` classes known, present where ``masks`` has them."""
    scan_id = f"{source}:{case}"
    affine = np.diag([*SPACING, 1.0])
    ls_id = f"ls-orig-{source}-{case}"
    ws.masks.write_label_set(ls_id, {n: m for n, m in masks.items() if m.any()}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov.update({n: PRESENT if n in masks and masks[n].any() else ABSENT for n in annotated})
    scan = synthetic_scan(scan_id, shape=SHAPE, affine=affine)
    record = LabelSetRecord(id=ls_id, scan_id=scan_id, version=1, origin="original", mask_key=ls_id)
    ws.catalog.add_label_set(record, cov, [], scan=scan)
    return scan_id


def _add_pseudo(ws: Workspace, scan_id: str, masks: dict[str, np.ndarray], run_id: str) -> str:
    """A pseudo label set of ``run_id`` predicting exactly the classes in ``masks``."""
    version = int(ws.catalog.label_sets(scan_id)["version"].max()) + 1
    ls_id = f"ls-pseudo-{run_id}-{scan_id.replace(':', '-')}-{version}"
    ws.masks.write_label_set(ls_id, {n: m for n, m in masks.items() if m.any()}, SHAPE)
    cov = {n: NOT_ANN for n in class_names()}
    cov.update({n: PRESENT if m.any() else ABSENT for n, m in masks.items()})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=version, origin="pseudo", mask_key=ls_id, run_id=run_id
        ),
        cov,
        [],
    )
    return ls_id


def _add_plain_scans(ws: Workspace, counts: dict[str, int]) -> None:
    """``counts[source]`` scans per source, each annotating the liver as absent."""
    with ws.catalog.session():  # one connection for the burst of writes
        for source, n in counts.items():
            for i in range(n):
                _add_scan(ws, source, f"c{i:03d}", {}, {"liver"})


AddScan = Callable[[Workspace, str, str, dict[str, np.ndarray], set[str]], str]
AddPseudo = Callable[[Workspace, str, dict[str, np.ndarray], str], str]
AddPlainScans = Callable[[Workspace, dict[str, int]], None]


@pytest.fixture(scope="session")
def add_scan() -> AddScan:
    """``add_scan(ws, source, case, masks, annotated) -> scan id``: a scan on the :data:`SHAPE` grid with
    an original label set."""
    return _add_scan


@pytest.fixture(scope="session")
def add_pseudo() -> AddPseudo:
    """``add_pseudo(ws, scan_id, masks, run_id) -> label set id``: a pseudo label set of a run."""
    return _add_pseudo


@pytest.fixture(scope="session")
def add_plain_scans() -> AddPlainScans:
    """``add_plain_scans(ws, {source: n})``: n scans per source."""
    return _add_plain_scans
