"""The catalog at scale: the app's and the CLI's queries on a synthetic catalog of N scans x 32 classes.

Builds (once; cached under the temp folder, keyed by its parameters) a synthetic catalog with
``storage.synthetic.build_synthetic_catalog``: N scans from 20 sources, one original label set each,
coverage for all 32 classes, statistics per present class, and for 10 % of the scans a pseudo label set
with uncertainty rows (queue items), 1 % of them reviewed. Then times, as medians of repeated calls in this
one process, each the way its caller makes it (a fresh connection per call unless the caller pins a
session):

* the long-tail table (``Catalog.long_tail``, by source, ``workbench stats``' table, the queue's
  long-tail boost ``annotated_counts``), once right after a correction (whose write keeps the table, schema
  v12; the write's own time is printed too) and then as cached;
* the Review page's queue page: ``workbench.review.queue`` with the page's filters (top 200);
* one scan's detail as the Review page reads it (scan row, label sets, current label set, present
  classes, decisions);
* a training-set assembly for one class (``Catalog.training_rows``), as the first call in a session the
  way the learning wing holds one across split and assembly, and with a connection of its own;
* the Overview and Long tail pages' data (``workbench.app_data``);

against 100 ms per query and 1 s per page, then the catalog's size on disk and this process's peak RSS.

    python benchmarks/bench_catalog.py [--scans 10000] [--repeats 7] [--rebuild] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.catalog import LabelSetRecord
from storage.synthetic import build_synthetic_catalog
from storage.workspace import Workspace
from workbench import app_data, review

QUERY_TARGET_MS = 100.0
PAGE_TARGET_MS = 1000.0
UNCERTAINTY_FRACTION = 0.1
#: Bump when build_synthetic_catalog changes what it builds (the cache key); 5: catalogs of schema v10+.
BUILDER_VERSION = 5


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def median_ms_in_session(ws: Workspace, fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in ms, each call the first one in a fresh :meth:`Catalog.session`
    (opened and closed outside the timing: its caller holds it across several reads), after one warm-up."""
    times = []
    for i in range(repeats + 1):
        with ws.catalog.session():
            t = time.perf_counter()
            fn()
            if i:
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def cached_workspace(
    n_scans: int, seed: int, rebuild: bool, reuse: Path | None = None
) -> tuple[Workspace, float | None]:
    """The synthetic workspace for these parameters under the temp folder (or ``reuse``), built if missing.

    Returns:
        The workspace and the build time in s (``None`` when the cached one was reused).
    """
    key = f"workbench-bench-catalog-n{n_scans}-s{seed}-u{UNCERTAINTY_FRACTION}-b{BUILDER_VERSION}"
    root = reuse if reuse is not None else Path(tempfile.gettempdir()) / key
    if rebuild or not (root / ".built").exists():
        shutil.rmtree(root, ignore_errors=True)
        ws = Workspace.open(root)
        t = time.perf_counter()
        build_synthetic_catalog(ws.catalog, n_scans, seed, uncertainty_fraction=UNCERTAINTY_FRACTION)
        built = time.perf_counter() - t
        (root / ".built").write_text(key)
        return ws, built
    return Workspace.open(root), None


def scan_detail(ws: Workspace, scan_id: str, class_name: str) -> None:
    """What the Review page reads for one scan x class, in its one session."""
    with ws.catalog.session():
        review.scan_row(ws, scan_id)
        sets = app_data.label_sets_of(ws, scan_id)
        review.current_label_set(ws, scan_id, class_name)
        app_data.present_classes(ws, str(sets["id"].iloc[0]))
        review.reviews(ws, scan_id, class_name)


def long_tail_page(ws: Workspace) -> None:
    """What the Long tail page reads (its session), without drawing."""
    with ws.catalog.session():
        ws.catalog.long_tail(by_source=True)
        ws.catalog.long_tail()
        app_data.cooccurrence(ws)
        app_data.volume_summary(ws)


def touch(ws: Workspace, scan_id: str) -> None:
    """One write that changes the long tail: a revised label set of one scan (a correction)."""
    rows = ws.catalog.coverage(ws.catalog.latest_original(scan_id)["id"])  # type: ignore[index]
    ls_id = f"ls-bench-{time.monotonic_ns()}"
    record = LabelSetRecord(id=ls_id, scan_id=scan_id, version=None, origin="revised", mask_key=ls_id)
    ws.catalog.add_label_set(
        record, {k: "annotated_absent" if v == "not_annotated" else v for k, v in rows.items()}, []
    )


def report(label: str, ms: float, target_ms: float) -> None:
    print(f"{label:<62} {ms:9.1f} ms  ({ms / target_ms:.2f}x of {target_ms:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="build the catalog even if it is cached")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="DIR",
        help="the workspace folder to build the catalog into once and reuse on later runs",
    )
    args = parser.parse_args()
    ws, built = cached_workspace(args.scans, args.seed, args.rebuild, args.reuse)
    counts = ws.catalog.counts()
    how = f"built in {built:.0f} s" if built is not None else "cached (--rebuild to build again)"
    print(
        f"catalog: {counts['scan']:,} scans, {counts['label_set']:,} label sets, "
        f"{counts['class_coverage']:,} coverage rows, {counts['class_stats']:,} stats rows, "
        f"{ws.catalog.queue_size():,} queue items, {counts['review']:,} reviews; {how}"
    )
    r = args.repeats
    q = review.queue(ws, status="pending", limit=1)
    scan_id, class_name, source = (
        str(q["scan_id"].iloc[0]),
        str(q["class_name"].iloc[0]),
        str(q["source_id"].iloc[0]),
    )

    t = time.perf_counter()
    ws.catalog.long_tail()
    first = "builds annotation_state" if built is not None else "refreshes what the last run wrote"
    report(f"long-tail table, first call ({first})", (time.perf_counter() - t) * 1000, QUERY_TARGET_MS)
    t = time.perf_counter()
    touch(ws, scan_id)
    report(
        "one correction (the write; it keeps the long tail itself)",
        (time.perf_counter() - t) * 1000,
        QUERY_TARGET_MS,
    )
    t = time.perf_counter()
    ws.catalog.long_tail()
    report(
        "long-tail table, first call after one correction", (time.perf_counter() - t) * 1000, QUERY_TARGET_MS
    )
    report("long-tail table, Catalog.long_tail()", median_ms(ws.catalog.long_tail, r), QUERY_TARGET_MS)
    report(
        "long tail by source, long_tail(by_source=True)",
        median_ms(lambda: ws.catalog.long_tail(by_source=True), r),
        QUERY_TARGET_MS,
    )
    report(
        "`workbench stats` table, long_tail_table()",
        median_ms(ws.catalog.long_tail_table, r),
        QUERY_TARGET_MS,
    )
    report(
        "queue long-tail boost, annotated_counts()",
        median_ms(ws.catalog.annotated_counts, r),
        QUERY_TARGET_MS,
    )
    report(
        "queue page: review.queue(pending, top 200)",
        median_ms(lambda: review.queue(ws, status="pending", limit=200), r),
        QUERY_TARGET_MS,
    )
    report(
        "queue page: review.queue(class + source + reason, top 200)",
        median_ms(
            lambda: review.queue(
                ws,
                classes=[class_name],
                sources=[source],
                reasons=["low_confidence"],
                status="pending",
                limit=200,
            ),
            r,
        ),
        QUERY_TARGET_MS,
    )
    report(
        "one scan's detail (Review page reads)",
        median_ms(lambda: scan_detail(ws, scan_id, class_name), r),
        QUERY_TARGET_MS,
    )

    def one_class() -> Any:
        return ws.catalog.training_rows(["revised", "original", "pseudo"], classes=[class_name])

    n_rows = len(one_class())
    report(
        f"training rows for one class ({n_rows:,} rows), in the assembly's session",
        median_ms_in_session(ws, one_class, r),
        QUERY_TARGET_MS,
    )
    print(f"{'  (the same call with a connection of its own)':<62} {median_ms(one_class, r):9.1f} ms")
    report(
        "Overview page data, app_data.overview()", median_ms(lambda: app_data.overview(ws), r), PAGE_TARGET_MS
    )
    report(
        "Long tail page data (tables, co-occurrence, volumes)",
        median_ms(lambda: long_tail_page(ws), r),
        PAGE_TARGET_MS,
    )
    size = ws.catalog.path.stat().st_size + sum(
        p.stat().st_size for p in ws.catalog.path.parent.glob("*.wal")
    )
    print(f"catalog size on disk: {size / 1e6:,.0f} MB ({size / counts['scan']:,.0f} bytes per scan)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    note = " (includes the build: run again for the app's queries alone)" if built is not None else ""
    print(f"peak RSS of this process (the app's queries above): {peak:,.0f} MB{note}")


if __name__ == "__main__":
    main()
