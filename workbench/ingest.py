"""``workbench ingest SOURCE ROOT``: harmonize a dataset folder into the workspace.

Per case, in this order, so that a kill at any point leaves nothing half-written:

1. read and harmonize the case in memory (``harmonize.harmonize_case``);
2. write its masks to the mask store under a fresh key (atomic file rename);
3. write scan, label set, coverage, statistics and split decisions in ONE catalog transaction.

A kill between 2 and 3 leaves an orphan mask file that no label set references; ``workbench gc`` removes it
once it is old enough that no writer can still be about to commit it
(:meth:`storage.workspace.Workspace.collect_garbage`). An ingest never removes a published mask file: it
cannot know whether a reviewer or a pseudo-label job beside it is about to commit one. Re-ingesting the same
files changes nothing: a case whose image and label have the size and modification time on record is skipped
without reading, and one whose content hashes match is skipped after reading. A case whose label file changed
gets a new ``original`` label set version; the old one stays. A tool's output (a protocol with
``default_origin = "pseudo"``) is stored as a ``pseudo`` label set of the tool's run, with its uncertainty
rows in the same transaction (``workbench.pseudolabel.tool_runs``).

Bad input (see ``harmonize.errors.HarmonizeError``) skips that case with one clear message; the rest of
the ingest goes on and the summary lists what was skipped. A case the layout finds but cannot read before
opening a file is skipped the same way and counted: an image that is a broken link (a datalad or git-annex
dataset not fetched yet), a label without its image.

Case ids are the dataset's published case identifiers (the ``{case}`` part of the layout, e.g.
``case_00012``): stored as they are, in the scan id and wherever the scan is named. A folder whose names
may identify a patient is ingested with ``hash_case_ids=True`` (``workbench ingest --hash-case-ids``):
the case id is then :func:`hashed_case_id` (``h`` + 16 hex digits of the SHA-256 of the name, unsalted so
a re-ingest finds its scans), also in the paths of ``ingest_issue``; only ``scan.image_path`` and
``scan.label_path`` keep the real paths, since the CT is read again from there.

Across processes and machines (``workers=N``: a process pool on this machine; ``ray_address``: a Ray
cluster): steps 1 and 2 are :func:`harmonize_task`, which needs no catalog, so cases map over workers;
the driver stays the SINGLE catalog writer and commits finished cases in batches of ``batch_size``, one
transaction each (:meth:`storage.catalog.Catalog.add_label_sets`), in case order, so the catalog ends
exactly as a one-process ingest leaves it (same scans, versions, duplicates refused, summary order).
Workers write mask files themselves (atomic renames of files no row references yet), so the workspace's
``masks/`` must be at the same path on every node (a shared file system, like the dataset). A worker
that dies (SIGKILL, the out-of-memory killer) costs no committed work: the cases it held are run again
one at a time in a fresh worker, and a case that kills its worker ``retries + 1`` times is skipped with
one line. A killed driver leaves the batches committed so far and orphan mask files of the batch in
flight (``workbench gc``); the re-run takes only the missing cases.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import HarmonizedCase, harmonize_case
from harmonize.layout import LABEL_WITHOUT_IMAGE, CaseFiles, find_cases
from harmonize.protocols import Protocol, get_protocol
from harmonize.volume import Volume
from storage.catalog import IngestedLabelSet, LabelSetRecord, ScanRecord, new_label_set_id
from storage.masks import MaskStore
from storage.workspace import Workspace
from workbench.pseudolabel.tool_runs import (
    ToolContext,
    ingest_origin,
    tool_context,
    tool_output_rows,
    tool_run_id,
)

#: Cases per catalog transaction of a multi-worker ingest (a one-process ingest commits every case).
DEFAULT_BATCH = 16
#: How often a case whose worker died is tried again, alone in a fresh worker, before it is skipped.
DEFAULT_RETRIES = 1
#: Cases queued per worker beyond the one it runs (keeps workers busy, results never pile up).
IN_FLIGHT_PER_WORKER = 2
#: Fault injection for tests: a folder where ``<case id>.kill`` holding a count N > 0 makes the worker
#: that is about to harmonize that case write N - 1 and SIGKILL itself (read by :func:`harmonize_task`).
KILL_HOOK_ENV = "WORKBENCH_INGEST_KILL_DIR"
#: The columns of a scan's catalog state a worker needs (``Catalog.begin_ingest`` rows hold more).
_EXISTING_KEYS = ("image_sha256", "image_path", "ls_id", "ls_label_sha256", "ls_max_version")


@dataclass
class IngestSummary:
    """What an ingest did; ``skipped`` holds ``(path, problem)`` for every case it could not take."""

    source: str
    found: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.found} cases found, {len(self.added)} added, {len(self.updated)} with new "
            f"labels, {len(self.unchanged)} unchanged, {len(self.excluded)} excluded by inclusion rules, "
            f"{len(self.skipped)} skipped"
        ]
        out += [f"  skipped {path}: {problem}" for path, problem in self.skipped]
        return out


def scan_id_for(source_id: str, case_id: str) -> str:
    """The catalog id of a scan: ``<source>:<case>``."""
    return f"{source_id}:{case_id}"


def hashed_case_id(case_id: str) -> str:
    """The case id stored for ``case_id`` under ``--hash-case-ids``: ``h`` + the first 16 hex digits of
    its SHA-256 (unsalted: the same folder gets the same id in every ingest)."""
    return "h" + hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:16]


def _stat(path: Path) -> tuple[int, float]:
    """(bytes, mtime) of a file, or of all files in a folder (DICOM series, per-class folders)."""
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()]
        return sum(p.stat().st_size for p in files), max((p.stat().st_mtime for p in files), default=0.0)
    st = path.stat()
    return st.st_size, st.st_mtime


def volume_sha256(volume: Volume) -> str:
    """Content hash of a volume: its voxel values (dtype included) and affine, not the file's bytes, so
    the same CT stored as .nii and .nii.gz (LiTS and MSD Task03) is recognised as one scan."""
    h = hashlib.sha256()
    h.update(str(volume.array.dtype).encode())
    h.update(str(volume.shape).encode())
    h.update(np.ascontiguousarray(np.round(volume.affine, 4)).tobytes())
    # Hash the voxels in Fortran (NIfTI) order: free for nibabel's arrays, one copy for the others.
    h.update(np.asfortranarray(volume.array).T.data)
    return h.hexdigest()


def files_sha256(path: Path) -> str:
    """Hash of a label file, or of every file in a label folder (name and bytes)."""
    h = hashlib.sha256()
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with p.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def ingest(
    ws: Workspace,
    source_id: str,
    root: str | Path,
    *,
    progress: bool = True,
    hash_case_ids: bool = False,
    on_case: Callable[[CaseFiles, str], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    batch_size: int | None = None,
    retries: int = DEFAULT_RETRIES,
) -> IngestSummary:
    """Harmonize every case of ``source_id`` under ``root`` into workspace ``ws``.

    Args:
        ws: the workspace.
        source_id: a built-in source id (``workbench sources`` lists them).
        root: the dataset folder in its published layout.
        progress: show a tqdm progress bar on stderr.
        hash_case_ids: store :func:`hashed_case_id` of every case id instead of the folder or file name
            (for folders whose names may identify a patient; see the module docstring).
        on_case: called with ``(case, outcome)`` after each case (outcome: added, updated, unchanged,
            excluded, skipped), in case order, once the case is committed; used by tests to interrupt
            an ingest.
        workers: worker processes on this machine; 1 harmonizes in this process. The processes are
            started from a fork server (:func:`worker_context`): a script that passes more than 1 needs
            ``if __name__ == "__main__":``.
        ray_address: run the workers on this Ray cluster (``"auto"``, ``"ray://host:10001"``, or
            ``"local"`` for a local instance); ``workers`` is then the number of Ray tasks in flight
            (default: the cluster's CPUs).
        batch_size: cases per catalog transaction; default 1 in one process, :data:`DEFAULT_BATCH`
            with workers.
        retries: how often a case whose worker died is tried again (alone) before it is skipped.

    Raises:
        KeyError: unknown source id.
        HarmonizeError: ``root`` is not a folder of that source (nothing matches its layout).
        ValueError: ``workers`` < 1, ``batch_size`` < 1 or ``retries`` < 0.
        ImportError: ``ray_address`` without Ray installed.
    """
    if workers < 1 or (batch_size is not None and batch_size < 1) or retries < 0:
        raise ValueError(
            f"workers and batch_size must be >= 1, retries >= 0 (got {workers}, {batch_size}, {retries})"
        )
    if workers > 1 and ray_address is None and worker_context().get_start_method() == "forkserver":
        # the fork server imports while this process lists the cases and reads the catalog
        multiprocessing.forkserver.ensure_running()
    protocol = get_protocol(source_id)
    root = Path(root).resolve()
    cases = find_cases(protocol, root)
    known, hashes = ws.catalog.begin_ingest(
        protocol.id,
        protocol.name,
        protocol.protocol_version,
        protocol.annotated,
        protocol.merged_pairs,
        protocol.layout.kind,
        protocol.reference,
    )
    ws.masks.gc()  # temp files of dead writers; published mask files are `workbench gc`'s business
    summary = IngestSummary(protocol.id, found=len(cases))
    parallel = workers > 1 or ray_address is not None
    committer = _Committer(
        ws,
        protocol,
        summary,
        hashes,
        batch_size or (DEFAULT_BATCH if parallel else 1),
        on_case,
        hash_case_ids,
    )
    with tqdm(total=len(cases), desc=f"ingest {protocol.id}", unit="scan", disable=not progress) as bar:
        committer.bar = bar
        tasks = committer.triage(cases, known, str(ws.masks.root))
        if ray_address is not None:
            results = _ray_results(tasks, ray_address, workers if workers > 1 else None, retries)
        elif workers > 1:
            results = _pool_results(tasks, workers, retries)
        else:
            results = (harmonize_task(t) for t in tasks)
        for result in _in_order(results, [t.index for t in tasks]):
            committer.take(result)
        committer.finish()
    return summary


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs to harmonize one case (picklable; no catalog, no workspace object).

    Args:
        index: the case's position in the ingest (results are committed in this order).
        source_id: the source (the worker reads its protocol).
        case: the case's files (case id already hashed under ``--hash-case-ids``).
        existing: the scan's catalog state (:data:`_EXISTING_KEYS`), ``None`` for a new scan.
        masks_root: the workspace's mask store folder.
        tool: what the uncertainty rows of a tool's output need (read once per ingest), else None.
        fault_dir: the folder of :data:`KILL_HOOK_ENV` in the driver (tests), else None.
    """

    index: int
    source_id: str
    case: CaseFiles
    existing: dict[str, Any] | None
    masks_root: str
    tool: ToolContext | None = None
    fault_dir: str | None = None


@dataclass
class CaseResult:
    """A worker's answer for one case.

    Args:
        index: the task's index.
        case: the case.
        outcome: ``store`` (``item`` is ready to commit; its mask file is published), ``unchanged`` or
            ``skipped`` (``skip`` is ``(path, problem)``).
        item: the label set to commit.
        image_sha: the image's content hash (:func:`volume_sha256`).
        skip: why the case was skipped.
    """

    index: int
    case: CaseFiles
    outcome: str
    item: IngestedLabelSet | None = None
    image_sha: str | None = None
    skip: tuple[str, str] | None = None


def harmonize_task(task: CaseTask) -> CaseResult:
    """Read, harmonize and hash one case and publish its mask file (steps 1-2 of the module docstring).

    Pure apart from the mask file: runs in any process or on any node that sees the dataset and the mask
    store at the same paths. Bad input is an answer (``skipped``), never an exception.

    Args:
        task: the case and the catalog state it is compared with.

    Returns:
        The :class:`CaseResult`.
    """
    _fault_hook(task.case.case_id, task.fault_dir)
    protocol = get_protocol(task.source_id)
    case, existing = task.case, task.existing
    try:
        with ThreadPoolExecutor(1) as hasher:  # hashlib releases the GIL: the hash runs beside harmonizing
            hashing: list[Future[str]] = []
            image, harmonized = harmonize_case(
                protocol, case, on_image=lambda im: hashing.append(hasher.submit(volume_sha256, im))
            )
            image_sha = hashing[0].result()
        label_sha = files_sha256(case.label)
        has_labels = existing is not None and existing.get("ls_id") is not None
        if existing is not None:
            if existing["image_sha256"] != image_sha:
                raise HarmonizeError(
                    case.image,
                    f"case {case.case_id} is already in the catalog with a different image "
                    f"({existing['image_path']}); remove it first or give the new one another case id",
                )
            if has_labels and existing["ls_label_sha256"] == label_sha:
                return CaseResult(task.index, case, "unchanged")
        parent = None
        if existing is not None and has_labels:
            # the new version follows every label set of the scan (pseudo and revised ones too)
            parent = {"id": existing["ls_id"], "version": existing["ls_max_version"]}
        item = _label_set(
            protocol,
            case,
            image,
            harmonized,
            image_sha,
            label_sha,
            scan_is_new=existing is None,
            parent=parent,
            tool=task.tool,
        )
        MaskStore(task.masks_root).write_label_set(
            item.label_set.id, dict(harmonized.masks), harmonized.shape
        )
    except HarmonizeError as e:
        return CaseResult(task.index, case, "skipped", skip=(e.path, e.problem))
    except (OSError, MemoryError) as e:
        return CaseResult(task.index, case, "skipped", skip=(str(case.image), _os_problem(e)))
    return CaseResult(task.index, case, "store", item, image_sha)


def _fault_hook(case_id: str, folder: str | None) -> None:
    """The test hook of :data:`KILL_HOOK_ENV` (``folder``: its value in the driver when the ingest began;
    a worker forked from the fork server has the server's environment, not the driver's of now): SIGKILL
    this process while the case's count is > 0."""
    if not folder:
        return
    marker = Path(folder) / f"{case_id}.kill"
    try:
        left = int(marker.read_text())
    except (OSError, ValueError):
        return
    if left > 0:
        marker.write_text(str(left - 1))
        os.kill(os.getpid(), signal.SIGKILL)


class _Committer:
    """The driver's side: triage before reading, then duplicates, batches and the summary, in case order."""

    def __init__(
        self,
        ws: Workspace,
        protocol: Protocol,
        summary: IngestSummary,
        hashes: set[str],
        batch_size: int,
        on_case: Callable[[CaseFiles, str], None] | None,
        hashed: bool,
    ) -> None:
        self.ws, self.protocol, self.summary, self.hashes = ws, protocol, summary, hashes
        self.batch_size, self.on_case, self.hashed = batch_size, on_case, hashed
        self.tool = tool_context(ws, protocol)
        self.batch: list[CaseResult] = []
        self.pending_scans: dict[str, dict[str, str]] = {}  # image sha -> scan of this batch
        self.bar: Any = None

    def triage(self, cases: Iterable[CaseFiles], known: dict[str, dict], masks_root: str) -> list[CaseTask]:
        """Settle what needs no reading (excluded, a broken layout, unchanged size and mtime); return the
        tasks of the other cases. The settled ones are reported in order as their turn comes."""
        tasks = []
        self._settled: dict[int, tuple[CaseFiles, str, tuple[str, str] | None]] = {}
        for index, case in enumerate(cases):
            if self.hashed:
                case = replace(case, case_id=hashed_case_id(case.case_id))
            settled = _settle(self.protocol, case, known.get(case.case_id))
            if settled is not None:
                self._settled[index] = (case, *settled)
                continue
            existing = known.get(case.case_id)
            subset = None if existing is None else {k: existing.get(k) for k in _EXISTING_KEYS}
            tasks.append(
                CaseTask(
                    index,
                    self.protocol.id,
                    case,
                    subset,
                    masks_root,
                    self.tool,
                    fault_dir=os.environ.get(KILL_HOOK_ENV),
                )
            )
        self._next_settled = sorted(self._settled)
        return tasks

    def _report_settled_before(self, index: int | None) -> None:
        while self._next_settled and (index is None or self._next_settled[0] < index):
            case, outcome, skip = self._settled.pop(self._next_settled.pop(0))
            scan_id = scan_id_for(self.protocol.id, case.case_id)
            if outcome == "skipped":
                assert skip is not None
                self._skip(case, *skip)
            else:
                getattr(self.summary, outcome).append(scan_id)
            self._done(case, outcome)

    def take(self, result: CaseResult) -> None:
        """One worker result, in case order. Settled cases before it are reported first, after the open
        batch (whose cases all come before them) is committed, so outcomes keep the case order."""
        if self._next_settled and self._next_settled[0] < result.index:
            self.flush()
            self._report_settled_before(result.index)
        case = result.case
        if result.outcome == "skipped":
            assert result.skip is not None
            self._skip(case, *result.skip)
            self._done(case, "skipped")
            return
        if result.outcome == "unchanged":
            self.summary.unchanged.append(scan_id_for(self.protocol.id, case.case_id))
            self._done(case, "unchanged")
            return
        item, sha = result.item, result.image_sha
        assert item is not None and sha is not None
        if item.scan is not None and sha in self.hashes:
            self.ws.masks.delete(item.label_set.id)
            dup = self.pending_scans.get(sha) or self.ws.catalog.scans_by_sha(sha).iloc[0]
            problem = f"the same image is already in the catalog as scan {dup['id']} ({dup['image_path']})"
            self._skip(case, str(case.image), problem)
            self._done(case, "skipped")
            return
        if item.scan is not None:
            self.hashes.add(sha)
            self.pending_scans[sha] = {"id": item.scan.id, "image_path": item.scan.image_path}
        self.batch.append(result)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Commit the open batch (one transaction)."""
        batch, self.batch = self.batch, []
        if batch:
            self._commit(batch)
        self.pending_scans.clear()

    def finish(self) -> None:
        """Commit the open batch and report the settled cases after it."""
        self.flush()
        self._report_settled_before(None)

    def _commit(self, batch: list[CaseResult]) -> None:
        if len(batch) > 1:
            try:
                self.ws.catalog.add_label_sets([r.item for r in batch if r.item is not None])
            except Exception:  # a refused row: commit one by one below, so only that case is lost
                pass
            except BaseException:  # Ctrl-C: nothing of the batch is in the catalog, so no file stays
                for r in batch:
                    if r.item is not None:
                        self.ws.masks.delete(r.item.label_set.id)
                raise
            else:
                for r in batch:
                    self._stored(r)
                return
        for r in batch:
            assert r.item is not None
            try:
                self.ws.catalog.add_label_set(
                    r.item.label_set,
                    r.item.coverage,
                    r.item.stats,
                    r.item.splits,
                    scan=r.item.scan,
                    uncertainty=r.item.uncertainty,
                )
            except HarmonizeError as e:
                self.ws.masks.delete(r.item.label_set.id)
                if r.item.scan is not None and r.image_sha is not None:
                    self.hashes.discard(r.image_sha)  # not in the catalog: a later copy may take its place
                self._skip(r.case, e.path, e.problem)
                self._done(r.case, "skipped")
                continue
            except BaseException:  # the catalog refused: do not leave an orphan behind
                self.ws.masks.delete(r.item.label_set.id)
                raise
            self._stored(r)

    def _stored(self, r: CaseResult) -> None:
        assert r.item is not None
        scan_id = r.item.label_set.scan_id
        (self.summary.added if r.item.scan is not None else self.summary.updated).append(scan_id)
        self._done(r.case, "added" if r.item.scan is not None else "updated")

    def _done(self, case: CaseFiles, outcome: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if self.on_case is not None:
            self.on_case(case, outcome)

    def _skip(self, case: CaseFiles, path: str, problem: str) -> None:
        _skip(self.ws, self.protocol.id, self.summary, path, problem, case if self.hashed else None)


def _settle(
    protocol: Protocol, case: CaseFiles, existing: dict | None
) -> tuple[str, tuple[str, str] | None] | None:
    """``(outcome, skip)`` of a case that needs no reading, else ``None``."""
    if case.excluded:
        return "excluded", None
    if case.problem is not None:
        if case.problem == LABEL_WITHOUT_IMAGE:
            return "skipped", (str(case.label), f"{case.problem} (no {case.image})")
        return "skipped", (str(case.image), case.problem)
    has_labels = existing is not None and existing.get("ls_id") is not None
    try:
        if has_labels and case.label.exists():
            assert existing is not None
            if _stat(case.image) == (existing["image_bytes"], existing["image_mtime"]) and _stat(
                case.label
            ) == (existing["ls_label_bytes"], existing["ls_label_mtime"]):
                return "unchanged", None
    except OSError as e:
        return "skipped", (str(case.image), _os_problem(e))
    return None


def _in_order(results: Iterable[CaseResult], order: list[int]) -> Iterator[CaseResult]:
    """Yield ``results`` (arriving in any order) in the order of their indices in ``order``."""
    waiting: dict[int, CaseResult] = {}
    position = 0
    for result in results:
        waiting[result.index] = result
        while position < len(order) and order[position] in waiting:
            yield waiting.pop(order[position])
            position += 1


def _died(task: CaseTask, attempts: int) -> CaseResult:
    return CaseResult(
        task.index,
        task.case,
        "skipped",
        skip=(
            str(task.case.image),
            f"the worker process died {attempts} time(s) while ingesting this case (killed, e.g. by the "
            "out-of-memory killer); nothing of it was written",
        ),
    )


def _crashed(task: CaseTask, exc: BaseException) -> CaseResult:
    return CaseResult(
        task.index,
        task.case,
        "skipped",
        skip=(str(task.case.image), f"worker failed: {type(exc).__name__}: {exc}"),
    )


#: How often a worker checks that its driver still runs (:func:`_end_with_driver`), in seconds.
DRIVER_CHECK_S = 1.0


def _end_with_driver(driver_pid: int) -> None:
    """Pool initializer: a thread that ends this worker once the driver process is gone (killed). A worker
    forked from the fork server is not the driver's child and holds the server's liveness pipe, so without
    it a killed driver left its idle workers (and the server) waiting for work forever."""

    def watch() -> None:
        while True:
            time.sleep(DRIVER_CHECK_S)
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # a process of another user took the id: the driver is gone
                os._exit(1)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of ingest workers: a fork server that has imported this module once (numpy,
    scipy, nibabel, the harmonizer: ~1.5-2 s of imports on the 2 cores here), so every worker forks from
    it ready (milliseconds) instead of importing them again in each spawned process, which made 2 workers
    slower than 1 on a few cases; ``spawn`` where there is no fork server (Windows). The server holds no
    DuckDB connection or thread of the driver, and it stays up for later ingests of this process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _pool_results(tasks: list[CaseTask], workers: int, retries: int) -> Iterator[CaseResult]:
    """Run ``tasks`` on a process pool; a dead worker's cases are tried again alone (module docstring).

    The pool's processes are never forked from the driver (it holds DuckDB and tqdm threads): they fork
    from a fork server (:func:`worker_context`), or are spawned where there is none, so a script that calls
    this needs the ``if __name__ == "__main__":`` guard that ``multiprocessing`` asks for.
    """
    context = worker_context()
    queue = deque(tasks)
    while queue:
        suspects: list[CaseTask] = []
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_end_with_driver, initargs=(os.getpid(),)
        )
        in_flight: dict[Future[CaseResult], CaseTask] = {}
        try:
            while (queue or in_flight) and not suspects:
                while queue and len(in_flight) < workers * (1 + IN_FLIGHT_PER_WORKER):
                    task = queue.popleft()
                    in_flight[pool.submit(harmonize_task, task)] = task
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: in_flight[f].index):
                    task = in_flight.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        suspects.append(task)
                    except Exception as exc:  # a bug or a pickling error in one case
                        yield _crashed(task, exc)
            suspects.extend(in_flight.values())  # the pool is gone: every case in flight is a suspect
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        yield from _isolated(sorted(suspects, key=lambda t: t.index), context, retries)


def _isolated(suspects: list[CaseTask], context: Any, retries: int) -> Iterator[CaseResult]:
    """Run suspect cases one at a time in a one-process pool: a death now names its case, which gets
    ``retries`` more tries (each in a fresh process) before it is skipped."""
    pool: ProcessPoolExecutor | None = None
    try:
        for task in suspects:
            for _ in range(retries + 1):
                pool = pool or ProcessPoolExecutor(
                    1, mp_context=context, initializer=_end_with_driver, initargs=(os.getpid(),)
                )
                try:
                    result = pool.submit(harmonize_task, task).result()
                except BrokenProcessPool:
                    pool.shutdown(wait=True)
                    pool = None
                    continue
                except Exception as exc:
                    result = _crashed(task, exc)
                yield result
                break
            else:
                yield _died(task, retries + 2)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _ray_results(
    tasks: list[CaseTask], address: str, workers: int | None, retries: int
) -> Iterator[CaseResult]:
    """Run ``tasks`` as Ray tasks (Ray retries a task whose worker died ``retries`` times)."""
    try:
        import ray  # lazy: an optional dependency (the `scale` extra)
    except ImportError as exc:
        raise ImportError("ingest on Ray needs Ray: pip install ray==2.60.0") from exc
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            kwargs["num_cpus"] = workers or os.cpu_count() or 1
        ray.init(address=None if address == "local" else address, **kwargs)
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=retries)(harmonize_task)
        queue = deque(tasks)
        pending: dict[Any, CaseTask] = {}
        while queue or pending:
            while queue and len(pending) < n * (1 + IN_FLIGHT_PER_WORKER):
                task = queue.popleft()
                pending[remote.remote(task)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.WorkerCrashedError:
                yield _died(task, retries + 1)
            except ray.exceptions.RayError as exc:
                yield _crashed(task, exc)
    finally:
        if started_here:
            ray.shutdown()


def _os_problem(e: BaseException) -> str:
    """One line for an OS error met while reading a case (permission denied said in words)."""
    if isinstance(e, PermissionError):
        return "permission denied (this user may not read it)"
    return f"{type(e).__name__}: {e}"


def _skip(
    ws: Workspace,
    source_id: str,
    summary: IngestSummary,
    path: str,
    problem: str,
    hashed_case: CaseFiles | None,
) -> None:
    """Record a skipped case in the summary and in ``ingest_issue``; under ``--hash-case-ids``
    (``hashed_case`` given) the stored path names the case by its hashed id, never its folder name."""
    summary.skipped.append((path, problem))
    if hashed_case is not None:
        original = hashed_case.fields.get("case", "")
        if original:
            path, problem = (
                path.replace(original, hashed_case.case_id),
                problem.replace(original, hashed_case.case_id),
            )
    ws.catalog.log_issue(source_id, path, problem)


def _label_set(
    protocol: Protocol,
    case: CaseFiles,
    image: Volume,
    hc: HarmonizedCase,
    image_sha: str,
    label_sha: str,
    *,
    scan_is_new: bool,
    parent: dict | None,
    tool: ToolContext | None = None,
) -> IngestedLabelSet:
    """The catalog rows of one harmonized case (its scan only when new, the uncertainty rows of a tool's
    output with ``tool``); the mask key is a fresh id."""
    scan_id = scan_id_for(protocol.id, case.case_id)
    image_bytes, image_mtime = _stat(case.image)
    label_bytes, label_mtime = _stat(case.label)
    scan = None
    if scan_is_new:
        arr = image.array
        scan = ScanRecord(
            id=scan_id,
            source_id=protocol.id,
            case_id=case.case_id,
            image_path=str(case.image),
            label_path=str(case.label),
            image_sha256=image_sha,
            image_bytes=image_bytes,
            image_mtime=image_mtime,
            shape=image.shape,
            spacing=image.spacing,
            axcodes="".join(image.axcodes),
            affine=tuple(float(v) for v in image.affine.ravel()),
            hu_min=float(arr.min()),
            hu_max=float(arr.max()),
            image_format=image.meta.get("format"),
            series_uid_sha1=image.meta.get("series_uid_sha1"),
        )
    ls_id = new_label_set_id()
    record = LabelSetRecord(
        id=ls_id,
        scan_id=scan_id,
        version=1 if parent is None else int(parent["version"]) + 1,
        origin=ingest_origin(protocol),  # a tool's output is a pseudo-label of the tool's run
        mask_key=ls_id,
        parent_id=None if parent is None else parent["id"],
        run_id=tool_run_id(protocol),
        author=f"{protocol.id} protocol v{protocol.protocol_version}",
        protocol_version=protocol.protocol_version,
        label_sha256=label_sha,
        label_bytes=label_bytes,
        label_mtime=label_mtime,
        midline_x_mm=hc.midline_x_mm,
        midline_method=hc.midline_method,
        native_voxels=hc.native_voxels,
        notes=tuple(hc.notes),
    )
    return IngestedLabelSet(
        record,
        hc.coverage,
        [s.as_dict() for s in hc.stats.values()],
        [d.as_dict() for d in hc.splits],
        scan,
        tool_output_rows(tool, scan_id, ls_id, hc, image),
    )
