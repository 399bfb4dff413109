"""The DuckDB catalog: sources, scans, label sets, coverage, statistics, runs, uncertainty, reviews.

Nothing but this module opens the database file. DuckDB allows one writing process at a time, so the
catalog never holds a connection open between calls: each write is one short transaction on a fresh
connection, retried while another process holds the lock (:data:`LOCK_TIMEOUT_S`). A long job (ingest,
pseudo-labelling) therefore never locks a reviewer out for longer than one scan's insert.

Tables (schema version :data:`SCHEMA_VERSION`; ``docs/catalog.md`` describes every column):

* ``schema_meta``: key/value, holds ``schema_version``.
* ``source``: one row per public dataset and protocol version.
* ``scan``: one CT volume, its geometry and content hashes; no patient identifiers.
* ``label_set``: an immutable version of a scan's labels (``original`` / ``pseudo`` / ``revised``).
* ``class_coverage``: per label set x universal class, the three-way coverage state.
* ``class_stats``: per label set x present class, voxels, mL, components, bbox, centroid, HU.
* ``split_decision``: how each component of a merged left/right pair was assigned.
* ``run``, ``text_vocabulary``, ``uncertainty``, ``review``: model runs, text embeddings, review signals
  and decisions (filled by later stages).
* ``round``: one row per active-learning round (``workbench.rounds``).
* ``ingest_issue``: files an ingest skipped, with the reason.

Example:
    >>> cat = Catalog("/tmp/ws/catalog.duckdb")  # doctest: +SKIP
    >>> cat.long_tail().head()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from storage.schema import MIGRATIONS, SCHEMA_VERSION

#: Seconds a write waits for another process's lock before giving up with :class:`CatalogBusy`.
LOCK_TIMEOUT_S = 60.0
#: How often :meth:`Catalog.add_label_set` retries when concurrent writers take the same version.
_VERSION_RETRIES = 20


class CatalogBusy(RuntimeError):
    """Another process held the catalog's write lock for longer than the timeout."""


class CatalogError(RuntimeError):
    """The catalog file is from a newer schema, or otherwise unusable."""


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_label_set_id(prefix: str = "ls-") -> str:
    """A fresh label set id, also its mask key: the mask file is written under it before the catalog row
    (a kill in between leaves an orphan file for ``gc``, never a row without masks)."""
    return prefix + uuid.uuid4().hex[:20]


@dataclass(frozen=True)
class ScanRecord:
    """What the catalog stores about one CT volume (see the ``scan`` table)."""

    id: str
    source_id: str
    case_id: str
    image_path: str
    label_path: str
    image_sha256: str
    image_bytes: int
    image_mtime: float
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axcodes: str
    affine: tuple[float, ...]
    hu_min: float | None
    hu_max: float | None
    image_format: str | None
    series_uid_sha1: str | None


@dataclass(frozen=True)
class LabelSetRecord:
    """One immutable version of a scan's labels (see the ``label_set`` table).

    ``version=None`` lets :meth:`Catalog.add_label_set` allocate the scan's next version number.
    """

    id: str
    scan_id: str
    version: int | None
    origin: str
    mask_key: str
    parent_id: str | None = None
    run_id: str | None = None
    author: str | None = None
    protocol_version: int | None = None
    label_sha256: str | None = None
    label_bytes: int | None = None
    label_mtime: float | None = None
    midline_x_mm: float | None = None
    midline_method: str | None = None
    native_voxels: dict[str, int] | None = None
    notes: tuple[str, ...] = ()


class Catalog:
    """The workspace's DuckDB catalog.

    Args:
        path: the ``.duckdb`` file; created (with its schema) on first write.
        lock_timeout_s: how long a write waits for another process's lock.
    """

    def __init__(self, path: str | Path, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as con:
            self._migrate(con)

    # -- connections -------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Catalog]:
        """Pin one read-write connection for a burst of calls in this thread (an app page render, an
        ingest's bookkeeping): every method inside uses it instead of opening its own. Hold it briefly:
        while it is open, other processes wait for the file."""
        if getattr(self._local, "con", None) is not None:
            yield self
            return
        with self.connect() as con:
            self._local.con = con
            try:
                yield self
            finally:
                self._local.con = None

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits (with back-off) while another process holds the file.
        Inside :meth:`session`, the pinned connection."""
        pinned = getattr(self._local, "con", None)
        if pinned is not None:
            yield pinned
            return
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    if "lock" in str(e).lower():
                        raise CatalogBusy(
                            f"{self.path}: another process held the catalog for {self.lock_timeout_s:.0f} s"
                        ) from e
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One atomic write: everything inside commits together or not at all."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path}: catalog schema v{current} is newer than this workbench (v{SCHEMA_VERSION}); "
                "upgrade the workbench"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            con.execute("BEGIN TRANSACTION")
            con.execute(MIGRATIONS[version])
            con.execute("INSERT OR REPLACE INTO schema_meta VALUES ('schema_version', ?)", [str(version)])
            con.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self.connect(read_only=True) as con:
            row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    # -- writes ------------------------------------------------------------------------------------
    def add_label_set(
        self,
        label_set: LabelSetRecord,
        coverage: dict[str, str],
        stats: Sequence[dict[str, Any]],
        splits: Sequence[dict[str, Any]] = (),
        scan: ScanRecord | None = None,
    ) -> LabelSetRecord:
        """Write a label set with its coverage, statistics and split decisions (and its scan, if new)
        in ONE transaction: a reader sees all of it or none of it, also after a kill.

        With ``label_set.version=None`` the version is allocated here, inside the transaction (the
        scan's highest version + 1); when another writer takes the same number first (a reviewer's
        correction beside a pseudo-label job), the write is retried with the next one.

        Returns:
            The record as stored (with its version).
        """
        allocate = label_set.version is None
        for attempt in range(_VERSION_RETRIES):
            try:
                return self._insert_label_set(label_set, coverage, stats, splits, scan, allocate)
            except (duckdb.ConstraintException, duckdb.TransactionException) as e:
                # A concurrent connection of this process surfaces the clash at COMMIT, another process
                # at the INSERT; either way only an allocated version is worth another try.
                if not allocate or "duplicate key" not in str(e).lower() or attempt == _VERSION_RETRIES - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _insert_label_set(
        self,
        label_set: LabelSetRecord,
        coverage: dict[str, str],
        stats: Sequence[dict[str, Any]],
        splits: Sequence[dict[str, Any]],
        scan: ScanRecord | None,
        allocate: bool,
    ) -> LabelSetRecord:
        now = utc_now()
        with self.transaction() as con:
            if scan is not None:
                con.execute(
                    "INSERT INTO scan VALUES (" + ", ".join(["?"] * 17) + ")",
                    [
                        scan.id,
                        scan.source_id,
                        scan.case_id,
                        scan.image_path,
                        scan.label_path,
                        scan.image_sha256,
                        scan.image_bytes,
                        scan.image_mtime,
                        list(scan.shape),
                        list(scan.spacing),
                        scan.axcodes,
                        list(scan.affine),
                        scan.hu_min,
                        scan.hu_max,
                        scan.image_format,
                        scan.series_uid_sha1,
                        now,
                    ],
                )
            ls = label_set
            if allocate:
                row = con.execute(
                    "SELECT coalesce(max(version), 0) + 1 FROM label_set WHERE scan_id = ?", [ls.scan_id]
                ).fetchone()
                ls = dataclasses.replace(ls, version=int(row[0]))  # type: ignore[index]
            con.execute(
                "INSERT INTO label_set VALUES (" + ", ".join(["?"] * 17) + ")",
                [
                    ls.id,
                    ls.scan_id,
                    ls.version,
                    ls.origin,
                    ls.parent_id,
                    ls.run_id,
                    ls.author,
                    ls.protocol_version,
                    ls.label_sha256,
                    ls.label_bytes,
                    ls.label_mtime,
                    ls.mask_key,
                    ls.midline_x_mm,
                    ls.midline_method,
                    json.dumps(ls.native_voxels) if ls.native_voxels is not None else None,
                    list(ls.notes),
                    now,
                ],
            )
            cov = pa.table(
                {
                    "label_set_id": [ls.id] * len(coverage),
                    "scan_id": [ls.scan_id] * len(coverage),
                    "class_name": list(coverage),
                    "state": list(coverage.values()),
                }
            )
            con.register("cov_in", cov)
            con.execute("INSERT INTO class_coverage SELECT * FROM cov_in")
            con.unregister("cov_in")
            if stats:
                st = pa.table(
                    {
                        "label_set_id": [ls.id] * len(stats),
                        "class_name": [s["name"] for s in stats],
                        "voxels": pa.array([s["voxels"] for s in stats], pa.int64()),
                        "volume_ml": [float(s["volume_ml"]) for s in stats],
                        "components": pa.array([s["components"] for s in stats], pa.int32()),
                        "bbox": [list(s["bbox"]) for s in stats],
                        "centroid_mm": [list(s["centroid_mm"]) for s in stats],
                        "hu_mean": [_finite_or_none(s["hu_mean"]) for s in stats],
                        "hu_std": [_finite_or_none(s["hu_std"]) for s in stats],
                    }
                )
                con.register("st_in", st)
                con.execute(
                    "INSERT INTO class_stats SELECT label_set_id, class_name, voxels, volume_ml, components, "
                    "bbox::INTEGER[6], centroid_mm::DOUBLE[3], hu_mean, hu_std FROM st_in"
                )
                con.unregister("st_in")
            if splits:
                sp = pa.table(
                    {
                        "label_set_id": [ls.id] * len(splits),
                        "pair": [d["pair"] for d in splits],
                        "component": pa.array([d["component"] for d in splits], pa.int32()),
                        "voxels": pa.array([d["voxels"] for d in splits], pa.int64()),
                        "centroid_mm": [list(d["centroid_mm"]) for d in splits],
                        "side": [d["side"] for d in splits],
                        "method": [d["method"] for d in splits],
                        "left_voxels": pa.array([d["left_voxels"] for d in splits], pa.int64()),
                        "right_voxels": pa.array([d["right_voxels"] for d in splits], pa.int64()),
                        "midline_x_mm": [float(d["midline_x_mm"]) for d in splits],
                    }
                )
                con.register("sp_in", sp)
                con.execute(
                    "INSERT INTO split_decision SELECT label_set_id, pair, component, voxels, "
                    "centroid_mm::DOUBLE[3], side, method, left_voxels, right_voxels, midline_x_mm FROM sp_in"
                )
                con.unregister("sp_in")
        return ls

    def log_issue(self, source_id: str, path: str, problem: str) -> None:
        """Record a file that an ingest skipped."""
        with self.transaction() as con:
            con.execute("INSERT INTO ingest_issue VALUES (?, ?, ?, ?)", [source_id, path, problem, utc_now()])

    def add_vocabulary(
        self,
        name: str,
        sha256: str,
        encoder: str,
        weights: str,
        template: str,
        class_names: Sequence[str],
        prompts: Sequence[str],
        embeddings: bytes,
        dim: int,
        note: str = "",
    ) -> None:
        """Store a text vocabulary (idempotent on ``sha256``; the name may be re-pointed)."""
        with self.transaction() as con:
            con.execute("DELETE FROM text_vocabulary WHERE sha256 = ? OR name = ?", [sha256, name])
            con.execute(
                "INSERT INTO text_vocabulary (sha256, name, encoder, weights, template, class_names, "
                "prompts, dim, embeddings, created_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    sha256,
                    name,
                    encoder,
                    weights,
                    template,
                    list(class_names),
                    list(prompts),
                    dim,
                    embeddings,
                    utc_now(),
                    note,
                ],
            )

    def vocabulary(self, name_or_sha: str) -> dict[str, Any]:
        """A stored vocabulary row by name or hash; ``KeyError`` lists what is stored."""
        df = self.query(
            "SELECT * FROM text_vocabulary WHERE name = ? OR sha256 = ?", [name_or_sha, name_or_sha]
        )
        if df.empty:
            known = self.query("SELECT name FROM text_vocabulary ORDER BY name")["name"].tolist()
            raise KeyError(
                f"no text vocabulary {name_or_sha!r} in the catalog; stored: {known or 'none'} "
                "(create one with `workbench embed`)"
            )
        return df.iloc[0].to_dict()

    def start_run(self, run_id: str, kind: str, **fields: Any) -> None:
        """Record the start of a model run (``kind``: train, pseudolabel, evaluate, ...)."""
        cols = ["checkpoint_sha256", "text_encoder", "vocabulary_sha256", "device", "config"]
        values = [
            fields.get(c) if not isinstance(fields.get(c), dict) else json.dumps(fields[c]) for c in cols
        ]
        with self.transaction() as con:
            con.execute(
                f"INSERT INTO run (id, kind, {', '.join(cols)}, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, kind, *values, utc_now()],
            )

    def finish_run(
        self,
        run_id: str,
        *,
        metrics: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE run SET finished_at = ?, metrics = ?, timings = ?, "
                "checkpoint_sha256 = coalesce(?, checkpoint_sha256) WHERE id = ?",
                [utc_now(), json.dumps(metrics or {}), json.dumps(timings or {}), checkpoint_sha256, run_id],
            )

    def add_train_record(self, run_id: str, record: dict[str, Any]) -> None:
        """Store one per-epoch/round training record (idempotent on run, epoch and step); its loss is
        ``mean_loss`` (or ``loss``), the whole record is kept as JSON."""
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO train_record VALUES (?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    int(record.get("epoch", 0)),
                    int(record.get("step", 0)),
                    _finite_or_none(record.get("mean_loss", record.get("loss", float("nan")))),
                    json.dumps(record, default=str),
                    utc_now(),
                ],
            )

    # -- reads -------------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query and return a DataFrame."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def begin_ingest(
        self,
        source_id: str,
        name: str,
        protocol_version: int,
        annotated: Sequence[str],
        merged_pairs: Sequence[str],
        layout_kind: str,
        reference: str = "",
    ) -> tuple[dict[str, dict[str, Any]], set[str], set[str]]:
        """Register the source and read everything an ingest of it needs, in ONE connection.

        Returns ``(by_case, image_hashes, mask_keys)``: case id -> the scan's row plus its latest
        original label set (columns prefixed ``ls_``); the image hashes of every scan in the catalog
        (all sources); the mask keys every label set references.
        """
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO source VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    source_id,
                    name,
                    protocol_version,
                    list(annotated),
                    list(merged_pairs),
                    layout_kind,
                    reference,
                    utc_now(),
                ],
            )
            by_case, hashes = self._source_state(con, source_id)
            keys = {r[0] for r in con.execute("SELECT mask_key FROM label_set").fetchall()}
        return by_case, hashes, keys

    def source_state(self, source_id: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """``(by_case, image_hashes)`` as in :meth:`begin_ingest`, read-only."""
        with self.connect(read_only=True) as con:
            return self._source_state(con, source_id)

    @staticmethod
    def _source_state(
        con: duckdb.DuckDBPyConnection, source_id: str
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        df = con.execute(
            """
            SELECT s.*, l.id AS ls_id, l.version AS ls_version, l.label_sha256 AS ls_label_sha256,
                   l.label_bytes AS ls_label_bytes, l.label_mtime AS ls_label_mtime,
                   (SELECT max(version) FROM label_set a WHERE a.scan_id = s.id) AS ls_max_version
            FROM scan s LEFT JOIN (
                SELECT * FROM label_set WHERE origin = 'original'
                QUALIFY row_number() OVER (PARTITION BY scan_id ORDER BY version DESC) = 1
            ) l ON l.scan_id = s.id
            WHERE s.source_id = ?
            """,
            [source_id],
        ).df()
        hashes = {r[0] for r in con.execute("SELECT image_sha256 FROM scan").fetchall()}
        return {r["case_id"]: r for r in df.to_dict("records")}, hashes

    def scan_by_case(self, source_id: str, case_id: str) -> dict[str, Any] | None:
        df = self.query("SELECT * FROM scan WHERE source_id = ? AND case_id = ?", [source_id, case_id])
        return None if df.empty else df.iloc[0].to_dict()

    def scans_by_sha(self, image_sha256: str) -> pd.DataFrame:
        return self.query(
            "SELECT id, source_id, case_id, image_path FROM scan WHERE image_sha256 = ?", [image_sha256]
        )

    def label_sets(self, scan_id: str | None = None) -> pd.DataFrame:
        if scan_id is None:
            return self.query("SELECT * FROM label_set ORDER BY scan_id, version")
        return self.query("SELECT * FROM label_set WHERE scan_id = ? ORDER BY version", [scan_id])

    def latest_original(self, scan_id: str) -> dict[str, Any] | None:
        df = self.query(
            "SELECT * FROM label_set WHERE scan_id = ? AND origin = 'original' ORDER BY version DESC LIMIT 1",
            [scan_id],
        )
        return None if df.empty else df.iloc[0].to_dict()

    def coverage(self, label_set_id: str) -> dict[str, str]:
        df = self.query("SELECT class_name, state FROM class_coverage WHERE label_set_id = ?", [label_set_id])
        return dict(zip(df["class_name"], df["state"]))

    def mask_keys(self) -> set[str]:
        return set(self.query("SELECT mask_key FROM label_set")["mask_key"])

    def long_tail(self, by_source: bool = False) -> pd.DataFrame:
        """The long-tail table from each scan's current original labels.

        Returns one row per universal class (in model order), or per class x source with
        ``by_source=True``, with columns ``annotated`` (scans whose source annotates the class),
        ``present``, ``absent``, ``not_annotated``.
        """
        keys = "c.class_name, s.source_id" if by_source else "c.class_name"
        sql = f"""
            WITH cur AS (
                SELECT arg_max(id, version) AS label_set_id, scan_id
                FROM label_set WHERE origin = 'original' GROUP BY scan_id
            )
            SELECT {keys},
                count(*) FILTER (WHERE c.state <> 'not_annotated') AS annotated,
                count(*) FILTER (WHERE c.state = 'annotated_present') AS present,
                count(*) FILTER (WHERE c.state = 'annotated_absent') AS absent,
                count(*) FILTER (WHERE c.state = 'not_annotated') AS not_annotated
            FROM class_coverage c
            JOIN cur USING (label_set_id)
            JOIN scan s ON s.id = cur.scan_id
            GROUP BY {keys}
        """
        df = self.query(sql)
        from harmonize.taxonomy import class_names

        order = {n: i for i, n in enumerate(class_names())}
        df["_o"] = df["class_name"].map(order)
        sort = ["_o", "source_id"] if by_source else ["_o"]
        return df.sort_values(sort).drop(columns="_o").reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for summaries and the app's overview)."""
        tables = (
            "source",
            "scan",
            "label_set",
            "class_coverage",
            "class_stats",
            "run",
            "review",
            "ingest_issue",
        )
        with self.connect(read_only=True) as con:
            return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}  # type: ignore[index]

    # -- held-out split and evaluation (v4) ---------------------------------------------------------
    def split_assignments(self) -> dict[str, str]:
        """scan id -> ``train`` / ``held_out`` for every scan the split has assigned."""
        df = self.query("SELECT scan_id, split FROM split")
        return dict(zip(df["scan_id"].astype(str), df["split"].astype(str)))

    def add_split_assignments(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store split rows (keys ``scan_id, split, method, fraction, seed``); a scan that already has a
        split keeps it (first writer wins), so concurrent callers agree."""
        if not rows:
            return
        table = pa.table(
            {
                "scan_id": [str(r["scan_id"]) for r in rows],
                "split": [str(r["split"]) for r in rows],
                "method": [str(r["method"]) for r in rows],
                "fraction": [float(r["fraction"]) for r in rows],
                "seed": pa.array([int(r["seed"]) for r in rows], pa.int64()),
            }
        )
        with self.transaction() as con:
            con.register("split_in", table)
            con.execute(
                "INSERT INTO split SELECT scan_id, split, method, fraction, seed, ? FROM split_in "
                "ON CONFLICT DO NOTHING",
                [utc_now()],
            )
            con.unregister("split_in")

    def add_evaluation_items(self, run_id: str, tolerance_mm: float, items: Sequence[dict[str, Any]]) -> None:
        """Store one ``evaluation`` row per scored scan x class of evaluate run ``run_id`` (one
        transaction; item keys as the table's columns)."""
        if not items:
            return
        table = pa.table(
            {
                "run_id": [run_id] * len(items),
                "scan_id": [str(i["scan_id"]) for i in items],
                "source_id": [str(i["source_id"]) for i in items],
                "class_name": [str(i["class_name"]) for i in items],
                "truth_state": [str(i["truth_state"]) for i in items],
                "truth_voxels": pa.array([int(i["truth_voxels"]) for i in items], pa.int64()),
                "predicted_voxels": pa.array([int(i["predicted_voxels"]) for i in items], pa.int64()),
                "dice": [float(i["dice"]) for i in items],
                "nsd": [float(i["nsd"]) for i in items],
                "tolerance_mm": [float(tolerance_mm)] * len(items),
                "truth_label_set_id": [_str_or_none(i.get("truth_label_set_id")) for i in items],
                "prediction_label_set_id": [_str_or_none(i.get("prediction_label_set_id")) for i in items],
            }
        )
        with self.transaction() as con:
            con.register("ev_in", table)
            con.execute("INSERT INTO evaluation SELECT * FROM ev_in")
            con.unregister("ev_in")

    # -- pseudo-labelling: runs, scans to label, uncertainty (workbench.pseudolabel) -----------------
    # (named queries of the pseudo-label wing go here)

    # -- review: decisions, corrections, the queue (workbench.review) --------------------------------
    # (named queries of the review wing go here)

    # -- learning: split, training rows, evaluation, rounds (workbench.learning) ---------------------
    # (named queries of the learning wing go here)
    #: The columns of the ``round`` table, in the order :meth:`rounds` returns them.
    ROUND_COLUMNS = (
        "round_number",
        "train_run_id",
        "pseudolabel_run_id",
        "evaluate_run_id",
        "checkpoint_path",
        "checkpoint_sha256",
        "previous_checkpoint_sha256",
        "reviewed",
        "inputs",
        "metrics",
        "created_at",
    )

    def scan_sources(self) -> dict[str, str]:
        """scan id -> source id of every scan in the catalog (what the held-out split stratifies by)."""
        df = self.query("SELECT id, source_id FROM scan")
        return dict(zip(df["id"].astype(str), df["source_id"].astype(str)))

    def scan_geometry(self, scan_ids: Sequence[str]) -> pd.DataFrame:
        """The grid of these scans.

        Returns:
            One row per known scan id, columns ``id, source_id, image_path, shape`` (3 ints), ``spacing``
            (3 floats, mm) and ``affine`` (16 floats, row-major voxel -> RAS+ mm); unknown ids have no row.
        """
        return self.query(
            "SELECT id, source_id, image_path, shape, spacing, affine FROM scan "
            "WHERE id IN (SELECT unnest(?))",
            [list(scan_ids)],
        )

    def label_set_mask_key(self, label_set_id: str) -> str | None:
        """The mask-store key of a label set; None when there is no such label set."""
        df = self.query("SELECT mask_key FROM label_set WHERE id = ?", [label_set_id])
        return None if df.empty else str(df["mask_key"].iloc[0])

    def run_pseudo_label_sets(self, run_id: str) -> pd.DataFrame:
        """The ``pseudo`` label sets a run wrote, the newest one per scan.

        Returns:
            Columns ``id, scan_id, mask_key, shape`` (the scan's voxel shape); empty when the run wrote none.
        """
        return self.query(
            """
            SELECT l.id, l.scan_id, l.mask_key, s.shape FROM label_set l JOIN scan s ON s.id = l.scan_id
            WHERE l.origin = 'pseudo' AND l.run_id = ?
            QUALIFY row_number() OVER (PARTITION BY l.scan_id ORDER BY l.version DESC) = 1
            """,
            [run_id],
        )

    def pseudo_label_run_ids(self) -> list[str]:
        """The run ids that wrote ``pseudo`` label sets, sorted."""
        df = self.query("SELECT DISTINCT run_id FROM label_set WHERE origin = 'pseudo' ORDER BY 1")
        return [str(r) for r in df["run_id"]]

    def latest_uncertainty_run(self) -> str | None:
        """The newest (by start time) ``pseudolabel`` run that wrote uncertainty rows; None when none did."""
        df = self.query(
            "SELECT id FROM run WHERE kind = 'pseudolabel' AND id IN (SELECT run_id FROM uncertainty) "
            "ORDER BY started_at DESC LIMIT 1"
        )
        return None if df.empty else str(df["id"].iloc[0])

    def rounds(self) -> pd.DataFrame:
        """Every active-learning round, oldest first.

        Returns:
            Columns ``round_number, train_run_id, pseudolabel_run_id, evaluate_run_id, checkpoint_path,
            checkpoint_sha256, previous_checkpoint_sha256, reviewed, inputs, metrics, created_at``
            (``inputs`` and ``metrics`` as JSON text).
        """
        return self.query(f"SELECT {', '.join(self.ROUND_COLUMNS)} FROM round ORDER BY round_number")

    def latest_round(self) -> dict[str, Any] | None:
        """The row of the newest round (columns as :meth:`rounds`); None before the first round."""
        df = self.query(
            f"SELECT {', '.join(self.ROUND_COLUMNS)} FROM round ORDER BY round_number DESC LIMIT 1"
        )
        return None if df.empty else df.iloc[0].to_dict()

    def add_round(
        self,
        *,
        round_number: int,
        train_run_id: str,
        pseudolabel_run_id: str | None,
        evaluate_run_id: str | None,
        checkpoint_path: str,
        checkpoint_sha256: str,
        previous_checkpoint_sha256: str | None,
        reviewed: int,
        inputs: dict[str, Any],
        metrics: dict[str, Any],
    ) -> None:
        """Record one active-learning round (``inputs`` and ``metrics`` stored as JSON, values that are not
        JSON as ``str``; ``created_at`` is now). A round number that exists already is refused."""
        values = [
            int(round_number),
            train_run_id,
            pseudolabel_run_id,
            evaluate_run_id,
            str(checkpoint_path),
            checkpoint_sha256,
            previous_checkpoint_sha256,
            int(reviewed),
            json.dumps(inputs, default=str),
            json.dumps(metrics, default=str),
            utc_now(),
        ]
        with self.transaction() as con:
            con.execute(
                f"INSERT INTO round ({', '.join(self.ROUND_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(self.ROUND_COLUMNS))})",
                values,
            )

    # -- exports, training sets and the app's dashboards (workbench.export, workbench.app_data) ------
    # (named queries of the export and app wings go here)


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def _str_or_none(x: Any) -> str | None:
    return None if x is None or (isinstance(x, float) and x != x) else str(x)
