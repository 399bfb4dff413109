"""Fixtures of the storage tests: label sets committed the way the workbench's writers commit them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harmonize.stats import class_stats
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace

SHAPE = (6, 5, 4)


def blob(lo: int, size: int = 2, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A bool cube of ``size`` voxels per side starting at ``(lo, lo, lo)``."""
    m = np.zeros(shape, bool)
    m[lo : lo + size, lo : lo + size, lo : lo + size] = True
    return m


def _commit(ws: Workspace, key: str, masks: dict[str, np.ndarray], scan_id: str | None = None) -> str:
    """Write ``masks`` as label set ``key`` (mask file first, then one catalog transaction with coverage
    and statistics, as ingest, pseudo-labelling and corrections do); returns the scan id."""
    shape = next(iter(masks.values())).shape
    scan_id = scan_id or f"src:{key}"
    ws.masks.write_label_set(key, masks, shape)
    coverage = {n: "not_annotated" for n in class_names()}
    stats = []
    for name, m in masks.items():
        coverage[name] = "annotated_present" if m.any() else "annotated_absent"
        if m.any():
            stats.append(class_stats(name, m, np.eye(4)).as_dict())
    scan = None if ws.catalog.scan_row(scan_id) else synthetic_scan(scan_id, shape=shape, hu_range=None)
    record = LabelSetRecord(id=key, scan_id=scan_id, version=None, origin="original", mask_key=key)
    ws.catalog.add_label_set(record, coverage, stats, scan=scan)
    return scan_id


@pytest.fixture
def commit() -> Callable[..., str]:
    """``commit(ws, key, masks, scan_id=None)``: a committed label set holding ``masks``."""
    return _commit


@pytest.fixture
def small_ws(tmp_path: Path) -> Workspace:
    """A workspace with two scans: ``ls-a`` (liver + spleen) and ``ls-b`` (liver, an empty spleen)."""
    ws = Workspace.open(tmp_path / "ws")
    _commit(ws, "ls-a", {"liver": blob(0, 3), "spleen": blob(3)})
    _commit(ws, "ls-b", {"liver": blob(1), "spleen": np.zeros(SHAPE, bool)})
    return ws
