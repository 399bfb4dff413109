"""Synthetic catalogs for benchmarks: many scans without any file behind them.

Example:
    >>> import tempfile, pathlib
    >>> cat = Catalog(pathlib.Path(tempfile.mkdtemp()) / "c.duckdb")
    >>> build_synthetic_catalog(cat, 50)
    >>> cat.counts()["scan"], cat.counts()["class_coverage"]
    (50, 1600)
    >>> synthetic_scan("kits23:case_1", shape=(8, 8, 4)).spacing
    (1.0, 1.0, 1.0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from harmonize.taxonomy import class_names
from storage.catalog import Catalog, ScanRecord, utc_now


def synthetic_scan(
    scan_id: str,
    *,
    shape: Sequence[int] = (4, 4, 4),
    affine: np.ndarray | None = None,
    axcodes: str = "RAS",
    hu_range: tuple[float, float] | None = (-1000.0, 1000.0),
) -> ScanRecord:
    """A :class:`ScanRecord` of scan ``scan_id`` (``<source>:<case>``) with no file behind it.

    Args:
        scan_id: the catalog id; source and case are its two parts.
        shape: (i, j, k) voxels.
        affine: (4, 4) voxel -> RAS+ mm (default identity); the spacing is its column norms.
        axcodes: the orientation codes recorded with it.
        hu_range: ``(hu_min, hu_max)`` or None.

    Returns:
        The record; its image hash is derived from ``scan_id``, so distinct ids never collide.
    """
    source, _, case = scan_id.partition(":")
    a = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    sx, sy, sz = (float(v) for v in np.linalg.norm(a[:3, :3], axis=0))
    i, j, k = (int(v) for v in shape)
    return ScanRecord(
        id=scan_id,
        source_id=source,
        case_id=case,
        image_path=f"/synthetic/{source}/{case}.nii.gz",
        label_path=f"/synthetic/{source}/{case}_seg.nii.gz",
        image_sha256=hashlib.sha256(scan_id.encode()).hexdigest(),
        image_bytes=1,
        image_mtime=0.0,
        shape=(i, j, k),
        spacing=(sx, sy, sz),
        axcodes=axcodes,
        affine=tuple(float(v) for v in a.ravel()),
        hu_min=None if hu_range is None else float(hu_range[0]),
        hu_max=None if hu_range is None else float(hu_range[1]),
        image_format="nifti",
        series_uid_sha1=None,
    )


def build_synthetic_catalog(cat: Catalog, n_scans: int, seed: int = 0, n_sources: int = 20) -> None:
    """Fill ``cat`` with ``n_scans`` synthetic scans from ``n_sources`` sources, one ``original`` label
    set each, coverage for all 32 classes and a statistics row per present class (bulk Arrow inserts).

    Each source annotates a random subset of 1-15 classes, so rare classes are annotated by few sources
    (a long tail); 90 % of annotated classes are present. Scan ids are ``source_XX:case_NNNNNN``. For
    benchmarks of the catalog and the app: nothing here is a real scan, and no mask file is written.
    """
    rng = np.random.default_rng(seed)
    names = class_names()
    sources = [f"source_{i:02d}" for i in range(n_sources)]
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


def attach_real_case(
    cat: Catalog,
    scan_id: str,
    label_set_id: str,
    image_path: str | Path,
    shape: Sequence[int],
    affine: np.ndarray,
    present: Sequence[str],
) -> None:
    """Point one synthetic scan at a real CT file (``shape``, voxel -> RAS+ ``affine``) and mark
    ``present`` classes of its label set as annotated and present, so the app can open it; the caller
    writes the matching masks under ``label_set_id``."""
    with cat.transaction() as con:
        con.execute(
            "UPDATE scan SET image_path = ?, shape = ?::INTEGER[3], affine = ?::DOUBLE[16] WHERE id = ?",
            [str(image_path), [int(s) for s in shape], [float(v) for v in np.ravel(affine)], scan_id],
        )
        con.execute(
            "UPDATE class_coverage SET state = 'annotated_present' "
            "WHERE label_set_id = ? AND list_contains(?, class_name)",
            [label_set_id, list(present)],
        )
