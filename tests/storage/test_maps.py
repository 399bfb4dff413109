"""The uncertainty-map store: the file layout of existing workspaces, atomic writes, resampling onto the
scan's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from storage.catalog import LabelSetRecord
from storage.maps import (
    legacy_map_path,
    load_uncertainty_map,
    map_file_path,
    uncertainty_map_path,
    write_uncertainty_map,
)
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace


def test_uncertainty_map_round_trip(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    entropy = np.random.default_rng(0).random((5, 6, 7)).astype(np.float16)
    path = write_uncertainty_map(ws, "run-1", "kits23:case_00001", entropy, affine, ["spleen"])
    assert path == ws.root / "uncertainty" / "run-1" / "kits23__case_00001.npz"
    assert path == uncertainty_map_path(ws, "run-1", "kits23:case_00001")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    got, got_affine = load_uncertainty_map(ws, "run-1", "kits23:case_00001", on_original_grid=False)
    np.testing.assert_array_equal(got, entropy)
    np.testing.assert_array_equal(got_affine, affine)
    with np.load(path) as z:
        assert list(z["classes"]) == ["spleen"]

    with pytest.raises(HarmonizeError, match="no uncertainty map"):
        load_uncertainty_map(ws, "run-1", "other:scan")
    # A map whose scan is not in the catalog cannot be put on its grid.
    with pytest.raises(HarmonizeError, match="not in the catalog"):
        load_uncertainty_map(ws, "run-1", "kits23:case_00001")


def test_a_map_is_resampled_onto_the_original_grid(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    # An LPS scan of 2 mm voxels; the map lies on a RAS grid of 8 mm voxels over the same region.
    orig = np.array([[-2.0, 0, 0, 38.0], [0, -2.0, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
    scan = synthetic_scan("src:case", shape=(20, 16, 12), affine=orig, axcodes="LPS")
    label_set = LabelSetRecord("ls-1", "src:case", None, "original", "ls-1")
    ws.catalog.add_label_set(label_set, {}, [], scan=scan)
    assert ws.catalog.scan_grid("src:case") == ((20, 16, 12), tuple(float(v) for v in orig.ravel()))
    assert ws.catalog.scan_grid("src:none") is None
    low = np.diag([8.0, 8.0, 8.0, 1.0])
    low[:3, 3] = (0.0, 0.0, -10.0)
    entropy = np.zeros((6, 5, 4), np.float16)
    entropy[:3] = 0.5  # x = 0 .. 16 mm
    write_uncertainty_map(ws, "run-1", "src:case", entropy, low, ["liver"])
    got, got_affine = load_uncertainty_map(ws, "run-1", "src:case")
    assert got.shape == (20, 16, 12) and got.dtype == np.float16
    np.testing.assert_array_equal(got_affine, orig)
    # Voxel i lies at x = 38 - 2 i mm: x <= 16 (i >= 11) is hot, x >= 24 (i <= 7) is cold.
    assert float(got[11:].min()) == pytest.approx(0.5) and float(got[:8].max()) == 0.0


def test_hostile_case_ids_get_one_map_each(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    scans = ["kits23:case 1", "kits23:case_1", "kits23:case(1)"]
    for n, scan in enumerate(scans):
        write_uncertainty_map(ws, "run-1", scan, np.full((2, 2, 2), n, np.float16), np.eye(4), ["liver"])
    names = sorted(p.name for p in (ws.maps / "run-1").iterdir())
    assert len(names) == 3 and "kits23__case_1.npz" in names
    assert names == sorted(map_file_path(ws, "run-1", s).name for s in scans)
    for n, scan in enumerate(scans):
        got, _ = load_uncertainty_map(ws, "run-1", scan, on_original_grid=False)
        assert float(got.max()) == n
        with np.load(uncertainty_map_path(ws, "run-1", scan)) as z:
            assert str(z["scan_id"]) == scan and str(z["run_id"]) == "run-1"


def test_maps_written_under_the_old_name_are_still_found(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    scan = "kits23:case 1"
    old = ws.maps / "run-1" / "kits23__case_1.npz"  # safe_name of the whole id, ':' -> '__'
    assert legacy_map_path(ws, "run-1", scan) == old != map_file_path(ws, "run-1", scan)
    old.parent.mkdir(parents=True)
    ones = np.ones((2, 2, 2), np.float16)
    np.savez_compressed(old, entropy=ones, affine=np.eye(4), classes=np.array(["x"]))
    assert uncertainty_map_path(ws, "run-1", scan) == old
    got, _ = load_uncertainty_map(ws, "run-1", scan, on_original_grid=False)
    assert float(got.max()) == 1.0
    # a new map goes under the unique name and wins from then on
    new = write_uncertainty_map(ws, "run-1", scan, np.zeros((2, 2, 2), np.float16), np.eye(4), ["x"])
    assert new == map_file_path(ws, "run-1", scan) == uncertainty_map_path(ws, "run-1", scan)
    assert float(load_uncertainty_map(ws, "run-1", scan, on_original_grid=False)[0].max()) == 0.0


def test_the_old_name_is_not_taken_when_it_holds_another_scans_map(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    # "kits23:case_1"'s new map has the old name of "kits23:case 1"; it names its scan, so it is not taken
    write_uncertainty_map(ws, "run-1", "kits23:case_1", np.ones((2, 2, 2), np.float16), np.eye(4), ["x"])
    assert not uncertainty_map_path(ws, "run-1", "kits23:case 1").is_file()
    with pytest.raises(HarmonizeError, match="no uncertainty map"):
        load_uncertainty_map(ws, "run-1", "kits23:case 1")
