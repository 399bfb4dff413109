"""``storage.backup``: consistent snapshots while others write, verified restores that lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storage import backup as backup_module
from storage.backup import (
    BackupError,
    backup_workspace,
    read_manifest,
    repair_masks,
    restore_backup,
    verify_backup,
)
from storage.check import check_workspace
from storage.files import file_sha256
from storage.maps import map_file_path, write_uncertainty_map
from storage.schema import SCHEMA_VERSION
from storage.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SHAPE = (6, 5, 4)

#: Everything that makes up a catalog's schema, as DuckDB lists it.
_SCHEMA_QUERIES = {
    "tables": "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = current_database()",
    "views": "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal",
    "indexes": "SELECT index_name, table_name FROM duckdb_indexes() WHERE database_name = current_database()",
    "macros": "SELECT function_name FROM duckdb_functions() WHERE database_name = current_database() "
    "AND function_type LIKE '%macro%' AND NOT internal",
}


def _with_map(ws: Workspace) -> Path:
    ws.catalog.start_run("run:1", "pseudolabel")
    return write_uncertainty_map(ws, "run:1", "src:ls-a", np.ones(SHAPE, np.float16), np.eye(4), ["liver"])


def _rows(ws: Workspace) -> list[tuple[str, str]]:
    df = ws.catalog.label_sets()
    return sorted(zip(df["id"].astype(str), df["mask_key"].astype(str)))


def test_backup_and_restore_round_trip(small_ws: Workspace, tmp_path: Path) -> None:
    emap = _with_map(small_ws)
    result = backup_workspace(small_ws, tmp_path / "bk")
    assert (result.label_sets, result.mask_files, result.maps, result.missing) == (2, 2, 1, [])
    assert result.lines()[-1].startswith(
        f"backed up the catalog (schema v{SCHEMA_VERSION}, 2 label sets), 2 mask files and 1"
    )
    assert verify_backup(tmp_path / "bk") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "ws"]  # no partial folder left

    restored = restore_backup(tmp_path / "bk", tmp_path / "new")
    assert restored.files == 4 and restored.moved_aside is None
    ws = Workspace.open(tmp_path / "new")
    assert _rows(ws) == _rows(small_ws)
    assert check_workspace(ws).ok and check_workspace(ws).maps == 1
    for key in ("ls-a", "ls-b"):
        assert ws.masks.path(key).read_bytes() == small_ws.masks.path(key).read_bytes()
    assert (ws.maps / emap.parent.name / emap.name).read_bytes() == emap.read_bytes()
    assert not (ws.root / "manifest.json").exists()


def test_the_manifest_lists_every_file_with_its_hash(small_ws: Workspace, tmp_path: Path) -> None:
    _with_map(small_ws)
    backup_workspace(small_ws, tmp_path / "bk")
    manifest = read_manifest(tmp_path / "bk")
    files = manifest["files"]
    assert sorted(files) == [
        "catalog.duckdb",
        "masks/ls-a.masks",
        "masks/ls-b.masks",
        map_file_path(small_ws, "run:1", "src:ls-a").relative_to(small_ws.root).as_posix(),
    ]
    for rel, entry in files.items():
        path = tmp_path / "bk" / rel
        assert entry == {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["format"] == "workbench-backup"
    assert manifest["counts"]["tables"]["label_set"] == 2 and manifest["counts"]["mask_files"] == 2
    assert manifest["created_at"].endswith("+00:00")
    on_disk = {p.relative_to(tmp_path / "bk").as_posix() for p in (tmp_path / "bk").rglob("*") if p.is_file()}
    assert on_disk == set(files) | {"manifest.json"}  # no .wal, no temp file


def test_the_snapshot_keeps_every_schema_object(small_ws: Workspace, tmp_path: Path) -> None:
    backup_workspace(small_ws, tmp_path / "bk")
    copy = Workspace.open(tmp_path / "bk")
    for what, sql in _SCHEMA_QUERIES.items():
        original, snapshot = small_ws.catalog.query(sql), copy.catalog.query(sql)
        assert len(original) > 0, what
        assert sorted(map(tuple, original.values.tolist())) == sorted(map(tuple, snapshot.values.tolist())), (
            what
        )


def test_a_backup_while_another_thread_writes_is_consistent(
    small_ws: Workspace, tmp_path: Path, commit: Callable[..., str]
) -> None:
    started, n = threading.Event(), 40
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(n):
                commit(small_ws, f"ls-w{i:03d}", {"liver": np.ones(SHAPE, bool)}, scan_id="src:busy")
                if i == 3:
                    started.set()
        except BaseException as e:  # surfaced below
            errors.append(e)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(60)
    result = backup_workspace(small_ws, tmp_path / "bk")
    thread.join(120)
    assert not errors and not thread.is_alive()
    assert result.missing == [] and 2 + 4 <= result.label_sets <= 2 + n
    restore_backup(tmp_path / "bk", tmp_path / "new")
    ws = Workspace.open(tmp_path / "new")
    report = check_workspace(ws)
    assert report.ok and report.notes == [], report.lines()
    assert set(_rows(ws)) <= set(_rows(small_ws)) and len(_rows(small_ws)) == 2 + n


def test_a_backup_while_another_process_writes_is_consistent(small_ws: Workspace, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from harmonize.taxonomy import class_names
        from storage.catalog import LabelSetRecord
        from storage.workspace import Workspace
        ws = Workspace.open({str(small_ws.root)!r})
        cov = {{n: "not_annotated" for n in class_names()}}
        stats = {{"name": "liver", "voxels": 120, "volume_ml": 0.12, "components": 1,
                  "bbox": [0, 0, 0, 5, 4, 3], "centroid_mm": [2.5, 2.0, 1.5], "hu_mean": 0.0, "hu_std": 0.0}}
        for i in range(30):
            key = f"ls-p{{i:03d}}"
            ws.masks.write_label_set(key, {{"liver": np.ones({SHAPE}, bool)}}, {SHAPE})
            record = LabelSetRecord(id=key, scan_id="src:ls-a", version=None, origin="pseudo", mask_key=key)
            ws.catalog.add_label_set(record, {{**cov, "liver": "annotated_present"}}, [stats])
            if i == 2:
                print("writing", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    result = backup_workspace(small_ws, tmp_path / "bk")
    assert proc.wait(120) == 0
    assert result.missing == [] and result.label_sets >= 2 + 3
    restore_backup(tmp_path / "bk", tmp_path / "new")
    report = check_workspace(Workspace.open(tmp_path / "new"))
    assert report.ok and report.notes == [], report.lines()
    assert check_workspace(small_ws).ok and len(_rows(small_ws)) == 32


def test_a_backup_goes_into_a_new_folder_and_a_failed_one_leaves_nothing(
    small_ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BackupError, match="taken: exists; a backup goes into a new folder"):
        backup_workspace(small_ws, tmp_path / "taken")

    def fail(src: Path, dst: Path, link: bool) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup_module, "_place", fail)
    with pytest.raises(OSError, match="No space left"):
        backup_workspace(small_ws, tmp_path / "bk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "ws"]  # no bk, no bk.partial-*


def test_a_mask_file_missing_in_the_workspace_is_reported(small_ws: Workspace, tmp_path: Path) -> None:
    small_ws.masks.path("ls-b").unlink()
    result = backup_workspace(small_ws, tmp_path / "bk")
    assert result.missing == [small_ws.masks.path("ls-b")] and result.mask_files == 1
    assert result.lines()[0].startswith(
        f"{small_ws.masks.path('ls-b')}: referenced by the catalog but missing"
    )
    assert read_manifest(tmp_path / "bk")["missing_masks"] == ["ls-b.masks"]


@pytest.mark.parametrize("link", [False, True])
def test_mask_files_are_copied_unless_linking_is_asked_for(
    small_ws: Workspace, tmp_path: Path, link: bool
) -> None:
    backup_workspace(small_ws, tmp_path / "bk", link=link)
    same = os.path.samefile(small_ws.masks.path("ls-a"), tmp_path / "bk" / "masks" / "ls-a.masks")
    assert same == link
    assert not os.path.samefile(small_ws.root / "catalog.duckdb", tmp_path / "bk" / "catalog.duckdb")


def _damage_a_mask(bk: Path) -> str:
    path = bk / "masks" / "ls-a.masks"
    data = bytearray(path.read_bytes())
    data[9] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{path}: sha256 differs from the manifest (damaged)"


def _truncate_the_catalog(bk: Path) -> str:
    path = bk / "catalog.duckdb"
    os.truncate(path, 4096)
    return f"{path}: 4096 bytes, the manifest says"


def _remove_a_map(bk: Path) -> str:
    path = next((bk / "uncertainty").rglob("*.npz"))
    path.unlink()
    return f"{path}: missing"


@pytest.mark.parametrize("damage", [_damage_a_mask, _truncate_the_catalog, _remove_a_map])
def test_a_damaged_backup_is_not_restored(
    small_ws: Workspace, tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    _with_map(small_ws)
    backup_workspace(small_ws, tmp_path / "bk")
    expected = damage(tmp_path / "bk")
    assert any(p.startswith(expected) for p in verify_backup(tmp_path / "bk"))
    with pytest.raises(BackupError, match="not restored, the backup does not match its manifest"):
        restore_backup(tmp_path / "bk", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "ws"]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (None, "missing; .* is not a finished workbench backup"),
        ("{", "cannot be read"),
        ("[]", "not the manifest"),
    ],
)
def test_a_folder_without_a_usable_manifest_is_not_a_backup(
    small_ws: Workspace, tmp_path: Path, manifest: str | None, expected: str
) -> None:
    backup_workspace(small_ws, tmp_path / "bk")
    path = tmp_path / "bk" / "manifest.json"
    path.unlink()
    if manifest is not None:
        path.write_text(manifest)
    with pytest.raises(BackupError, match=expected):
        restore_backup(tmp_path / "bk", tmp_path / "new")


def test_restore_refuses_an_occupied_target_and_force_moves_it_aside(
    small_ws: Workspace, tmp_path: Path, commit: Callable[..., str]
) -> None:
    backup_workspace(small_ws, tmp_path / "bk")
    commit(small_ws, "ls-later", {"liver": np.ones(SHAPE, bool)})
    before = _rows(small_ws)
    with pytest.raises(BackupError, match=r"ws: not empty; .* pass --force to move it aside"):
        restore_backup(tmp_path / "bk", small_ws.root)
    assert _rows(Workspace.open(small_ws.root)) == before

    result = restore_backup(tmp_path / "bk", small_ws.root, force=True)
    aside = result.moved_aside
    assert aside is not None and aside.name.startswith("ws.before-restore-")
    assert result.lines()[-1] == f"the previous contents of {small_ws.root} were moved to {aside}"
    assert _rows(Workspace.open(aside)) == before  # nothing deleted
    assert [k for k, _ in _rows(Workspace.open(small_ws.root))] == ["ls-a", "ls-b"]


def test_restore_into_an_empty_folder_needs_no_force(small_ws: Workspace, tmp_path: Path) -> None:
    backup_workspace(small_ws, tmp_path / "bk")
    (tmp_path / "empty").mkdir()
    restore_backup(tmp_path / "bk", tmp_path / "empty")
    assert check_workspace(Workspace.open(tmp_path / "empty")).ok


def test_a_backup_restored_twice_is_the_same(small_ws: Workspace, tmp_path: Path) -> None:
    backup_workspace(small_ws, tmp_path / "bk")
    restore_backup(tmp_path / "bk", tmp_path / "one")
    restore_backup(tmp_path / "bk", tmp_path / "two")
    assert verify_backup(tmp_path / "bk") == []  # restoring never changes the backup
    assert json.loads((tmp_path / "bk" / "manifest.json").read_text())["counts"]["mask_files"] == 2
    assert _rows(Workspace.open(tmp_path / "one")) == _rows(Workspace.open(tmp_path / "two"))


def test_repair_puts_back_damaged_and_missing_mask_files_and_keeps_later_work(
    small_ws: Workspace, tmp_path: Path, commit: Callable[..., str]
) -> None:
    bk = tmp_path / "bk"
    backup_workspace(small_ws, bk)
    commit(small_ws, "ls-later", {"liver": np.ones(SHAPE, bool)})  # work done after the backup
    a, b, later = (small_ws.masks.path(k) for k in ("ls-a", "ls-b", "ls-later"))
    os.truncate(a, a.stat().st_size - 10)
    b.unlink()
    later.write_bytes(later.read_bytes()[:-10])
    report = check_workspace(small_ws)
    assert sorted((f.kind, f.label_set_id) for f in report.problems) == [
        ("damaged", "ls-a"),
        ("damaged", "ls-later"),
        ("missing", "ls-b"),
    ]
    lines = repair_masks(small_ws, bk, report.problems)
    assert sorted(lines) == sorted(
        [
            f"{a}: restored from {bk}",
            f"{b}: restored from {bk}",
            f"{later}: not in the backup {bk}; not repaired",
        ]
    )
    assert (
        a.read_bytes() == (bk / "masks" / a.name).read_bytes()
        and b.read_bytes() == (bk / "masks" / b.name).read_bytes()
    )
    after = check_workspace(small_ws)
    assert [f.label_set_id for f in after.problems] == ["ls-later"] and len(_rows(small_ws)) == 3
