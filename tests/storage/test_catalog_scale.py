"""The maintained tables of schema v11 (#15) never serve a stale answer: after each kind of write between
two reads, the second read equals the rule computed afresh over the base tables (the uncached SQL). The
rules over a few scans' rows (schema v13, ``scoped_rules_sql``) answer as the views do for those scans."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from storage.catalog import (
    _ANNOTATION_STATE_SQL,
    _ASSEMBLED_SQL,
    _DISTRIBUTION_SQL,
    _QUEUE_ITEMS,
    LONG_TAIL_WRITE_THROUGH,
    Catalog,
    IngestedLabelSet,
    LabelSetRecord,
    _long_tail_sql,
    _page_by_rowid,
    _page_by_threshold,
)
from storage.schema import (
    ASSEMBLED_LABEL_V13,
    BASES,
    SCHEMA_VERSION,
    scoped_rules_params,
    scoped_rules_sql,
)
from storage.synthetic import build_synthetic_catalog

QUEUE_ORDER = ["score", "scan_id", "class_name", "run_id"]


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    """40 synthetic scans; half of them with a pseudo label set and queue items, a fifth of those decided."""
    c = Catalog(tmp_path / "catalog.duckdb")
    build_synthetic_catalog(c, 40, seed=3, uncertainty_fraction=0.5, reviewed_fraction=0.2)
    return c


def _item(cat: Catalog, decided: bool = False) -> dict[str, object]:
    """One queue item (pending, or one with a standing decision)."""
    q = cat.review_queue(status="decided" if decided else "pending")
    return q.sort_values(QUEUE_ORDER[1:]).iloc[0].to_dict()


def _revised(cat: Catalog) -> None:
    item = _item(cat)
    scan_id = str(item["scan_id"])
    cov = cat.coverage(cat.latest_original(scan_id)["id"])  # type: ignore[index]
    cov[str(item["class_name"])] = "annotated_present"
    cat.add_label_set(LabelSetRecord("ls-rev", scan_id, None, "revised", "ls-rev"), cov, [])


def _accept(cat: Catalog) -> None:
    item = _item(cat)
    cat.add_review(
        str(item["scan_id"]), str(item["class_name"]), str(item["label_set_id"]), "accept", "", "r1"
    )


def _undo(cat: Catalog) -> None:
    item = _item(cat, decided=True)
    cat.add_review(
        str(item["scan_id"]),
        str(item["class_name"]),
        str(item["label_set_id"]),
        "undo",
        "",
        "r1",
        undo_of=str(item["review_id"]),
    )


def _double_read(cat: Catalog) -> None:
    item = _item(cat)
    key = {k: str(item[k]) for k in ("scan_id", "class_name", "label_set_id")}
    cat.add_reading_plan([{**key, "double_read": True, "share": 1.0}])
    a = cat.add_review(*key.values(), "reject", "", "reader-a")
    b = cat.add_review(*key.values(), "reject", "", "reader-b")
    cat.add_reading_dice([{**key, "review_a": a, "review_b": b, "dice": 1.0, "threshold": 0.9}])


def _uncertainty(cat: Catalog) -> None:
    """A replaced row (same scan, class and run: the row count does not move) and a new item."""
    item = _item(cat)
    row = {k: item[k] for k in ("scan_id", "class_name", "run_id", "label_set_id", "signals")}
    cat.add_uncertainty([{**row, "score": 2.0, "reasons": ["replaced"]}])
    cat.add_uncertainty([{**row, "run_id": "run-new", "score": 0.5, "reasons": ["new"]}])


def _rescore(cat: Catalog) -> None:
    item = _item(cat)
    key = {k: item[k] for k in ("scan_id", "class_name", "run_id")}
    cat.update_scores([{**key, "score": -1.0, "reasons": ["rescored"]}])


def _new_version(cat: Catalog) -> None:
    """A later pseudo label set of a decided scan x class with its item: a prior decision to check."""
    item = _item(cat, decided=True)
    scan_id, cls = str(item["scan_id"]), str(item["class_name"])
    cov = cat.coverage(str(item["label_set_id"]))
    rec = cat.add_label_set(
        LabelSetRecord("ls-v3", scan_id, None, "pseudo", "ls-v3", run_id="run-3"), cov, []
    )
    cat.add_uncertainty(
        [
            {
                "scan_id": scan_id,
                "class_name": cls,
                "run_id": "run-3",
                "label_set_id": rec.id,
                "score": 0.7,
                "signals": "{}",
                "reasons": ["low_confidence"],
            }
        ]
    )


WRITES: dict[str, Callable[[Catalog], None]] = {
    "label set": _revised,
    "review": _accept,
    "undo": _undo,
    "double-read pair": _double_read,
    "uncertainty rows": _uncertainty,
    "rescoring": _rescore,
    "new version of a decided item": _new_version,
}


def _live_queue(cat: Catalog) -> pd.DataFrame:
    df = cat.query(f"{_QUEUE_ITEMS} SELECT * EXCLUDE (verdict, open, in_catalog) FROM q WHERE in_catalog")
    df["reasons"] = df["reasons"].map(lambda r: [] if r is None else list(r))
    return _sorted(df, QUEUE_ORDER)


def _sorted(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by).reset_index(drop=True)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal values (dictionary columns read through Arrow or ``.df()`` differ only in dtype details)."""
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_categorical=False)


@pytest.mark.parametrize("write", list(WRITES))
def test_the_queue_follows_every_write(cat: Catalog, write: str) -> None:
    cat.review_queue(status="all")
    counts = cat.queue_status_counts()
    WRITES[write](cat)
    _assert_same(_sorted(cat.review_queue(status="all"), QUEUE_ORDER), _live_queue(cat))
    top = cat.query(
        f"{_QUEUE_ITEMS} SELECT scan_id, class_name, run_id FROM q WHERE open AND in_catalog "
        "ORDER BY score DESC, scan_id, class_name, run_id LIMIT 5"
    )
    _assert_same(cat.review_queue(status="pending", limit=5)[["scan_id", "class_name", "run_id"]], top)
    live_counts = cat.query(
        f"{_QUEUE_ITEMS} SELECT count(*) FILTER (WHERE open) AS pending, "
        "count(*) FILTER (WHERE verdict = 'needs_correction') AS needs_correction, "
        "count(*) FILTER (WHERE reading_state = 'disagreed') AS adjudication FROM q"
    ).iloc[0]
    assert cat.queue_status_counts() == {k: int(v) for k, v in live_counts.items()}
    assert counts["pending"] > 0


@pytest.mark.parametrize("write", list(WRITES))
def test_training_rows_follow_every_write(cat: Catalog, write: str) -> None:
    cat.training_rows(BASES)
    WRITES[write](cat)
    order = ["scan_id", "class_name"]
    live = _sorted(cat.query(_ASSEMBLED_SQL), order)
    _assert_same(_sorted(cat.training_rows(BASES), order)[live.columns], live)
    cls = str(live["class_name"].iloc[0])
    one = _sorted(cat.training_rows(BASES, classes=[cls]), order)[live.columns]
    _assert_same(one, live[live["class_name"] == cls].reset_index(drop=True))
    for r in live.head(20).to_dict("records"):
        assert cat.current_label_set(str(r["scan_id"]), str(r["class_name"])) == r["label_set_id"]


def test_a_second_original_moves_the_long_tail_page_distributions(cat: Catalog) -> None:
    cat.cooccurrence_counts()
    cat.volume_distribution()
    scan_id = cat.scan_ids(1)[0]
    cov = cat.coverage(cat.latest_original(scan_id)["id"])  # type: ignore[index]
    cov = dict.fromkeys(cov, "annotated_present")
    stats = [
        {
            "name": n,
            "voxels": 10,
            "volume_ml": 1e6,
            "components": 1,
            "bbox": [0, 0, 0, 1, 1, 1],
            "centroid_mm": [0.0, 0.0, 0.0],
            "hu_mean": 1.0,
            "hu_std": 1.0,
        }
        for n in cov
    ]
    cat.add_label_set(LabelSetRecord("ls-o2", scan_id, None, "original", "ls-o2"), cov, stats)
    co = _sorted(cat.cooccurrence_counts(), ["a", "b"])
    _assert_same(co, _sorted(cat.query(_DISTRIBUTION_SQL["cooccurrence_cache"]), ["a", "b"]))
    summary, outliers = cat.volume_distribution(outliers_per_class=3)
    live = cat.query(_DISTRIBUTION_SQL["volume_summary_cache"])
    _assert_same(_sorted(summary, ["class_name"]), _sorted(live, ["class_name"]))
    live_out = cat.query(_DISTRIBUTION_SQL["volume_outlier_cache"] + " AND rank <= 3")
    _assert_same(
        _sorted(outliers, ["class_name", "scan_id"]),
        _sorted(live_out.drop(columns="rank"), ["class_name", "scan_id"]),
    )


@pytest.mark.parametrize("write", list(WRITES))
def test_the_upkeep_to_do_lists_follow_every_write(cat: Catalog, write: str) -> None:
    cat.add_reading_plan(
        [{**r, "double_read": False, "share": 0.0} for r in cat.unplanned_items().to_dict("records")]
    )
    assert cat.unplanned_items().empty and cat.unmeasured_reading_pairs().empty  # all clear, stored
    cat.unchecked_requeue_items()
    WRITES[write](cat)
    every = cat.query("SELECT id FROM label_set")["id"].tolist()
    _assert_same(cat.unplanned_items(), cat.unplanned_items(every))
    _assert_same(cat.unchecked_requeue_items(), cat.unchecked_requeue_items(every))
    pairs = cat.unmeasured_reading_pairs()
    with cat.transaction() as con:
        cat.invalidate_derived(con)  # no stored all-clear: every item is looked at
    _assert_same(pairs, cat.unmeasured_reading_pairs())


def _every_write(cat: Catalog) -> None:
    """Every write of :data:`WRITES`, then a requeue check that carries a decision to a later item and a
    double-read reader's correction that is held (no second reading yet)."""
    for write in WRITES.values():
        write(cat)
    checks = cat.unchecked_requeue_items().to_dict("records")
    assert checks
    keys = ("label_set_id", "class_name", "review_id", "scan_id", "decision", "decided_label_set_id")
    cat.add_requeue_checks([{**{k: r[k] for k in keys}, "dice": 1.0, "threshold": 0.9} for r in checks])
    item = _item(cat)
    key = {k: str(item[k]) for k in ("scan_id", "class_name", "label_set_id")}
    cat.add_reading_plan([{**key, "double_read": True, "share": 1.0}])
    cov = cat.coverage(key["label_set_id"])
    revised = cat.add_label_set(
        LabelSetRecord("ls-held", key["scan_id"], None, "revised", "ls-held"), cov, []
    )
    cat.add_review(*key.values(), "corrected", "", "reader-a", result_label_set_id=revised.id)
    assert cat.is_held_revision(revised.id, key["class_name"])
    readings = set(cat.query("SELECT DISTINCT reading FROM verdict")["reading"])
    assert {"single", "double", "carried"} <= readings, readings


#: Per view of the rules, the columns that order its rows (for comparing the scoped rules with the view).
VIEW_KEYS = {
    "standing_review": ["id"],
    "reading": ["id"],
    "double_read_item": ["label_set_id", "class_name"],
    "decided": ["label_set_id", "class_name", "reading"],
    "prior_decision": ["label_set_id", "class_name"],
    "verdict": ["label_set_id", "class_name", "reading"],
    "held_revision": ["label_set_id", "class_name"],
}


@pytest.mark.parametrize("view", list(VIEW_KEYS))
def test_the_scoped_rules_answer_as_the_views_for_their_scans(cat: Catalog, view: str) -> None:
    _every_write(cat)
    scan_of = "(SELECT scan_id FROM label_set WHERE id = label_set_id)"  # held_revision names label sets
    column = scan_of if view == "held_revision" else "scan_id"
    with_rows = sorted(cat.query(f"SELECT DISTINCT {column} AS scan_id FROM {view}")["scan_id"])[:7]
    scans = sorted({*with_rows, *cat.scan_ids(3)})  # and some scans without rows of the view
    marks = ", ".join(["?"] * len(scans))
    whole = cat.query(f"SELECT * FROM {view} WHERE {column} IN ({marks})", scans)
    scoped = cat.query(f"{scoped_rules_sql(len(scans))} SELECT * FROM {view}_in", scoped_rules_params(scans))
    assert not whole.empty
    _assert_same(_sorted(scoped, VIEW_KEYS[view]), _sorted(whole, VIEW_KEYS[view]))


@pytest.mark.parametrize("bases", [BASES, ("revised", "original", "accepted"), ("pseudo",), ("original",)])
def test_the_scoped_assembly_rule_answers_as_the_macro(cat: Catalog, bases: tuple[str, ...]) -> None:
    _every_write(cat)
    held = cat.query("SELECT l.scan_id FROM held_revision h JOIN label_set l ON l.id = h.label_set_id")
    scans = sorted({*cat.query("SELECT scan_id FROM verdict")["scan_id"], *held["scan_id"]})
    marks = ", ".join(["?"] * len(scans))
    whole = cat.query(f"SELECT * FROM current_label_of(?) WHERE scan_id IN ({marks})", [list(bases), *scans])
    sql = f"{scoped_rules_sql(len(scans), bases)} SELECT * FROM current_label_in"
    scoped = cat.query(sql, scoped_rules_params(scans))
    assert not whole.empty
    order = ["scan_id", "class_name"]
    _assert_same(_sorted(scoped, order), _sorted(whole, order))


def test_the_scoped_rules_refuse_no_scan_and_unknown_bases() -> None:
    with pytest.raises(ValueError, match="at least one scan"):
        scoped_rules_sql(0)
    with pytest.raises(ValueError, match="unknown bases"):
        scoped_rules_sql(1, ("revised", "rejected"))


def _live_long_tail(cat: Catalog) -> pd.DataFrame:
    from harmonize.taxonomy import class_names

    live = cat.query(_long_tail_sql(f"({_ANNOTATION_STATE_SQL})"), [class_names()])
    return _sorted(live, ["class_name", "source_id"])


@pytest.mark.parametrize("write", list(WRITES))
def test_the_long_tail_follows_every_write(cat: Catalog, write: str) -> None:
    cat.long_tail()
    WRITES[write](cat)
    by_source = _sorted(cat.long_tail(by_source=True), ["class_name", "source_id"])
    _assert_same(by_source, _live_long_tail(cat))


@pytest.mark.parametrize("write", ["label set", "review", "undo"])
def test_a_reviewers_write_keeps_the_long_tail_in_its_transaction(cat: Catalog, write: str) -> None:
    """A correction, a decision or an undo refreshes the stored long tail itself: right after it, the
    stored table carries the catalog's fingerprint and equals the rule computed afresh."""
    cat.long_tail()
    WRITES[write](cat)
    with cat.connect(read_only=True) as con:
        fingerprint = cat._long_tail_fingerprint(con)
    stored = cat.query(
        "SELECT class_name, source_id, annotated, present, absent, not_annotated FROM long_tail_cache "
        "WHERE fingerprint = ?",
        [fingerprint],
    )
    _assert_same(_sorted(stored, ["class_name", "source_id"]), _live_long_tail(cat))


def _stored_long_tail(cat: Catalog) -> pd.DataFrame:
    """The stored long tail rows that carry the catalog's current fingerprint (empty when stale)."""
    with cat.connect(read_only=True) as con:
        fingerprint = cat._long_tail_fingerprint(con)
    return cat.query(
        "SELECT class_name, source_id, annotated, present, absent, not_annotated FROM long_tail_cache "
        "WHERE fingerprint = ?",
        [fingerprint],
    )


def test_a_decision_may_leave_the_long_tail_to_its_writers_later_upkeep(cat: Catalog) -> None:
    cat.long_tail()
    scan = cat.scan_ids(1)[0]
    ls = str(cat.latest_original(scan)["id"])  # type: ignore[index]
    cat.add_review(scan, "liver", ls, "reject", "", "r1", keep_long_tail=False)
    assert _stored_long_tail(cat).empty  # not refreshed with the write
    cat.keep_long_tail()
    _assert_same(_sorted(_stored_long_tail(cat), ["class_name", "source_id"]), _live_long_tail(cat))


def test_a_batch_of_changed_scans_is_left_to_the_next_reader(cat: Catalog) -> None:
    cat.long_tail()
    scans = cat.scan_ids(LONG_TAIL_WRITE_THROUGH + 1)
    records = [
        IngestedLabelSet(
            LabelSetRecord(f"ls-b{i}", s, None, "revised", f"ls-b{i}"),
            dict.fromkeys(cat.coverage(cat.latest_original(s)["id"]), "annotated_present"),  # type: ignore[index]
        )
        for i, s in enumerate(scans)
    ]
    cat.add_label_sets(records)
    cat.add_review(scans[0], "liver", "ls-b0", "accept", "", "r1")  # too many changed scans: no upkeep
    with cat.connect(read_only=True) as con:
        fingerprint = cat._long_tail_fingerprint(con)
    assert cat.query("SELECT * FROM long_tail_cache WHERE fingerprint = ?", [fingerprint]).empty
    _assert_same(_sorted(cat.long_tail(by_source=True), ["class_name", "source_id"]), _live_long_tail(cat))


def test_a_queue_page_whose_rows_moved_is_read_in_one_query(cat: Catalog) -> None:
    """The page read by rowid checks that the second read found the rows the first one picked; rowids that
    point elsewhere (a writer of this process moved the rows in between) fall back to the one query."""
    whole = cat.review_queue(status="pending", limit=7)
    order = "ORDER BY score DESC, scan_id, class_name, run_id"
    plain = f"SELECT * EXCLUDE (verdict, open, in_catalog) FROM q WHERE open AND in_catalog {order} LIMIT 7"
    keys = "SELECT rowid AS _row, scan_id, class_name, run_id FROM queue_item WHERE open AND in_catalog"
    with cat.connect(read_only=True) as con:
        right = _page_by_rowid(f"{keys} {order} LIMIT 7", [], plain, order)(con)
        moved = _page_by_rowid(
            f"{keys.replace('rowid AS', 'rowid + 1 AS')} {order} LIMIT 7", [], plain, order
        )
        fallback = moved(con)
    for page in (right, fallback):
        page["reasons"] = page["reasons"].map(list)
        _assert_same(page, whole)


@pytest.mark.parametrize("classes", [None, ["liver"], ["liver", "spleen"], ["liver", "liver"]])
def test_training_rows_keep_a_mask_key_that_is_not_the_label_set_id(
    cat: Catalog, classes: list[str] | None
) -> None:
    """``assembled_label`` stores a mask key only where it differs from the label set's id (schema v14);
    the rows still carry every key, the columns in their order, one class's rows its name."""
    scan_id = str(cat.query("SELECT id FROM scan ORDER BY id LIMIT 1")["id"].iloc[0])
    cov = cat.coverage(cat.latest_original(scan_id)["id"])  # type: ignore[index]
    cov["liver"] = "annotated_present"
    cat.add_label_set(LabelSetRecord("ls-own-key", scan_id, None, "revised", "masks-of-another-set"), cov, [])
    rows = cat.training_rows(BASES, classes=classes)
    assert list(rows.columns) == [
        "scan_id", "source_id", "image_path", "class_name", "state", "label_set_id", "mask_key", "origin",
        "basis", "version",
    ]  # fmt: skip
    order = ["scan_id", "class_name"]
    live = _sorted(cat.query(_ASSEMBLED_SQL), order)
    if classes is not None:
        live = live[live["class_name"].isin(classes)].reset_index(drop=True)
    _assert_same(_sorted(rows, order), live)
    mine = rows[rows["label_set_id"] == "ls-own-key"]
    assert set(mine["mask_key"]) == {"masks-of-another-set"} and "liver" in set(mine["class_name"])
    others = rows[rows["label_set_id"] != "ls-own-key"]
    assert (others["mask_key"] == others["label_set_id"]).all() and len(others) > 0
    stored = cat.query("SELECT DISTINCT mask_key FROM assembled_label WHERE mask_key IS NOT NULL")
    assert stored["mask_key"].tolist() == ["masks-of-another-set"]


def test_a_v13_catalog_keeps_its_training_rows_after_the_migration(tmp_path: Path) -> None:
    """A workspace written at schema v13 (every mask key stored, its maintained table current) opens at
    v14 and answers the same training rows, from the table rebuilt in the new form."""
    path = tmp_path / "catalog.duckdb"
    c = Catalog(path)
    build_synthetic_catalog(c, 12, seed=1, uncertainty_fraction=0.5)
    before = _sorted(c.query(_ASSEMBLED_SQL), ["scan_id", "class_name"])
    c.training_rows(BASES)  # the maintained table and its marks, as a v13 reader leaves them
    v13_table = ASSEMBLED_LABEL_V13.split("DROP TABLE assembled_label;")[1].split("DELETE FROM")[0]
    with c.transaction() as con:
        con.execute("DROP TABLE assembled_label")
        con.execute(v13_table)
        con.execute(f"INSERT INTO assembled_label {_ASSEMBLED_SQL}")
        con.execute("UPDATE schema_meta SET value = '13' WHERE key = 'schema_version'")
    assert Catalog(path).schema_version == SCHEMA_VERSION >= 14
    migrated = Catalog(path)
    rows = _sorted(migrated.training_rows(BASES), ["scan_id", "class_name"])
    _assert_same(rows[before.columns], before)
    assert migrated.query("SELECT count(*) AS n FROM assembled_label")["n"].iloc[0] == len(before) > 0
    kept = migrated.query("SELECT count(*) AS n FROM assembled_label WHERE mask_key IS NOT NULL")["n"]
    assert kept.iloc[0] == 0


def test_a_v14_catalog_stores_its_current_labels_by_scan_within_class_after_the_migration(
    tmp_path: Path,
) -> None:
    """A workspace written at schema v14 (its maintained current label in any order) opens at v15 and
    answers the same training rows, from the table refilled by class and, within a class, by scan."""
    path = tmp_path / "catalog.duckdb"
    c = Catalog(path)
    build_synthetic_catalog(c, 12, seed=1, uncertainty_fraction=0.5)
    before = _sorted(c.query(_ASSEMBLED_SQL), ["scan_id", "class_name"])
    c.training_rows(BASES)  # the maintained table and its marks, as a v14 reader leaves them
    with c.transaction() as con:
        rows = "SELECT * FROM assembled_label ORDER BY scan_id DESC, class_name DESC"
        con.execute(f"CREATE TEMP TABLE v14 AS {rows}")
        con.execute("DELETE FROM assembled_label")
        con.execute("INSERT INTO assembled_label SELECT * FROM v14")
        con.execute("UPDATE schema_meta SET value = '14' WHERE key = 'schema_version'")
    assert Catalog(path).schema_version == SCHEMA_VERSION == 15
    migrated = Catalog(path)
    rows = _sorted(migrated.training_rows(BASES), ["scan_id", "class_name"])
    _assert_same(rows[before.columns], before)
    stored = migrated.query("SELECT class_name, scan_id FROM assembled_label ORDER BY rowid")
    assert len(stored) == len(before) > 0
    expected = stored.sort_values(["class_name", "scan_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(stored, expected)


@pytest.mark.parametrize("limit", [1, 3, 7, 10_000])
def test_a_queue_page_read_by_its_lowest_score_is_the_sorted_page_with_ties(cat: Catalog, limit: int) -> None:
    """The page read by a score threshold keeps every row tied at the threshold and lets the full order pick
    among them: the same rows as sorting every row, also when most scores are equal and when the page is
    larger than the queue."""
    cat.review_queue(status="pending", limit=1)  # the maintained table is current
    with cat.transaction() as con:  # ties: a third of the scores equal, one score above them all
        con.execute("UPDATE queue_item SET score = 0.5 WHERE rowid % 3 = 0")
        con.execute("UPDATE queue_item SET score = 2.0 WHERE rowid = 1")
    order = "ORDER BY score DESC, scan_id, class_name, run_id"
    filters: list[tuple[str, list[str]]] = [("", []), ("WHERE open AND in_catalog", [])]
    for where, params in [*filters, ("WHERE class_name IN (?)", ["liver"])]:
        plain = f"SELECT * EXCLUDE (verdict, open, in_catalog) FROM q {where} {order} LIMIT {limit}"
        with cat.connect(read_only=True) as con:
            sorted_page = con.execute(f"WITH q AS (SELECT * FROM queue_item) {plain}", params).df()
            page = _page_by_threshold(where, params, plain, order, limit)(con)
        assert len(page) == min(limit, len(sorted_page)) and len(page) > 0
        pd.testing.assert_frame_equal(page.reset_index(drop=True), sorted_page.reset_index(drop=True))
