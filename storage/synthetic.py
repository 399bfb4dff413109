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
from storage.catalog import Catalog, ScanRecord


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


def build_synthetic_catalog(
    cat: Catalog,
    n_scans: int,
    seed: int = 0,
    n_sources: int = 20,
    *,
    uncertainty_fraction: float = 0.0,
    reviewed_fraction: float = 0.01,
) -> None:
    """Fill ``cat`` with ``n_scans`` synthetic scans from ``n_sources`` sources, one ``original`` label
    set each, coverage for all 32 classes and a statistics row per present class, with set-based SQL
    (``range()`` and ``hash()`` inside DuckDB, no Python loop over scans): a million scans take minutes.

    Each source annotates a random subset of 1-15 classes, so rare classes are annotated by few sources
    (a long tail); 90 % of annotated classes are present. Scan ids are ``source_XX:case_NNNNNNN``, label
    set ids ``ls-NNNNNNNN``. With ``uncertainty_fraction`` > 0 that fraction of the scans also gets a
    ``pseudo`` label set (version 2, run ``run-synthetic``; every class the source does not annotate is
    present in it) with one ``uncertainty`` row per such class (score in [0, 1), one or two reasons), and
    ``reviewed_fraction`` of those items a decision (accept or reject). For benchmarks of the catalog and
    the app: nothing here is a real scan, and no mask file is written.

    Args:
        cat: an empty catalog.
        n_scans: scans to create.
        seed: the pseudo-random choices (sources, states, statistics, scores) follow from it.
        n_sources: sources ``source_00`` ...
        uncertainty_fraction: scans with a pseudo label set and queue items, 0-1.
        reviewed_fraction: queue items with a decision, 0-1.
    """
    rng = np.random.default_rng(seed)
    names = class_names()
    sources = [f"source_{i:02d}" for i in range(n_sources)]
    # each source annotates a random subset of classes; rare classes are annotated by few sources
    annotated = {s: sorted(rng.choice(names, size=int(rng.integers(1, 16)), replace=False)) for s in sources}
    pairs = pa.table(
        {
            "source_id": [s for s in sources for _ in annotated[s]],
            "class_name": [c for s in sources for c in annotated[s]],
        }
    )
    classes = pa.table({"class_name": names, "class_no": list(range(len(names)))})
    params = {"n": int(n_scans), "seed": int(seed), "n_sources": int(n_sources)}
    with cat.transaction() as con:
        for src in sources:
            con.execute(
                "INSERT INTO source VALUES (?, ?, 1, ?, [], 'paired', '', now())", [src, src, annotated[src]]
            )
        con.register("annotates_in", pairs)
        con.register("classes_in", classes)
        for sql in _SYNTHETIC_SQL:
            con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})
        if uncertainty_fraction > 0:
            for sql in _SYNTHETIC_PSEUDO_SQL:
                values = {
                    **params,
                    "fraction": float(uncertainty_fraction),
                    "reviewed": float(reviewed_fraction),
                }
                con.execute(sql, {k: v for k, v in values.items() if f"${k}" in sql})
        con.unregister("annotates_in")
        con.unregister("classes_in")


#: A uniform number in [0, 1) from the hash of its arguments (deterministic per seed).
def _uniform(*parts: str) -> str:
    return f"(hash($seed, {', '.join(parts)}) % 1000003) / 1000003.0"


_SYNTHETIC_SQL = (
    """
    CREATE TEMP TABLE syn_scan AS
    SELECT i, 'source_' || lpad(CAST(hash($seed, 'source', i) % $n_sources AS VARCHAR), 2, '0') AS source_id,
           'case_' || lpad(CAST(i AS VARCHAR), 7, '0') AS case_id,
           'ls-' || lpad(CAST(i AS VARCHAR), 8, '0') AS ls_id
    FROM range($n) t(i)
    """,
    """
    INSERT INTO scan
    SELECT source_id || ':' || case_id, source_id, case_id, '/data/' || i || '.nii.gz', '/data/l.nii.gz',
           lpad(CAST(i AS VARCHAR), 64, '0'), 1, 0.0, [512, 512, 200]::INTEGER[3], [0.8, 0.8, 1.5]::DOUBLE[3],
           'LPS', [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]::DOUBLE[16], -1024.0, 3000.0, 'nifti',
           NULL, now()
    FROM syn_scan ORDER BY i
    """,
    """
    INSERT INTO label_set (id, scan_id, version, origin, mask_key, created_at)
    SELECT ls_id, source_id || ':' || case_id, 1, 'original', ls_id, now() FROM syn_scan ORDER BY i
    """,
    f"""
    INSERT INTO class_coverage
    SELECT s.ls_id, s.source_id || ':' || s.case_id, c.class_name,
           CASE WHEN a.class_name IS NULL THEN 'not_annotated'
                WHEN {_uniform("'state'", "s.i", "c.class_no")} < 0.9 THEN 'annotated_present'
                ELSE 'annotated_absent' END
    FROM syn_scan s CROSS JOIN classes_in c
    LEFT JOIN annotates_in a ON a.source_id = s.source_id AND a.class_name = c.class_name
    ORDER BY s.i, c.class_no
    """,
    f"""
    INSERT INTO class_stats
    SELECT c.label_set_id, c.class_name,
           100 + CAST(hash($seed, 'voxels', c.label_set_id, c.class_name) % 999900 AS BIGINT),
           {_uniform("'volume'", "c.label_set_id", "c.class_name")} * 1000,
           1 + CAST(hash($seed, 'components', c.label_set_id, c.class_name) % 3 AS INTEGER),
           [0, 0, 0, 10, 10, 10]::INTEGER[6], [0.0, 0.0, 0.0]::DOUBLE[3],
           40 + {_uniform("'hu'", "c.label_set_id", "c.class_name")} * 40,
           {_uniform("'hu_std'", "c.label_set_id", "c.class_name")} * 30
    FROM class_coverage c WHERE c.state = 'annotated_present'
    """,
    "DROP TABLE syn_scan",
)

_SYNTHETIC_PSEUDO_SQL = (
    """
    INSERT INTO run (id, kind, device, started_at, finished_at)
    VALUES ('run-synthetic', 'pseudolabel', 'cpu', now(), now())
    """,
    f"""
    CREATE TEMP TABLE syn_pseudo AS
    SELECT s.id AS scan_id, s.source_id, 'ps-' || substr(l.id, 4) AS ls_id
    FROM scan s JOIN label_set l ON l.scan_id = s.id AND l.origin = 'original'
    WHERE {_uniform("'pseudo'", "s.id")} < $fraction
    """,
    """
    INSERT INTO label_set (id, scan_id, version, origin, run_id, mask_key, created_at)
    SELECT ls_id, scan_id, 2, 'pseudo', 'run-synthetic', ls_id, now() FROM syn_pseudo
    """,
    """
    INSERT INTO class_coverage
    SELECT p.ls_id, p.scan_id, c.class_name,
           CASE WHEN a.class_name IS NULL THEN 'annotated_present' ELSE 'not_annotated' END
    FROM syn_pseudo p CROSS JOIN classes_in c
    LEFT JOIN annotates_in a ON a.source_id = p.source_id AND a.class_name = c.class_name
    """,
    f"""
    INSERT INTO uncertainty
    SELECT c.scan_id, c.class_name, 'run-synthetic', c.label_set_id,
           {_uniform("'score'", "c.label_set_id", "c.class_name")}, '{{}}',
           CASE WHEN hash($seed, 'reasons', c.label_set_id, c.class_name) % 3 = 0
                THEN ['low_confidence', 'small_volume'] ELSE ['low_confidence'] END
    FROM class_coverage c JOIN syn_pseudo p ON p.ls_id = c.label_set_id
    WHERE c.state = 'annotated_present'
    """,
    f"""
    INSERT INTO review (id, scan_id, class_name, label_set_id, decision, reviewer, created_at)
    SELECT 'rv-' || u.label_set_id || '-' || u.class_name, u.scan_id, u.class_name, u.label_set_id,
           CASE WHEN hash($seed, 'decision', u.label_set_id, u.class_name) % 4 = 0 THEN 'reject'
                ELSE 'accept' END,
           'synthetic', now()
    FROM uncertainty u WHERE {_uniform("'review'", "u.label_set_id", "u.class_name")} < $reviewed
    """,
    "DROP TABLE syn_pseudo",
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
        cat.invalidate_derived(con)
