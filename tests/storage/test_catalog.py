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


# -- scale (#15): the long tail by the assembly rule, its cache, batch commits, training rows by class ----


def _label_set(cat: Catalog, scan_id: str, ls_id: str, origin: str, states: dict[str, str]) -> None:
    """A label set of ``origin`` knowing ``states`` (class -> state); every other class not annotated."""
    coverage = {n: states.get(n, "not_annotated") for n in class_names()}
    record = LabelSetRecord(id=ls_id, scan_id=scan_id, version=None, origin=origin, mask_key=ls_id)
    cat.add_label_set(record, coverage, [])


def _row(cat: Catalog, name: str) -> list[int]:
    return cat.long_tail().set_index("class_name").loc[name].tolist()


def test_the_long_tail_follows_the_assembly_rule(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "lits", {"liver"}, {"liver", "liver_tumor"})
    _add(cat, 2, "lits", {"liver"}, {"liver", "liver_tumor"})
    # annotated, present, absent, not annotated (of 2 scans)
    assert _row(cat, "liver_tumor") == [2, 0, 2, 0] and _row(cat, "spleen") == [0, 0, 0, 2]
    # a plain pseudo-label is no annotation
    _label_set(cat, "lits:case_00001", "ps-1", "pseudo", {"spleen": "annotated_present"})
    assert _row(cat, "spleen") == [0, 0, 0, 2]
    # an accepted one is
    cat.add_review("lits:case_00001", "spleen", "ps-1", "accept", "", "r1")
    assert _row(cat, "spleen") == [1, 1, 0, 1]
    # a revised label set replaces the original for what it knows: case 2 now has a tumour
    _label_set(cat, "lits:case_00002", "rv-2", "revised", {"liver_tumor": "annotated_present"})
    assert _row(cat, "liver_tumor") == [2, 1, 1, 0]
    assert _row(cat, "liver") == [2, 2, 0, 0]  # the revised set does not know the liver: the original does
    # a reject of a later pseudo-label takes nothing away from the accepted one of another label set
    _label_set(cat, "lits:case_00002", "ps-2", "pseudo", {"spleen": "annotated_absent"})
    cat.add_review("lits:case_00002", "spleen", "ps-2", "reject", "", "r1")
    assert _row(cat, "spleen") == [1, 1, 0, 1]
    assert cat.annotated_counts()["spleen"] == 1 and cat.annotated_counts()["liver_tumor"] == 2


def test_the_long_tail_cache_is_refreshed_by_every_kind_of_write(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "lits", {"liver"}, {"liver", "liver_tumor"})
    assert _row(cat, "liver") == [1, 1, 0, 0]
    cached = cat.query("SELECT * FROM long_tail_cache")
    assert len(cached) == 32 and cached["fingerprint"].nunique() == 1
    assert _row(cat, "liver") == [1, 1, 0, 0]  # served from the cache (same fingerprint)
    _add(cat, 2, "lits", set(), {"liver", "liver_tumor"})  # a new scan
    assert _row(cat, "liver") == [2, 1, 1, 0]
    _label_set(cat, "lits:case_00002", "ps-2", "pseudo", {"spleen": "annotated_present"})
    review_id = cat.add_review("lits:case_00002", "spleen", "ps-2", "accept", "", "r1")
    assert _row(cat, "spleen") == [1, 1, 0, 1]
    cat.add_review("lits:case_00002", "spleen", "ps-2", "undo", "", "r1", undo_of=review_id)
    assert _row(cat, "spleen") == [0, 0, 0, 2]
    assert cat.query("SELECT DISTINCT fingerprint FROM long_tail_cache").shape[0] == 1


def test_the_long_tail_is_computed_even_while_another_writer_holds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "lits", {"liver"}, {"liver", "liver_tumor"})

    def busy() -> None:
        raise CatalogBusy("held by another process")

    monkeypatch.setattr(cat, "transaction", busy)
    assert _row(cat, "liver") == [1, 1, 0, 0]
    assert cat.query("SELECT * FROM long_tail_cache").empty


def test_a_batch_of_label_sets_commits_all_or_nothing(tmp_path: Path) -> None:
    from storage.catalog import IngestedLabelSet

    cat = Catalog(tmp_path / "c.duckdb")
    items = []
    for i in (1, 2, 3):
        scan = _scan(i)
        ls = LabelSetRecord(id=f"ls-{i}", scan_id=scan.id, version=1, origin="original", mask_key=f"ls-{i}")
        items.append(IngestedLabelSet(ls, _coverage({"kidney_left"}, {"kidney_left"}), scan=scan))
    stored = cat.add_label_sets(items[:2])
    assert [r.id for r in stored] == ["ls-1", "ls-2"] and cat.counts()["scan"] == 2
    with pytest.raises(duckdb.ConstraintException):
        cat.add_label_sets([items[2], items[0]])  # the second is already there: the first must not stay
    assert cat.counts()["scan"] == 2 and cat.counts()["label_set"] == 2
    assert cat.counts()["class_coverage"] == 64


def test_training_rows_of_one_class(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    kits = {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst"}
    _add(cat, 1, "kits23", {"kidney_left", "kidney_right"}, kits)
    _add(cat, 2, "kits23", {"kidney_right"}, kits)
    rows = cat.training_rows(["original"], classes=["kidney_left"])
    assert sorted(zip(rows["scan_id"], rows["state"])) == [
        ("kits23:case_00001", "annotated_present"),
        ("kits23:case_00002", "annotated_absent"),
    ]
    assert len(cat.training_rows(["original"])) == 8


def test_a_class_filter_reaches_below_the_window_of_current_label_of(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    _add(cat, 1, "kits23", {"kidney_left"}, {"kidney_left", "kidney_right"})
    plan = "\n".join(
        str(r)
        for r in cat.query(
            "EXPLAIN SELECT * FROM current_label_of(['original']) WHERE class_name = 'kidney_left'"
        )["explain_value"]
    )
    window_at = plan.index("Window")
    # the class filter is applied to the table scans below the window, not after it
    assert "kidney_left" not in plan[:window_at] and "class_name = 'kidney_left'" in plan[window_at:], plan


@pytest.mark.parametrize("full_refresh_above", [0, 10_000])
def test_an_incremental_long_tail_refresh_equals_a_full_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_refresh_above: int
) -> None:
    import storage.catalog as catalog_module

    monkeypatch.setattr(catalog_module, "LONG_TAIL_FULL_REFRESH", full_refresh_above)
    cat = Catalog(tmp_path / "c.duckdb")
    kits = {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst"}
    tails = []
    for i in range(1, 6):
        _add(cat, i, "kits23", {"kidney_right"} if i % 2 else {"kidney_left", "kidney_right"}, kits)
        tails.append(cat.long_tail(by_source=True))
    _label_set(cat, "kits23:case_00001", "ps-1", "pseudo", {"spleen": "annotated_present"})
    accept = cat.add_review("kits23:case_00001", "spleen", "ps-1", "accept", "", "r1")
    tails.append(cat.long_tail(by_source=True))
    _label_set(cat, "kits23:case_00002", "rv-2", "revised", {"kidney_tumor": "annotated_present"})
    cat.add_review("kits23:case_00001", "spleen", "ps-1", "undo", "", "r1", undo_of=accept)
    tails.append(cat.long_tail(by_source=True))
    # independently: the rule's rows, counted in Python
    rows = cat.query(
        "SELECT scan_id, class_name, state FROM current_label_of(['revised', 'original', 'accepted'])"
    )
    last = tails[-1].set_index("class_name")
    for name in ("kidney_left", "kidney_tumor", "spleen"):
        known = rows[rows.class_name == name]
        assert last.loc[name, "annotated"] == len(known), name
        assert last.loc[name, "present"] == int((known.state == "annotated_present").sum()), name
        assert last.loc[name, "not_annotated"] == 5 - len(known), name
    assert last.loc["kidney_tumor", "present"] == 1 and last.loc["spleen", "annotated"] == 0
    state = cat.query("SELECT scan_id, class_name, state FROM annotation_state ORDER BY 1, 2")
    assert state.values.tolist() == rows.sort_values(["scan_id", "class_name"]).values.tolist()
