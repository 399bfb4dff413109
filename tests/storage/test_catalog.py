"""The DuckDB catalog: schema versioning, atomic writes, the long-tail query, the write lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from harmonize.taxonomy import class_names
from storage.catalog import SCHEMA_VERSION, Catalog, CatalogBusy, CatalogError, LabelSetRecord, ScanRecord
from storage.synthetic import synthetic_scan

REPO = Path(__file__).resolve().parents[2]


def _scan(i: int, source: str = "kits23") -> ScanRecord:
    return synthetic_scan(f"{source}:case_{i:05d}")


def _coverage(present: set[str], annotated: set[str]) -> dict[str, str]:
    return {
        n: "annotated_present" if n in present else "annotated_absent" if n in annotated else "not_annotated"
        for n in class_names()
    }


def _add(cat: Catalog, i: int, source: str, present: set[str], annotated: set[str], version: int = 1) -> None:
    scan = _scan(i, source)
    ls = LabelSetRecord(
        id=f"ls-{source}-{i}-{version}",
        scan_id=scan.id,
        version=version,
        origin="original",
        mask_key=f"ls-{source}-{i}-{version}",
    )
    stats = [
        {
            "name": n,
            "voxels": 10,
            "volume_ml": 0.01,
            "components": 1,
            "bbox": (0, 0, 0, 1, 1, 1),
            "centroid_mm": (1.0, 2.0, 3.0),
            "hu_mean": 40.0,
            "hu_std": float("nan"),
        }
        for n in present
    ]
    cat.add_label_set(ls, _coverage(present, annotated), stats, scan=scan if version == 1 else None)


def test_schema_is_created_and_versioned(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    assert cat.schema_version == SCHEMA_VERSION
    Catalog(tmp_path / "c.duckdb")  # reopening migrates nothing and keeps the version
    assert cat.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.transaction() as con:
        con.execute("UPDATE schema_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(CatalogError, match="newer than this workbench"):
        Catalog(tmp_path / "c.duckdb")


def test_long_tail_counts(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    kits = {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst"}
    _add(cat, 1, "kits23", {"kidney_left", "kidney_right", "kidney_tumor"}, kits)
    _add(cat, 2, "kits23", {"kidney_right", "kidney_tumor"}, kits)  # nephrectomy
    _add(cat, 3, "lits", {"liver"}, {"liver", "liver_tumor"})
    table = cat.long_tail().set_index("class_name")
    assert table.loc["kidney_left"].tolist() == [2, 1, 1, 1]  # annotated, present, absent, not_annotated
    assert table.loc["kidney_cyst"].tolist() == [2, 0, 2, 1]
    assert table.loc["liver_tumor"].tolist() == [1, 0, 1, 2]
    assert table.loc["spleen"].tolist() == [0, 0, 0, 3]
    by_source = cat.long_tail(by_source=True)
    row = by_source[(by_source.class_name == "kidney_tumor") & (by_source.source_id == "kits23")]
    assert row[["annotated", "present"]].values.tolist() == [[2, 2]]


def test_long_tail_uses_the_latest_original_version(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "lits", {"liver"}, {"liver", "liver_tumor"})
    _add(cat, 1, "lits", {"liver", "liver_tumor"}, {"liver", "liver_tumor"}, version=2)
    table = cat.long_tail().set_index("class_name")
    assert table.loc["liver_tumor", "present"] == 1
    assert cat.latest_original("lits:case_00001")["version"] == 2


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "kits23", {"kidney_left"}, {"kidney_left"})
    # same label set id again with a NEW scan: the label set insert fails, the scan must not stay
    scan = _scan(2)
    ls = LabelSetRecord(id="ls-kits23-1-1", scan_id=scan.id, version=1, origin="original", mask_key="x")
    with pytest.raises(duckdb.ConstraintException):
        cat.add_label_set(ls, _coverage(set(), set()), [], scan=scan)
    assert cat.counts()["scan"] == 1 and cat.counts()["label_set"] == 1


def test_a_killed_writer_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    Catalog(path)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from storage.catalog import Catalog
        cat = Catalog({str(path)!r})
        with cat.transaction() as con:
            con.execute("INSERT INTO ingest_issue VALUES ('s', 'p', 'x', now())")
            os._exit(9)  # killed before COMMIT
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert Catalog(path).counts()["ingest_issue"] == 0


def test_a_second_process_waits_for_the_lock_then_gives_up_clearly(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    Catalog(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time, sys; c = duckdb.connect({str(path)!r}); "
            "print('held', flush=True); time.sleep(3)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(CatalogBusy, match="another process held the catalog"):
        Catalog(path, lock_timeout_s=0.3)
    # with a longer timeout the write goes through once the holder exits
    cat = Catalog(path, lock_timeout_s=30)
    cat.log_issue("s", "p", "x")
    holder.wait()
    assert cat.counts()["ingest_issue"] == 1


def test_vocabulary_round_trip_and_clear_error(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    with pytest.raises(KeyError, match=r"no text vocabulary 'clip'.*stored: none"):
        cat.vocabulary("clip")
    cat.add_vocabulary(
        "clip",
        "abc",
        "enc",
        "w",
        "V1",
        ["liver"],
        ["A computerized tomography of a Liver."],
        b"\x00" * 2048,
        512,
    )
    row = cat.vocabulary("abc")
    assert row["name"] == "clip" and list(row["class_names"]) == ["liver"] and len(row["embeddings"]) == 2048
