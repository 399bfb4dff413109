"""Catalog queries at 10,000 scans x 32 classes: the long-tail table must answer in < 100 ms.

Builds a synthetic catalog (bulk inserts through Arrow, never executemany) with 10,000 scans from 20
sources, one original label set each, 320,000 coverage rows and a statistics row per present class, then
times, as medians of repeated runs in this one process:

* ``Catalog.long_tail()``: the whole call a user or the app makes (fresh connection, query, DataFrame);
* ``Catalog.long_tail()`` inside ``Catalog.session()`` (what an app page render pays);
* ``long_tail(by_source=True)`` and the ``workbench stats`` table built on it.

    python benchmarks/bench_catalog.py [--scans 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from storage.synthetic import build_synthetic_catalog
from storage.workspace import Workspace

TARGET_MS = 100.0


def median_ms(fn, repeats: int = 15) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp))
        t = time.perf_counter()
        build_synthetic_catalog(ws.catalog, args.scans)
        counts = ws.catalog.counts()
        print(
            f"built {counts['scan']} scans, {counts['class_coverage']} coverage rows, "
            f"{counts['class_stats']} stats rows in {time.perf_counter() - t:.1f} s (Arrow bulk insert)"
        )
        full = median_ms(ws.catalog.long_tail)
        with ws.catalog.session():
            in_session = median_ms(ws.catalog.long_tail)
        by_source = median_ms(lambda: ws.catalog.long_tail(by_source=True))
        cli_table = median_ms(lambda: ws.catalog.long_tail_table())
    print(
        f"long-tail table, Catalog.long_tail() incl. connection: {full:7.1f} ms  "
        f"({full / TARGET_MS:.2f}x of the 100 ms target)"
    )
    print(
        f"long-tail table, Catalog.long_tail() in a session:       {in_session:7.1f} ms  "
        f"({in_session / TARGET_MS:.2f}x)"
    )
    print(
        f"long-tail by source (class x source rows):             {by_source:7.1f} ms  "
        f"({by_source / TARGET_MS:.2f}x)"
    )
    print(
        f"`workbench stats` table (by source, pivoted):          {cli_table:7.1f} ms  "
        f"({cli_table / TARGET_MS:.2f}x)"
    )


if __name__ == "__main__":
    main()
