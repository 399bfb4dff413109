"""The catalog's schema: migrations of old catalogs, and the views that state the rules once."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pytest

from harmonize.taxonomy import class_names
from storage.catalog import Catalog, LabelSetRecord, ScanRecord, utc_now
from storage.schema import MIGRATIONS, ORIGIN_PRIORITY, SCHEMA_VERSION
from storage.synthetic import synthetic_scan


def _scan(i: int) -> ScanRecord:
    return synthetic_scan(f"src:case_{i}", hu_range=None)


def _label_set(
    cat: Catalog, scan: ScanRecord, origin: str, known: dict[str, str], new_scan: bool = False
) -> str:
    """Add a label set of ``origin`` whose coverage is ``known`` (class -> state), others not annotated."""
    ls_id = f"ls-{origin}-{len(cat.label_sets(scan.id)) if not new_scan else 0}"
    coverage = {n: known.get(n, "not_annotated") for n in class_names()}
    record = LabelSetRecord(id=ls_id, scan_id=scan.id, version=None, origin=origin, mask_key=ls_id)
    cat.add_label_set(record, coverage, [], scan=scan if new_scan else None)
    return ls_id


def test_a_v1_catalog_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(MIGRATIONS[1])
    con.execute("INSERT INTO schema_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO ingest_issue VALUES ('kits23', '/x', 'kept across the migration', now())")
    con.close()
    cat = Catalog(path)
    assert cat.schema_version == SCHEMA_VERSION >= 6
    assert cat.query("SELECT problem FROM ingest_issue")["problem"].tolist() == ["kept across the migration"]
    cat.add_train_record("run-1", {"epoch": 1, "step": 10, "loss": 0.5})
    assert cat.query("SELECT loss FROM train_record")["loss"].tolist() == [0.5]
    # The views of v6 exist after the migration, on a catalog that was created before them.
    assert cat.query("SELECT count(*) AS n FROM current_label")["n"].iloc[0] == 0
    assert cat.query("SELECT count(*) AS n FROM standing_review")["n"].iloc[0] == 0


def test_every_version_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
    assert sorted(ORIGIN_PRIORITY, key=ORIGIN_PRIORITY.__getitem__, reverse=True) == [
        "revised",
        "original",
        "pseudo",
    ]


def test_current_label_follows_the_merge_priority(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    scan = _scan(1)
    orig = _label_set(
        cat, scan, "original", {"liver": "annotated_present", "spleen": "annotated_absent"}, True
    )
    pseudo = _label_set(cat, scan, "pseudo", {"liver": "annotated_absent", "pancreas": "annotated_present"})
    revised = _label_set(cat, scan, "revised", {"spleen": "annotated_present"})
    cur = cat.query("SELECT class_name, label_set_id, origin, state, version FROM current_label ORDER BY 1")
    got = {r.class_name: (r.label_set_id, r.state, int(r.version)) for r in cur.itertuples()}
    assert got == {
        "liver": (orig, "annotated_present", 1),  # original beats a newer pseudo
        "pancreas": (pseudo, "annotated_present", 2),  # only the pseudo knows it
        "spleen": (revised, "annotated_present", 3),  # revised beats original
    }
    only_original = cat.query("SELECT class_name FROM current_label_of(['original']) ORDER BY 1")
    assert only_original["class_name"].tolist() == ["liver", "spleen"]
    latest = cat.query("SELECT label_set_id FROM current_original")["label_set_id"].tolist()
    assert latest == [orig]


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ([], ("pseudo-2", "pseudo")),  # no decision: the newest pseudo-label
        (["accept:pseudo-1"], ("pseudo-1", "accepted")),  # accepted beats a newer plain one
        (["reject:pseudo-2"], ("pseudo-1", "pseudo")),  # a rejected one is never used
        (["needs_correction:pseudo-2"], ("pseudo-1", "pseudo")),
        (["reject:pseudo-1", "reject:pseudo-2"], None),  # nothing left that knows the class
        (["reject:pseudo-2", "undo"], ("pseudo-2", "pseudo")),  # an undone reject stands no more
        (["skip:pseudo-2"], ("pseudo-2", "pseudo")),
    ],
)
def test_current_label_honours_review_decisions(
    tmp_path: Path, decisions: list[str], expected: tuple[str, str] | None
) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    scan = _scan(1)
    _label_set(cat, scan, "original", {"liver": "annotated_present"}, True)
    ids = {
        "pseudo-1": _label_set(cat, scan, "pseudo", {"pancreas": "annotated_present"}),
        "pseudo-2": _label_set(cat, scan, "pseudo", {"pancreas": "annotated_present"}),
    }
    last = None
    for d in decisions:
        if d == "undo":
            cat.add_review(scan.id, "pancreas", "x", "undo", "", "ann", undo_of=last)
            continue
        decision, which = d.split(":")
        last = cat.add_review(scan.id, "pancreas", ids[which], decision, "", "ann")
    rows = cat.query("SELECT label_set_id, basis FROM current_label WHERE class_name = 'pancreas'")
    got = None if rows.empty else (rows["label_set_id"].iloc[0], rows["basis"].iloc[0])
    assert got == (None if expected is None else (ids[expected[0]], expected[1]))
    # Decisions never touch the expert's labels, and the original still beats an accepted pseudo.
    liver = cat.query("SELECT basis FROM current_label WHERE class_name = 'liver'")["basis"].tolist()
    assert liver == ["original"]
    only_pseudo = cat.query("SELECT basis FROM current_label_of(['accepted']) WHERE class_name = 'pancreas'")
    assert only_pseudo["basis"].tolist() == (["accepted"] if got and got[1] == "accepted" else [])


def test_standing_review_leaves_out_undos_and_what_they_undid(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    rows = [
        ("r1", "accept", None),
        ("r2", "reject", None),
        ("r3", "undo", "r2"),
    ]
    with cat.transaction() as con:
        for rid, decision, undo_of in rows:
            con.execute(
                "INSERT INTO review (id, scan_id, class_name, label_set_id, decision, reviewer, created_at, "
                "undo_of) VALUES (?, 's', 'liver', 'ls', ?, 'ann', ?, ?)",
                [rid, decision, utc_now(), undo_of],
            )
    assert cat.query("SELECT id FROM standing_review")["id"].tolist() == ["r1"]


def test_add_label_set_allocates_versions_under_concurrent_writers(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    scan = _scan(1)
    _label_set(cat, scan, "original", {"liver": "annotated_present"}, True)
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for k in range(5):
                ls_id = f"ls-t{t}-{k}"
                record = LabelSetRecord(
                    id=ls_id, scan_id=scan.id, version=None, origin="revised", mask_key=ls_id
                )
                stored = cat.add_label_set(record, {"liver": "annotated_present"}, [])
                assert stored.version is not None and stored.version >= 2
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = sorted(int(v) for v in cat.label_sets(scan.id)["version"])
    assert versions == list(range(1, 17))


def test_an_explicit_version_clash_is_not_retried(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    scan = _scan(1)
    _label_set(cat, scan, "original", {}, True)
    clash = LabelSetRecord(id="ls-x", scan_id=scan.id, version=1, origin="revised", mask_key="ls-x")
    with pytest.raises(duckdb.ConstraintException):
        cat.add_label_set(clash, {}, [])
