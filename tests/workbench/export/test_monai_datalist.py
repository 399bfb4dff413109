"""MONAI datalist export: seeded folds grouped by scan and mixed across sources, datalist paths, manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_a_plain_monai_dataloader_batches_items_of_two_sources(mixed_ws: Any, tmp_path: Path) -> None:
    """Per-class fields are fixed-length 0/1 vectors (one entry per exported class, the class list once at
    the top), so MONAI's default collate batches a kits23 and a lits item together."""
    monai_data = pytest.importorskip("monai.data")
    transforms = pytest.importorskip("monai.transforms")
    out = tmp_path / "m"
    export_monai(mixed_ws.ws, out, classes=mixed_ws.classes, n_folds=2, progress=False)
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["classes"] == ["spleen", "kidney_right", "kidney_left", "liver"]  # label order
    by_source = {i["source"]: i for i in datalist["training"]}
    assert by_source["kits23"]["annotated"] in ([0, 1, 1, 0], [0, 1, 1, 1])  # liver accepted on one
    assert by_source["lits"]["annotated"] == [0, 0, 0, 1]
    assert {len(i["annotated"]) for i in datalist["training"]} == {4}
    items = monai_data.load_decathlon_datalist(str(out / "datalist.json"), base_dir=str(out))
    pair = [next(i for i in items if i["source"] == s) for s in ("kits23", "lits")]
    keys = ["image", "label"]
    pipeline = transforms.Compose(
        [
            transforms.LoadImaged(keys=keys, ensure_channel_first=True),
            transforms.ResizeWithPadOrCropd(keys=keys, spatial_size=(16, 16, 8)),
        ]
    )
    loader = monai_data.DataLoader(monai_data.Dataset(pair, transform=pipeline), batch_size=2)
    (batch,) = list(loader)
    assert tuple(batch["image"].shape) == (2, 1, 16, 16, 8) and tuple(batch["label"].shape) == (
        2,
        1,
        16,
        16,
        8,
    )
    annotated = np.stack([np.asarray(a) for a in batch["annotated"]], axis=1)  # collate: one tensor per class
    assert annotated.shape == (2, 4)
    np.testing.assert_array_equal(annotated[1], [0, 0, 0, 1])
    assert list(batch["source"]) == ["kits23", "lits"]
