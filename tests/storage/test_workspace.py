"""The workspace folder: its subfolders and garbage collection that never loses a committed mask."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.synthetic import synthetic_scan
from storage.workspace import ORPHAN_MIN_AGE_S, Workspace


def _commit(ws: Workspace, key: str) -> None:
    scan = synthetic_scan("src:a", shape=(2, 2, 2), hu_range=None)
    record = LabelSetRecord(id=key, scan_id=scan.id, version=None, origin="original", mask_key=key)
    ws.catalog.add_label_set(record, {n: "not_annotated" for n in class_names()}, [], scan=scan)


def _write(ws: Workspace, key: str, age_s: float = 0.0) -> Path:
    ws.masks.write_label_set(key, {"liver": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    path = ws.masks.path(key)
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


@pytest.mark.parametrize("name", ["maps", "models", "reports", "exports", "imports", "slicer", "demo_data"])
def test_every_folder_lies_inside_the_workspace(tmp_path: Path, name: str) -> None:
    ws = Workspace.open(tmp_path / "ws")
    folder = getattr(ws, name)
    assert folder.parent == ws.root and folder.name not in ("masks", "catalog.duckdb")


def test_collect_garbage_removes_only_old_unreferenced_masks(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    committed = _write(ws, "ls-committed", age_s=10 * ORPHAN_MIN_AGE_S)
    _commit(ws, "ls-committed")
    fresh_orphan = _write(ws, "ls-fresh")
    old_orphan = _write(ws, "ls-old", age_s=2 * ORPHAN_MIN_AGE_S)
    assert ws.collect_garbage(dry_run=True) == [old_orphan]
    assert old_orphan.exists()
    assert ws.collect_garbage() == [old_orphan]
    assert committed.exists() and fresh_orphan.exists() and not old_orphan.exists()
    assert ws.collect_garbage(min_age_s=0) == [fresh_orphan]
    assert ws.masks.keys() == ["ls-committed"]


def test_collect_garbage_keeps_a_mask_committed_while_it_runs(tmp_path: Path, monkeypatch) -> None:
    """The catalog is read again just before each removal: a writer that commits between the first
    read and the removal keeps its file."""
    ws = Workspace.open(tmp_path / "ws")
    path = _write(ws, "ls-late", age_s=2 * ORPHAN_MIN_AGE_S)
    real = ws.catalog.mask_keys
    calls: list[int] = []

    def mask_keys() -> set[str]:
        calls.append(1)
        if len(calls) == 2:  # the re-check: the writer committed meanwhile
            _commit(ws, "ls-late")
        return real()

    monkeypatch.setattr(ws.catalog, "mask_keys", mask_keys)
    assert ws.collect_garbage() == []
    assert path.exists()
