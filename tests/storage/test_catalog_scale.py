"""The maintained tables of schema v11 (#15) never serve a stale answer: after each kind of write between
two reads, the second read equals the rule computed afresh over the base tables (the uncached SQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from storage.catalog import _ASSEMBLED_SQL, _DISTRIBUTION_SQL, _QUEUE_ITEMS, Catalog, LabelSetRecord
from storage.schema import BASES
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
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


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
