"""The synthetic benchmark catalog: what it builds, counted independently of how it was built."""

from __future__ import annotations

from pathlib import Path

import pytest

from harmonize.taxonomy import class_names
from storage.catalog import Catalog
from storage.synthetic import build_synthetic_catalog


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    cat = Catalog(tmp_path_factory.mktemp("syn") / "c.duckdb")
    build_synthetic_catalog(cat, 2000, seed=3, uncertainty_fraction=0.1, reviewed_fraction=0.05)
    return cat


def test_every_scan_has_one_original_label_set_with_all_classes(built: Catalog) -> None:
    counts = built.counts()
    n_pseudo = int(built.query("SELECT count(*) AS n FROM label_set WHERE origin = 'pseudo'")["n"].iloc[0])
    assert counts["scan"] == 2000 and counts["source"] == 20
    assert counts["label_set"] == 2000 + n_pseudo
    assert counts["class_coverage"] == 32 * (2000 + n_pseudo)
    assert 100 < n_pseudo < 300  # about 10 %


def test_coverage_follows_what_each_source_annotates(built: Catalog) -> None:
    annotated = {
        r["id"]: set(r["annotated"])
        for r in built.query("SELECT id, annotated FROM source").to_dict("records")
    }
    rows = built.query(
        "SELECT s.source_id, c.class_name, c.state FROM class_coverage c "
        "JOIN label_set l ON l.id = c.label_set_id JOIN scan s ON s.id = l.scan_id "
        "WHERE l.origin = 'original'"
    )
    for r in rows.itertuples():
        assert (r.state != "not_annotated") == (r.class_name in annotated[r.source_id])
    states = rows[rows.state != "not_annotated"].state
    assert 0.85 < (states == "annotated_present").mean() < 0.95  # 90 % of annotated classes are present
    assert all(1 <= len(a) <= 15 for a in annotated.values())


def test_statistics_exist_exactly_for_present_classes(built: Catalog) -> None:
    present = built.query(
        "SELECT label_set_id, class_name FROM class_coverage WHERE state = 'annotated_present' "
        "AND label_set_id LIKE 'ls-%'"
    )
    stats = built.query("SELECT label_set_id, class_name, voxels, volume_ml FROM class_stats")
    assert set(zip(present.label_set_id, present.class_name)) == set(
        zip(stats.label_set_id, stats.class_name)
    )
    assert stats.voxels.between(100, 10**6).all() and stats.volume_ml.between(0, 1000).all()


def test_queue_items_are_the_pseudo_present_classes_the_source_lacks(built: Catalog) -> None:
    items = built.query(
        "SELECT u.scan_id, u.class_name, u.label_set_id, u.score, s.source_id FROM uncertainty u "
        "JOIN scan s ON s.id = u.scan_id"
    )
    annotated = {
        r["id"]: set(r["annotated"])
        for r in built.query("SELECT id, annotated FROM source").to_dict("records")
    }
    n_pseudo = int(built.query("SELECT count(*) AS n FROM label_set WHERE origin = 'pseudo'")["n"].iloc[0])
    expected = sum(
        32 - len(annotated[s])
        for s in built.query(
            "SELECT s.source_id FROM label_set l JOIN scan s ON s.id = l.scan_id WHERE l.origin = 'pseudo'"
        ).source_id
    )
    assert len(items) == expected and n_pseudo == items.label_set_id.nunique()
    assert not any(r.class_name in annotated[r.source_id] for r in items.itertuples())
    assert items.score.between(0, 1).all() and built.queue_size() == len(items)
    reviews = built.query("SELECT decision FROM review")
    assert 0 < len(reviews) < 0.1 * len(items) and set(reviews.decision) <= {"accept", "reject"}


def test_the_long_tail_counts_accepted_pseudo_labels(built: Catalog) -> None:
    table = built.long_tail().set_index("class_name")
    assert (table[["annotated", "not_annotated"]].sum(axis=1) == 2000).all()
    original = built.query(
        "SELECT c.class_name, count(*) AS n FROM class_coverage c WHERE c.label_set_id LIKE 'ls-%' "
        "AND c.state <> 'not_annotated' GROUP BY 1"
    ).set_index("class_name")["n"]
    accepted = built.query(
        "SELECT class_name, count(*) AS n FROM review WHERE decision = 'accept' GROUP BY 1"
    ).set_index("class_name")["n"]
    for name in class_names():
        assert table.loc[name, "annotated"] == original.get(name, 0) + accepted.get(name, 0), name


def test_the_same_seed_builds_the_same_catalog(tmp_path: Path) -> None:
    def content(seed: int) -> list:
        cat = Catalog(tmp_path / f"c{seed}-{len(list(tmp_path.iterdir()))}.duckdb")
        build_synthetic_catalog(cat, 300, seed=seed, uncertainty_fraction=0.2)
        return cat.query(
            "SELECT c.label_set_id, c.class_name, c.state, coalesce(u.score, -1) FROM class_coverage c "
            "LEFT JOIN uncertainty u ON u.label_set_id = c.label_set_id AND u.class_name = c.class_name "
            "ORDER BY 1, 2"
        ).values.tolist()

    assert content(1) == content(1) != content(2)
