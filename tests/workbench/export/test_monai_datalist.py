"""MONAI datalist export: seeded folds grouped by scan and mixed across sources, datalist paths, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage.workspace import Workspace
from workbench.export import assign_folds, export_monai, verify_manifest


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


def test_monai_folds_are_seeded_grouped_and_cover_every_scan(ws: Workspace, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    m1 = export_monai(
        ws,
        tmp_path / "a",
        n_folds=3,
        seed=7,
        progress=False,
        on_progress=lambda d, t, c: calls.append((d, t)),
    )
    datalist = json.loads((tmp_path / "a" / "datalist.json").read_text())
    items = datalist["training"]
    assert len(items) == len(m1["cases"]) == calls[-1][0] == calls[-1][1]
    assert {i["fold"] for i in items} == {0, 1, 2}
    assert datalist["ignore_label"] == datalist["labels"]["ignore"] == 33
    for i in items:
        assert (tmp_path / "a" / i["image"]).is_file() and (tmp_path / "a" / i["label"]).is_file()
    folds = {i["scan_id"]: i["fold"] for i in items}
    assert assign_folds(m1["cases"], 3, 7) == folds
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    assert verify_manifest(tmp_path / "a") == []


def test_fold_assignment_depends_on_the_seed_only() -> None:
    cases = [{"scan_id": f"src{i % 4}:{i}", "source": f"src{i % 4}"} for i in range(40)]
    a, b = assign_folds(cases, 5, 1), assign_folds(list(reversed(cases)), 5, 1)
    assert a == b
    assert a != assign_folds(cases, 5, 2)
    assert sorted(np.bincount(list(a.values())).tolist()) == [8] * 5
    for src in range(4):  # every fold mixes sources: each source is spread over the folds
        assert len({f for s, f in a.items() if s.startswith(f"src{src}:")}) == 5


def test_folds_group_entries_of_one_scan() -> None:
    cases = [{"scan_id": f"s:{i // 2}", "source": "s"} for i in range(10)]  # two entries per scan
    folds = assign_folds(cases, 2, 0)
    assert len(folds) == 5 and set(folds.values()) == {0, 1}
    with pytest.raises(ValueError, match="n_folds"):
        assign_folds(cases, 1, 0)
