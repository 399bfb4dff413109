"""The held-out split: stored, stratified by source and stable; later scans assigned by hash; bad fractions
refused. (``add_plain_scans`` is in this folder's conftest.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from storage.workspace import Workspace
from workbench.learning import split

AddPlainScans = Callable[[Workspace, dict[str, int]], None]


def test_split_is_stored_stratified_and_stable(tmp_path: Path, add_plain_scans: AddPlainScans) -> None:
    ws = Workspace.open(tmp_path / "ws")
    add_plain_scans(ws, {"big": 10, "mid": 5, "two": 2, "one": 1})
    held = split.held_out_split(ws, fraction=0.2, seed=3)
    per_source = pd.Series([s.split(":")[0] for s in held]).value_counts().to_dict()
    # floor(0.2 n + 0.5) per source: 10 -> 2, 5 -> 1, 2 -> 0, 1 -> 0
    assert per_source == {"big": 2, "mid": 1}
    rows = ws.catalog.query("SELECT * FROM split")
    assert len(rows) == 18 and set(rows["method"]) == {"stratified"}
    assert set(rows.loc[rows["split"] == "held_out", "scan_id"]) == held
    # Within a source, the held-out scans are those with the smallest hash of (seed, scan id).
    big = sorted((s for s in rows["scan_id"] if s.startswith("big:")), key=lambda s: split.unit_hash(3, s))
    assert set(big[:2]) == {s for s in held if s.startswith("big:")}
    # Stable: later calls (other fraction, other seed, a reopened workspace) return the stored split.
    assert split.held_out_split(ws, fraction=0.5, seed=99) == held
    assert split.held_out_split(Workspace.open(tmp_path / "ws")) == held
    assert split.training_scan_ids(ws) == set(rows["scan_id"]) - held


def test_new_scans_are_assigned_by_hash_without_moving_old_ones(
    tmp_path: Path, add_plain_scans: AddPlainScans
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    add_plain_scans(ws, {"big": 10})
    held = split.held_out_split(ws, fraction=0.3, seed=1)
    before = ws.catalog.split_assignments()
    add_plain_scans(ws, {"late": 30})
    held2 = split.held_out_split(ws, fraction=0.3, seed=1)
    after = ws.catalog.split_assignments()
    assert {s: after[s] for s in before} == before
    assert held2 & {s for s in before} == held
    late = [s for s in after if s.startswith("late:")]
    assert {s for s in late if after[s] == "held_out"} == {s for s in late if split.unit_hash(1, s) < 0.3}
    assert 0 < len(held2 - held) < 30
    methods = ws.catalog.query("SELECT scan_id, method FROM split").set_index("scan_id")["method"]
    assert set(methods[late]) == {"hash"}


def test_choose_split_is_independent_of_order() -> None:
    scans = {f"s{i % 3}:{i}": f"s{i % 3}" for i in range(30)}
    reordered = dict(reversed(list(scans.items())))
    assert split.choose_split(scans, 0.25, 7) == split.choose_split(reordered, 0.25, 7)
    assert split.choose_split(scans, 0.25, 7) != split.choose_split(scans, 0.25, 8)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_fraction_is_refused(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        split.held_out_split(Workspace.open(tmp_path / "ws"), fraction=fraction)
