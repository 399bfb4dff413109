"""Catalog queries at 10,000 scans x 32 classes: the long-tail table must answer in < 100 ms.

Builds a synthetic catalog (bulk inserts through Arrow, never executemany) with 10,000 scans from 20
sources, one original label set each, 320,000 coverage rows and a statistics row per present class, then
times, as medians of repeated runs in this one process:

* ``Catalog.long_tail()``: the whole call a user or the app makes (fresh connection, query, DataFrame);
* ``Catalog.long_tail()`` inside ``Catalog.session()`` (what an app page render pays);
* the bare SQL on an already open connection;
* ``long_tail(by_source=True)`` and the ``workbench stats`` table built on it.

    python benchmarks/bench_catalog.py [--scans 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from harmonize.taxonomy import class_names
from storage.catalog import Catalog, utc_now
from storage.workspace import Workspace

TARGET_MS = 100.0


def build(cat: Catalog, n_scans: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = class_names()
    sources = [f"source_{i:02d}" for i in range(20)]
    # each source annotates a random subset of classes; rare classes are annotated by few sources
    annotated = {s: set(rng.choice(names, size=int(rng.integers(1, 16)), replace=False)) for s in sources}
    scan_source = rng.choice(sources, size=n_scans)
    scan_ids = [f"{s}:case_{i:06d}" for i, s in enumerate(scan_source)]
    now = utc_now()
    scans = pa.table(
        {
            "id": scan_ids,
            "source_id": scan_source.tolist(),
            "case_id": [f"case_{i:06d}" for i in range(n_scans)],
            "image_path": [f"/data/{i}.nii.gz" for i in range(n_scans)],
            "label_path": ["/data/l.nii.gz"] * n_scans,
            "image_sha256": [f"{i:064d}" for i in range(n_scans)],
            "image_bytes": [1] * n_scans,
            "image_mtime": [0.0] * n_scans,
            "shape": [[512, 512, 200]] * n_scans,
            "spacing": [[0.8, 0.8, 1.5]] * n_scans,
            "axcodes": ["LPS"] * n_scans,
            "affine": [list(np.eye(4).ravel())] * n_scans,
            "hu_min": [-1024.0] * n_scans,
            "hu_max": [3000.0] * n_scans,
            "image_format": ["nifti"] * n_scans,
            "series_uid_sha1": [None] * n_scans,
            "ingested_at": [now] * n_scans,
        }
    )
    ls_ids = [f"ls-{i:08d}" for i in range(n_scans)]
    label_sets = pa.table(
        {
            "id": ls_ids,
            "scan_id": scan_ids,
            "version": [1] * n_scans,
            "origin": ["original"] * n_scans,
            "mask_key": ls_ids,
            "created_at": [now] * n_scans,
        }
    )
    cov_ls, cov_scan, cov_class, cov_state = [], [], [], []
    st_ls, st_class = [], []
    for ls, scan, src in zip(ls_ids, scan_ids, scan_source):
        for name in names:
            if name in annotated[src]:
                state = "annotated_present" if rng.random() < 0.9 else "annotated_absent"
            else:
                state = "not_annotated"
            cov_ls.append(ls)
            cov_scan.append(scan)
            cov_class.append(name)
            cov_state.append(state)
            if state == "annotated_present":
                st_ls.append(ls)
                st_class.append(name)
    coverage = pa.table(
        {"label_set_id": cov_ls, "scan_id": cov_scan, "class_name": cov_class, "state": cov_state}
    )
    n = len(st_ls)
    stats = pa.table(
        {
            "label_set_id": st_ls,
            "class_name": st_class,
            "voxels": rng.integers(100, 10**6, n),
            "volume_ml": rng.random(n) * 1000,
            "components": rng.integers(1, 4, n).astype(np.int32),
            "bbox": [[0, 0, 0, 10, 10, 10]] * n,
            "centroid_mm": [[0.0, 0.0, 0.0]] * n,
            "hu_mean": rng.normal(60, 20, n),
            "hu_std": rng.random(n) * 30,
        }
    )
    with cat.transaction() as con:
        for src in sources:
            con.execute(
                "INSERT INTO source VALUES (?, ?, 1, ?, [], 'paired', '', now())",
                [src, src, sorted(annotated[src])],
            )
        con.register("scans_in", scans)
        con.execute(
            "INSERT INTO scan SELECT id, source_id, case_id, image_path, label_path, image_sha256, "
            "image_bytes, image_mtime, shape::INTEGER[3], spacing::DOUBLE[3], axcodes, affine::DOUBLE[16], "
            "hu_min, hu_max, image_format, series_uid_sha1, ingested_at FROM scans_in"
        )
        con.register("ls_in", label_sets)
        con.execute(
            "INSERT INTO label_set (id, scan_id, version, origin, mask_key, created_at) SELECT * FROM ls_in"
        )
        con.register("cov_in", coverage)
        con.execute("INSERT INTO class_coverage SELECT * FROM cov_in")
        con.register("st_in", stats)
        con.execute(
            "INSERT INTO class_stats SELECT label_set_id, class_name, voxels, volume_ml, components, "
            "bbox::INTEGER[6], centroid_mm::DOUBLE[3], hu_mean, hu_std FROM st_in"
        )


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
        build(ws.catalog, args.scans)
        counts = ws.catalog.counts()
        print(
            f"built {counts['scan']} scans, {counts['class_coverage']} coverage rows, "
            f"{counts['class_stats']} stats rows in {time.perf_counter() - t:.1f} s (Arrow bulk insert)"
        )
        full = median_ms(ws.catalog.long_tail)
        with ws.catalog.session():
            in_session = median_ms(ws.catalog.long_tail)
        with ws.catalog.connect(read_only=True) as con:
            sql_only = median_ms(
                lambda: con.execute(
                    "WITH cur AS (SELECT arg_max(id, version) AS label_set_id, scan_id FROM label_set "
                    "WHERE origin = 'original' GROUP BY scan_id) "
                    "SELECT c.class_name, count(*) FILTER (WHERE c.state <> 'not_annotated') AS annotated, "
                    "count(*) FILTER (WHERE c.state = 'annotated_present') AS present, "
                    "count(*) FILTER (WHERE c.state = 'annotated_absent') AS absent, "
                    "count(*) FILTER (WHERE c.state = 'not_annotated') AS not_annotated "
                    "FROM class_coverage c JOIN cur USING (label_set_id) JOIN scan s ON s.id = cur.scan_id "
                    "GROUP BY c.class_name"
                ).fetchall()
            )
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
        f"long-tail SQL on an open connection:                   {sql_only:7.1f} ms  "
        f"({sql_only / TARGET_MS:.2f}x)"
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
