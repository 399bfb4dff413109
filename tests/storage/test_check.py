"""``storage.check``: the catalog against its mask files and maps; a damaged catalog gives one line."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage.catalog import Catalog, CatalogError
from storage.check import check_workspace
from storage.maps import legacy_map_path, write_uncertainty_map
from storage.synthetic import build_synthetic_catalog
from storage.workspace import Workspace

SHAPE = (6, 5, 4)


def _cube(lo: int, size: int) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[lo : lo + size, lo : lo + size, lo : lo + size] = True
    return m


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_consistent_workspace_passes(small_ws: Workspace) -> None:
    report = check_workspace(small_ws)
    assert report.ok and report.findings == []
    assert (report.label_sets, report.mask_files) == (2, 2)
    assert report.lines() == [
        "checked 2 label sets, 2 mask files, 0 uncertainty maps: 0 problem(s), 0 orphan(s)"
    ]


def test_a_truncated_mask_file_is_named(small_ws: Workspace) -> None:
    path = small_ws.masks.path("ls-a")
    os.truncate(path, path.stat().st_size - 10)
    report = check_workspace(small_ws)
    assert not report.ok and [f.kind for f in report.problems] == ["damaged"]
    line = report.problems[0].line()
    assert line.startswith(f"{path}: mask file is damaged") and "truncated" in line and "ls-a" in line
    assert report.lines()[-1].startswith("the way back: `workbench restore BACKUP WS --force`")


def test_a_missing_mask_file_is_named(small_ws: Workspace) -> None:
    path = small_ws.masks.path("ls-b")
    path.unlink()
    report = check_workspace(small_ws)
    assert [(f.kind, f.path, f.label_set_id, f.scan_id) for f in report.findings] == [
        ("missing", str(path), "ls-b", "src:ls-b")
    ]


def test_a_damaged_blob_is_found_by_decoding_only(small_ws: Workspace) -> None:
    path = small_ws.masks.path("ls-a")
    _flip_byte(path, 9)  # inside the first class's compressed blob; index and trailer intact
    assert check_workspace(small_ws, decode=False).ok
    report = check_workspace(small_ws)
    assert [f.kind for f in report.problems] == ["damaged"] and "CRC-32" in report.problems[0].message


@pytest.mark.parametrize(
    ("masks", "expected"),
    [
        (
            {"liver": _cube(0, 2), "spleen": _cube(3, 2)},
            "class 'liver': the catalog stores 27 voxels, the mask",
        ),
        (
            {"liver": _cube(0, 3)},
            "class 'spleen' is annotated_present in the catalog but not in the mask file",
        ),
        (
            {"liver": _cube(0, 3), "spleen": _cube(3, 2), "stomach": _cube(1, 1)},
            "the mask file holds class 'stomach' (1 voxels) that the catalog does not list",
        ),
    ],
    ids=["voxel-count", "class-missing", "class-extra"],
)
def test_a_mask_file_that_differs_from_the_catalog_is_a_mismatch(
    small_ws: Workspace, masks: dict[str, np.ndarray], expected: str
) -> None:
    small_ws.masks.write_label_set("ls-a", masks, SHAPE, overwrite=True)
    report = check_workspace(small_ws)
    assert [f.kind for f in report.problems] == ["mismatch"]
    assert (
        expected in report.problems[0].line()
        and "label set ls-a (original) of scan src:ls-a" in report.lines()[0]
    )


def test_a_mask_file_of_another_shape_is_a_mismatch(small_ws: Workspace) -> None:
    other = (6, 5, 5)
    masks = {n: np.pad(m, ((0, 0), (0, 0), (0, 1))) for n, m in small_ws.masks.read_many("ls-a").items()}
    small_ws.masks.write_label_set("ls-a", masks, other, overwrite=True)
    (problem,) = check_workspace(small_ws).problems
    assert "mask shape (6, 5, 5) != scan shape (6, 5, 4)" in problem.message


def test_an_orphan_mask_file_is_a_note_not_a_problem(small_ws: Workspace) -> None:
    small_ws.masks.write_label_set("ls-orphan", {"liver": _cube(0, 1)}, SHAPE)
    report = check_workspace(small_ws)
    assert report.ok and [f.kind for f in report.notes] == ["orphan"]
    assert (
        report.notes[0].path == str(small_ws.masks.path("ls-orphan")) and "workbench gc" in report.lines()[0]
    )
    assert report.lines()[-1].endswith("0 problem(s), 1 orphan(s)")


def test_uncertainty_maps_of_unknown_runs_are_orphans_and_damaged_maps_problems(small_ws: Workspace) -> None:
    small_ws.catalog.start_run("run:1", "pseudolabel")
    emap, affine = np.zeros(SHAPE, np.float16), np.eye(4)
    good = write_uncertainty_map(small_ws, "run:1", "src:ls-a", emap, affine, ["liver"])
    damaged = write_uncertainty_map(small_ws, "run:1", "src:ls-b", emap, affine, ["liver"])
    unknown_run = write_uncertainty_map(small_ws, "run:gone", "src:ls-a", emap, affine, ["liver"])
    unknown_scan = write_uncertainty_map(small_ws, "run:1", "src:gone", emap, affine, ["liver"])
    os.truncate(damaged, damaged.stat().st_size // 2)
    report = check_workspace(small_ws)
    assert report.maps == 4
    assert [(f.kind, f.path) for f in report.problems] == [("damaged", str(damaged))]
    assert sorted(f.path for f in report.notes) == sorted([str(unknown_run), str(unknown_scan)])
    assert str(good) not in {f.path for f in report.findings}


def test_a_map_under_its_legacy_name_is_known(small_ws: Workspace) -> None:
    """Maps written before names were made unique (``run__1/src__ls-a.npz``) still belong to their run."""
    small_ws.catalog.start_run("run:1", "pseudolabel")
    path = write_uncertainty_map(small_ws, "run:1", "src:ls-a", np.zeros(SHAPE, np.float16), np.eye(4), [])
    legacy = legacy_map_path(small_ws, "run:1", "src:ls-a")
    legacy.parent.mkdir(parents=True)
    path.rename(legacy)
    report = check_workspace(small_ws)
    assert report.maps == 1 and report.findings == []


def test_every_label_set_of_a_synthetic_catalog_without_files_is_missing(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    build_synthetic_catalog(ws.catalog, 5)
    report = check_workspace(ws)
    assert report.label_sets == 5 and {f.kind for f in report.findings} == {"missing"}


# -- a damaged catalog: one line and the way back ---------------------------------------------------


def _zero_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[:64] = bytes(64)
    p.write_bytes(bytes(data))


def _damage_first_block(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8192 + 100 : 8192 + 200] = b"\xff" * 100
    p.write_bytes(bytes(data))


def _foreign_duckdb(p: Path) -> None:
    p.unlink()
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE t (a INTEGER)")
    con.close()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "zeroed-header": _zero_header,
    "damaged-database-header": _damage_first_block,
    "truncated-to-10000-bytes": lambda p: os.truncate(p, 10_000),
    "not-a-duckdb-file": lambda p: p.write_text("name,age\nx,1\n" * 100),
    "empty-file": lambda p: p.write_bytes(b""),
    "another-programs-duckdb": _foreign_duckdb,
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_catalog_raises_one_line_with_the_way_back_and_changes_nothing(
    small_ws: Workspace, damage: str
) -> None:
    path = small_ws.root / "catalog.duckdb"
    DAMAGE[damage](path)
    before = _snapshot(small_ws.root)
    with pytest.raises(CatalogError) as info:
        Catalog(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the catalog is damaged or not a workbench catalog (")
    assert "\n" not in message and "Restore the latest backup with `workbench restore BACKUP WS`" in message
    assert "move the file aside and re-ingest" in message
    assert _snapshot(small_ws.root) == before  # nothing written, no .wal left


def _halve(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _damage_every_block(p: Path) -> None:
    """100 bytes in the middle of every 256 KiB block after the file headers."""
    data = bytearray(p.read_bytes())
    for at in range(12_288 + 131_072, len(data), 262_144):
        data[at : at + 100] = b"\x13" * 100
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_halve, _damage_every_block])
def test_a_catalog_damaged_after_its_header_is_found_by_check(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """DuckDB opens a file whose data blocks are damaged or cut off; reading every row (check, backup)
    finds it."""
    path = tmp_path / "ws" / "catalog.duckdb"
    build_synthetic_catalog(Catalog(path), 200)
    damage(path)
    with pytest.raises(
        CatalogError, match=r"catalog\.duckdb: the catalog is damaged or not a workbench catalog"
    ):
        check_workspace(Workspace.open(path.parent))


def test_a_damaged_wal_raises_the_one_line(tmp_path: Path) -> None:
    """A write left in the WAL only (as after a kill) whose WAL is then damaged."""
    path = tmp_path / "c.duckdb"
    Catalog(path)
    con = duckdb.connect(str(path))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("INSERT INTO ingest_issue VALUES ('s', 'p', 'x', now())")
    con.close()
    wal = path.with_name(path.name + ".wal")
    _flip_byte(wal, wal.stat().st_size // 2)
    with pytest.raises(CatalogError, match=r"c\.duckdb: the catalog is damaged .*WAL"):
        Catalog(path)


def test_verify_tables_reads_every_table(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    build_synthetic_catalog(cat, 3)
    counts = cat.verify_tables()
    assert counts["scan"] == 3 and counts["class_coverage"] == 96 and counts["schema_meta"] == 1


def test_readers_and_writers_of_one_process_do_not_refuse_each_other(tmp_path: Path) -> None:
    """DuckDB refuses a second connection of another mode to a file this process has open; the catalog
    reads through the open read-write instance, and a writer waits for readers to close theirs."""
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect() as writer:
        writer.execute("INSERT INTO ingest_issue VALUES ('s', 'p', 'x', now())")
        assert cat.counts()["ingest_issue"] == 1  # a read-only request beside an open writer
    with cat.connect(read_only=True):
        done = threading.Event()
        thread = threading.Thread(target=lambda: (cat.log_issue("s", "q", "y"), done.set()))
        thread.start()
        assert not done.wait(0.3)  # the writer waits while the reader's connection is open
    thread.join(30)
    assert done.is_set() and cat.counts()["ingest_issue"] == 2
