"""``workbench pseudolabel``: the driver of a pseudo-label job, and what it writes.

:func:`run_jobs` is the ONE driver loop, whatever runs the scans: it plans the jobs from the catalog (resume:
a scan already done by the same checkpoint is skipped), records the ``run`` row and computes the catalog's
reference statistics once, then hands the jobs to an :class:`Executor` (:class:`LocalExecutor` in this
process, ``workbench.pseudolabel.ray.RayExecutor`` on a Ray cluster) and writes each result as it arrives.
:func:`pseudolabel` is the single-machine job.

Writing (:func:`write_scan_result`) follows ingest: masks to the mask store (atomic), then label set +
coverage + statistics + split decisions in ONE catalog transaction (the version is allocated there), then the
scan's uncertainty map and rows in one more. A kill leaves at worst an orphan mask file (removed on request by
``workbench gc``, never by a later run) or a label set without uncertainty (completed by a later run without
writing a second label set). A scan whose file vanished or is unreadable gets one line in the summary; nothing
of it is written.

Interrupted runs: the ``run`` row records the driver's process (``pid``, ``host``, and the process' start
time where the OS tells it, so a reused pid is not taken for the run). A run that raises (Ctrl-C, a refused
write) closes itself as interrupted; one killed outright is closed by the next pseudo-label job on the same
host, once its process is gone (:func:`recover_interrupted_runs`): its queue scores are recomputed (they
were never rescored), its uncertainty maps without uncertainty rows (killed between the map and the rows)
and its temporary files are removed, and the row gets ``finished_at`` and ``metrics.interrupted``. A run
whose process is alive, or that ran on another host, is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from harmonize.masks import CroppedMask
from storage.catalog import LabelSetRecord, new_label_set_id
from storage.files import PARTIAL_PREFIX
from storage.maps import uncertainty_map_path, write_uncertainty_map
from storage.workspace import Workspace
from workbench.pseudolabel.inference import THRESHOLD, TTA_SCALE, TTA_SHIFT
from workbench.pseudolabel.jobs import (
    JobOptions,
    PreparedScan,
    ScanJob,
    ScanResult,
    plan_jobs,
    prepare_scan,
    run_scan_job,
)
from workbench.pseudolabel.postprocess import RULE_NAMES
from workbench.pseudolabel.scoring import rescore
from workbench.pseudolabel.segmenter import Segmenter, load_model, resolve_device
from workbench.pseudolabel.uncertainty import (
    ReferenceStats,
    reference_stats,
    store_uncertainty,
    uncertainty_rows,
)

#: Prefix of the label set ids (and mask keys) this job writes.
MASK_KEY_PREFIX = "ls-"


# --------------------------------------------------------------------------------------- writing


def write_scan_result(ws: Workspace, result: ScanResult, run_id: str, seg: Segmenter) -> str:
    """Write one scan's pseudo label set (masks, then one catalog transaction) and its uncertainty.

    Args:
        ws: the workspace.
        result: the scan's result (without ``error``).
        run_id: the job's ``run`` row.
        seg: the model (its identity goes into the label set's author).

    Returns:
        The label set id (the existing one when the job only completed its uncertainty).
    """
    job = result.job
    if job.existing_label_set is not None:
        ls_id = job.existing_label_set
    else:
        ls_id = new_label_set_id(MASK_KEY_PREFIX)
        present = {n: m.full() for n, m in result.masks.items() if not m.is_empty}
        ws.masks.write_label_set(ls_id, present, job.shape)
        del present
        record = LabelSetRecord(
            id=ls_id,
            scan_id=job.scan_id,
            version=None,  # the catalog allocates it, also beside a reviewer's concurrent correction
            origin="pseudo",
            mask_key=ls_id,
            parent_id=job.parent_id,
            run_id=run_id,
            author=f"pseudolabel {seg.backbone} checkpoint {seg.sha256[:12]}",
            midline_x_mm=result.midline_x_mm,
            midline_method="body",
            notes=tuple(result.notes),
        )
        try:
            ws.catalog.add_label_set(record, result.coverage, result.stats, result.splits)
        except BaseException:
            ws.masks.delete(ls_id)  # the catalog refused: leave no orphan behind
            raise
    if result.signals is not None:
        if result.entropy_map is not None and result.map_affine is not None:
            write_uncertainty_map(
                ws, run_id, job.scan_id, result.entropy_map, result.map_affine, result.map_classes
            )
        rows = uncertainty_rows(job.scan_id, run_id, ls_id, result.signals, ws.catalog.annotated_counts())
        store_uncertainty(ws, rows)
        from workbench.review.double_reading import enter_queue  # here: review imports pseudolabel.scoring

        enter_queue(ws, ls_id)
    return ls_id


# ------------------------------------------------------------------------------------------ runs


@dataclass
class PseudolabelSummary:
    """What a pseudo-label job did.

    Args:
        run_id: the ``run`` row of this job.
        done: scan ids labelled (or whose uncertainty was completed) now, sorted.
        skipped: scan ids already done by the same checkpoint.
        failed: (scan id, problem) for scans that could not be processed; nothing of them was written.
        seconds: per-scan total seconds of the scans done.
        recovered: ids of killed runs this job closed as interrupted (:func:`recover_interrupted_runs`).
    """

    run_id: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary in printable lines: one overall, one per failed scan."""
        mean = f"{np.mean(self.seconds):.1f} s/scan" if self.seconds else "-"
        out = [
            f"run {self.run_id}: {len(self.done)} scans pseudo-labelled ({mean}), "
            f"{len(self.skipped)} already done by this checkpoint, {len(self.failed)} failed"
        ]
        out += [f"  failed {scan}: {problem}" for scan, problem in self.failed]
        out += [f"  closed interrupted run {run}" for run in self.recovered]
        return out


def start_run(
    ws: Workspace, seg: Segmenter, options: JobOptions, extra: Mapping[str, Any] | None = None
) -> str:
    """Record the ``run`` row of a pseudo-label job: the model's identity and every setting, the
    post-processing rules included.

    Args:
        ws: the workspace.
        seg: the model.
        options: the job's settings.
        extra: more config entries (the executor's, e.g. Ray's actors).

    Returns:
        The run id.
    """
    run_id = "run-pl-" + uuid.uuid4().hex[:16]
    spacing = list(options.spacing_mm(seg))
    trained = [float(v) for v in seg.spacing_mm]
    ws.catalog.start_run(
        run_id,
        "pseudolabel",
        checkpoint_sha256=seg.sha256,
        text_encoder=seg.encoder_id,
        vocabulary_sha256=seg.vocabulary_sha256,
        device=options.device,
        config={
            "checkpoint": seg.path,
            "model": {"name": seg.name, "kind": seg.kind},
            "backbone": seg.backbone,
            "low_res_mm": options.low_res_mm,
            "spacing_mm": spacing,
            "trained_spacing_mm": trained,
            "spacing_note": spacing_note(spacing, trained),
            "window": list(seg.patch),
            "overlap": options.overlap,
            "blending": "gaussian",
            "threshold": THRESHOLD,
            "postprocess": list(RULE_NAMES),
            "uncertainty": options.uncertainty,
            "sw_batch_size": options.sw_batch_size,
            "classes": list(seg.class_names),
            "trained_on": seg.trained_on,  # what the queue holds back (workbench.review.learnt)
            "tta": {
                "run": options.use_tta(seg),
                "scale": TTA_SCALE,
                "intensity_shift": TTA_SHIFT,
                "mirroring": False,
            },
            **dict(extra or {}),
            **this_process(),
        },
    )
    return run_id


def spacing_note(spacing_mm: Sequence[float], trained_mm: Sequence[float]) -> str | None:
    """The run record's (and the app's) line when a run infers at another spacing than the model was
    trained at, e.g. "inferred at 3 mm; the model was trained at 1.5 mm"; None when they agree."""
    if np.allclose(spacing_mm, trained_mm, atol=1e-6):
        return None
    return f"inferred at {_mm(spacing_mm)}; the model was trained at {_mm(trained_mm)}"


def _mm(spacing: Sequence[float]) -> str:
    values = sorted({float(s) for s in spacing})
    return f"{values[0]:g} mm" if len(values) == 1 else " x ".join(f"{float(s):g}" for s in spacing) + " mm"


def finish_run(ws: Workspace, run_id: str, summary: PseudolabelSummary, t_start: float) -> None:
    """Record the run's metrics and timings, and rescore its queue items with the run's own statistics
    (``workbench.pseudolabel.scoring.rescore``), now that every scan is in.

    Args:
        ws: the workspace.
        run_id: the run.
        summary: what the job did.
        t_start: ``time.perf_counter()`` at the job's start.
    """
    if summary.done:
        rescore(ws, run_id)
    ws.catalog.finish_run(
        run_id,
        metrics={"done": len(summary.done), "skipped": len(summary.skipped), "failed": len(summary.failed)},
        timings={
            "total_s": time.perf_counter() - t_start,
            "mean_scan_s": float(np.mean(summary.seconds)) if summary.seconds else None,
            "max_scan_s": float(np.max(summary.seconds)) if summary.seconds else None,
        },
    )


# ------------------------------------------------------------------------------- interrupted runs


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of proc(5), counted after the name


def this_process() -> dict[str, Any]:
    """What a ``run`` row records of its driver: ``pid``, ``host``, ``pid_start`` (see
    :func:`process_alive`)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid())}


def process_alive(pid: int, pid_start: int | None) -> bool:
    """Whether process ``pid`` of this host still runs and is the one that started at ``pid_start``.

    Args:
        pid: the process id on record.
        pid_start: its start time on record (None: not known, the pid alone decides).

    Returns:
        False when no such process exists, it is a zombie, or the pid now belongs to a later process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    if state in ("Z", "X"):
        return False
    return pid_start is None or _process_start(pid) == pid_start


def _killed(config_json: object) -> bool:
    """Whether the run of this config was driven by a process of this host that is gone."""
    try:
        config = json.loads(str(config_json))
        pid, host = int(config["pid"]), str(config["host"])
    except (ValueError, KeyError, TypeError):
        return False  # recorded before runs recorded their process: unknown, so left alone
    start = config.get("pid_start")
    return host == socket.gethostname() and not process_alive(pid, None if start is None else int(start))


def close_interrupted_run(ws: Workspace, run_id: str) -> bool:
    """Close one run that will never finish: rescore its queue items, remove its uncertainty maps that no
    uncertainty row names and its temporary map files, and mark the row interrupted.

    Args:
        ws: the workspace.
        run_id: a run whose process is gone (or this process, after the run raised).

    Returns:
        Whether the row was still unfinished (and is now marked).
    """
    items = ws.catalog.uncertainty_items(run_id)
    rescored = rescore(ws, run_id) if len(items) else 0
    kept = {uncertainty_map_path(ws, run_id, str(s)).name for s in set(items["scan_id"])}
    folder = uncertainty_map_path(ws, run_id, "x").parent
    removed = 0
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.name not in kept and (path.suffix == ".npz" or path.name.startswith(PARTIAL_PREFIX)):
            path.unlink(missing_ok=True)
            removed += 1
    label_sets = len(ws.catalog.run_pseudo_label_sets(run_id))
    return ws.catalog.mark_run_interrupted(
        run_id, {"label_sets": label_sets, "rescored": rescored, "maps_removed": removed}
    )


def recover_interrupted_runs(ws: Workspace) -> list[str]:
    """Close every unfinished pseudo-label run whose process on this host is gone (killed).

    Label sets such a run wrote stay; one that lacks its uncertainty is completed by the next job
    (``workbench.pseudolabel.jobs.plan_jobs``). Runs of live processes, of other hosts, and runs recorded
    without their process are left alone.

    Args:
        ws: the workspace.

    Returns:
        The ids of the runs closed now.
    """
    return [
        str(r["id"])
        for r in ws.catalog.unfinished_runs("pseudolabel")
        if _killed(r["config"]) and close_interrupted_run(ws, str(r["id"]))
    ]


# ------------------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Where the scans of a job are computed: takes the jobs, yields each :class:`ScanResult` as it is
    ready (any order). It never writes to the workspace; the driver writes between two results."""

    @property
    def description(self) -> str:
        """The progress bar's label."""
        ...

    @property
    def run_config(self) -> Mapping[str, Any]:
        """Entries for the run's config (how the job was run)."""
        ...

    def results(
        self, seg: Segmenter, jobs: Sequence[ScanJob], options: JobOptions, reference: ReferenceStats
    ) -> Iterator[ScanResult]:
        """Compute every job; a scan that fails comes back as a result with ``error`` set."""
        ...


@dataclass
class LocalExecutor:
    """Every scan in this process, one after the other, in job order.

    Args:
        on_masks: see :func:`~workbench.pseudolabel.jobs.run_scan_job`.
    """

    on_masks: Callable[[ScanJob, dict[str, CroppedMask]], dict[str, CroppedMask]] | None = None
    description: str = "pseudolabel"
    run_config: Mapping[str, Any] = field(default_factory=dict)

    def results(
        self, seg: Segmenter, jobs: Sequence[ScanJob], options: JobOptions, reference: ReferenceStats
    ) -> Iterator[ScanResult]:
        """Run each job with :func:`~workbench.pseudolabel.jobs.run_scan_job` when the driver asks; the
        next scan is read and preprocessed (:func:`~workbench.pseudolabel.jobs.prepare_scan`) in a
        background thread meanwhile, so the device does not wait for the disk."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
            ahead: Future[PreparedScan] | None = (
                pool.submit(prepare_scan, seg, jobs[0], options) if jobs else None
            )
            for i, job in enumerate(jobs):
                assert ahead is not None
                prepared = ahead.result()
                ahead = pool.submit(prepare_scan, seg, jobs[i + 1], options) if i + 1 < len(jobs) else None
                yield run_scan_job(seg, job, options, reference, on_masks=self.on_masks, prepared=prepared)
                del prepared


# ---------------------------------------------------------------------------------------- driver


def run_jobs(
    ws: Workspace,
    seg: Segmenter,
    options: JobOptions,
    executor: Executor,
    *,
    scans: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    all_classes: bool = False,
    progress: bool = True,
    on_scan: Callable[[str, str], None] | None = None,
) -> PseudolabelSummary:
    """The driver loop of every pseudo-label job (see module docstring).

    Args:
        ws: the workspace (only the driver writes to it).
        seg: the model.
        options: the job's settings (validated by :class:`JobOptions`).
        executor: where the scans are computed.
        scans / sources / all_classes: which scans and classes (see :func:`plan_jobs`).
        progress: show a tqdm bar.
        on_scan: called with (scan id, outcome: done / failed) after each scan is written (tests
            interrupt here).

    Returns:
        :class:`PseudolabelSummary`.

    Raises:
        HarmonizeError: unknown scan ids.
    """
    recovered = recover_interrupted_runs(ws)
    jobs, skipped = plan_jobs(
        ws, seg, scans=scans, sources=sources, all_classes=all_classes, uncertainty=options.uncertainty
    )
    t_start = time.perf_counter()
    run_id = start_run(ws, seg, options, executor.run_config)
    summary = PseudolabelSummary(run_id, skipped=skipped, recovered=recovered)
    try:
        _drive(ws, seg, options, executor, jobs, summary, progress, on_scan)
    except BaseException:
        _close_quietly(ws, run_id)
        raise
    finish_run(ws, run_id, summary, t_start)
    summary.done.sort()
    return summary


def _drive(
    ws: Workspace,
    seg: Segmenter,
    options: JobOptions,
    executor: Executor,
    jobs: Sequence[ScanJob],
    summary: PseudolabelSummary,
    progress: bool,
    on_scan: Callable[[str, str], None] | None,
) -> None:
    """Hand the jobs to the executor and write each result as it arrives (into ``summary``)."""
    reference = reference_stats(ws) if options.uncertainty else {}
    with tqdm(total=len(jobs), desc=executor.description, unit="scan", disable=not progress) as bar:
        for result in executor.results(seg, jobs, options, reference):
            scan_id = result.job.scan_id
            if result.error is not None:
                summary.failed.append((scan_id, result.error))
                outcome = "failed"
            else:
                write_scan_result(ws, result, summary.run_id, seg)  # one short transaction per scan
                summary.done.append(scan_id)
                summary.seconds.append(result.seconds.get("total", 0.0))
                outcome = "done"
            bar.update(1)
            if on_scan is not None:
                on_scan(scan_id, outcome)


def _close_quietly(ws: Workspace, run_id: str) -> None:
    """Close a run that raised as interrupted; a failure to do so (the catalog itself refused) leaves it
    to :func:`recover_interrupted_runs` of the next job, and the original error propagates."""
    with contextlib.suppress(Exception):  # best effort on the way out; the caller re-raises the cause
        close_interrupted_run(ws, run_id)


#: ``low_res_mm`` of :func:`pseudolabel`: the model's own default (a release model: its 1.5 mm; a workbench
#: checkpoint: :data:`CPU_LOW_RES_MM`).
MODEL_DEFAULT = "default"
#: The coarse CPU spacing a workbench checkpoint runs at by default.
CPU_LOW_RES_MM = 3.0


def default_low_res_mm(seg: Segmenter, low_res_mm: float | str | None) -> float | None:
    """The inference spacing of a job: ``low_res_mm`` as given, or for :data:`MODEL_DEFAULT` the model's
    own (None: its trained spacing, for a release model; 3 mm for a workbench checkpoint)."""
    if low_res_mm != MODEL_DEFAULT:
        return None if low_res_mm is None else float(low_res_mm)
    return None if seg.is_release else CPU_LOW_RES_MM


def resolve_segmenter(
    ws: Workspace,
    model: str | Path | Segmenter,
    *,
    backbone: str | None = None,
    classes: Sequence[str] | None = None,
) -> Segmenter:
    """The model of a job: a ready :class:`Segmenter`, a registered model's name, or a model file
    (workbench checkpoint or release file); ``classes`` restricts what it predicts."""
    seg = model if isinstance(model, Segmenter) else load_model(ws, model, backbone=backbone)
    return seg.with_classes(classes) if classes else seg


def pseudolabel(
    ws: Workspace,
    checkpoint_path: str | Path | Segmenter,
    *,
    scans: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    all_classes: bool = False,
    low_res_mm: float | str | None = MODEL_DEFAULT,
    overlap: float | None = None,
    device: str = "auto",
    uncertainty: bool = True,
    tta: bool | None = None,
    sw_batch_size: int = 1,
    classes: Sequence[str] | None = None,
    backbone: str | None = None,
    progress: bool = True,
    on_scan: Callable[[str, str], None] | None = None,
    on_masks: Callable[[ScanJob, dict[str, CroppedMask]], dict[str, CroppedMask]] | None = None,
) -> PseudolabelSummary:
    """Pseudo-label the workspace's scans with a model, on this machine (see module docstring).

    Args:
        ws: the workspace.
        checkpoint_path: a registered model's name, a model file (a ``save_checkpoint`` file or an
            original release file), or a ready :class:`Segmenter`.
        scans: only these scan ids (default: all).
        sources: only scans of these sources.
        all_classes: predict every class of the model, not only those the scan's labels lack.
        low_res_mm: isotropic inference spacing (mm); None: the model's trained spacing; default
            :data:`MODEL_DEFAULT` (a release model at its 1.5 mm, a workbench checkpoint at 3 mm).
        overlap: sliding-window overlap (0..1); None: the model's (0.5).
        device: 'auto' (CUDA with mixed precision when present, else CPU), 'cpu', 'cuda', ...
        uncertainty: also compute uncertainty signals, the entropy map and the queue's rows.
        tta: run the test-time augmentation (None: the model's default; see ``JobOptions.tta``).
        sw_batch_size: sliding windows per forward.
        classes: predict only these of the model's classes.
        backbone: 'unet' / 'swinunetr' for a release file whose keys are ambiguous.
        progress: show a tqdm bar.
        on_scan: called with (scan id, outcome: done / failed) after each scan (tests interrupt here).
        on_masks: see :func:`~workbench.pseudolabel.jobs.run_scan_job`.

    Returns:
        :class:`PseudolabelSummary`.

    Raises:
        ValueError: an overlap outside [0, 1), a spacing that is not positive, CUDA without a GPU.
        HarmonizeError: unreadable or unfitting model, unknown scan ids.
    """
    seg = resolve_segmenter(ws, checkpoint_path, backbone=backbone, classes=classes)
    options = JobOptions(
        default_low_res_mm(seg, low_res_mm),
        float(seg.settings.get("overlap", 0.5)) if overlap is None else overlap,
        resolve_device(device),
        uncertainty,
        tta,
        sw_batch_size,
    )
    return run_jobs(
        ws,
        seg,
        options,
        LocalExecutor(on_masks),
        scans=scans,
        sources=sources,
        all_classes=all_classes,
        progress=progress,
        on_scan=on_scan,
    )
