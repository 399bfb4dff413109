"""The pseudo-label job on a Ray cluster: one actor per GPU (CPU actors where there is none).

Optional dependency: ``pip install ray==2.60.0``. The split of work keeps the catalog's single-writer
rule and never holds its lock for the whole job:

* the driver plans the job from the catalog exactly as ``workbench.pseudolabel.pseudolabel`` does (same
  resume rule: a scan already labelled by the same checkpoint is skipped), records the ``run`` row and
  computes the catalog reference statistics once;
* each actor loads the checkpoint (it must be readable at the same path on every node, like the scans
  and the mask store: a shared file system) and checks its sha256 against the driver's; it runs
  ``run_scan_job`` (read, infer, restore the original grid, post-process, uncertainty) and returns the
  result; it never opens the catalog;
* the driver writes each result as it arrives with ``write_scan_result`` (masks, then one short catalog
  transaction per scan), so reviewers and other writers get the file between scans.

``ray.init()`` starts a local instance by default; ``address`` joins a running cluster ("auto" or
"ray://host:10001").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench import pseudolabel as pl
from workbench import uncertainty as unc

#: Jobs queued per actor beyond the one it runs (keeps actors busy without holding every result).
IN_FLIGHT_PER_ACTOR = 2


class _Worker:
    """Ray actor body: one loaded model, one scan at a time."""

    def __init__(
        self, checkpoint: str, sha256: str, options: pl.JobOptions, reference: Any, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.seg = pl.Segmenter.from_checkpoint(checkpoint)
        if self.seg.sha256 != sha256:
            raise HarmonizeError(
                checkpoint, f"on this node has sha256 {self.seg.sha256[:12]}, the driver's {sha256[:12]}"
            )
        self.options = options
        self.reference = reference

    def run(self, job: pl.ScanJob) -> pl.ScanResult:
        return pl.run_scan_job(self.seg, job, self.options, self.reference)

    def where(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.options.device}


def pseudolabel_ray(
    ws: Workspace,
    checkpoint_path: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    scans: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    all_classes: bool = False,
    low_res_mm: float | None = 3.0,
    overlap: float = 0.5,
    device: str = "auto",
    uncertainty: bool = True,
    progress: bool = True,
    on_scan: Callable[[str, str], None] | None = None,
) -> pl.PseudolabelSummary:
    """``workbench.pseudolabel.pseudolabel`` on Ray (see the module docstring).

    Args:
        ws: the workspace (the driver's; actors only read scans and the mask store).
        checkpoint_path: a ``save_checkpoint`` file, at the same path on every node.
        address: a Ray cluster to join; None starts (and afterwards stops) a local instance.
        workers: number of actors; default one per GPU of the cluster, else 2 CPU actors.
        device: 'auto' gives each actor a GPU when the cluster has GPUs, else CPU.
        Other arguments: as ``pseudolabel``.

    Returns:
        The same :class:`~workbench.pseudolabel.PseudolabelSummary` as the single-machine job.

    Raises:
        ImportError: Ray is not installed (``pip install ray==2.60.0``).
        HarmonizeError: unreadable or unfitting checkpoint, unknown scan ids.
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray scale-out needs Ray: pip install ray==2.60.0") from exc
    from tqdm import tqdm

    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    checkpoint = str(Path(checkpoint_path).resolve())
    seg = pl.Segmenter.from_checkpoint(checkpoint)  # the driver's check and the run's identity
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None and workers:
            kwargs["num_cpus"] = max(workers, os.cpu_count() or 1)
        ray.init(address=address, **kwargs)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and device in ("auto", "cuda")
        n = workers or (gpus if use_gpu else 2)
        cpus = max(1, int(resources.get("CPU", 1)) // n)
        options = pl.JobOptions(low_res_mm, overlap, "cuda" if use_gpu else "cpu", uncertainty)
        pl.remove_orphan_masks(ws)
        jobs, skipped = pl.plan_jobs(
            ws, seg, scans=scans, sources=sources, all_classes=all_classes, uncertainty=uncertainty
        )
        t_start = time.perf_counter()
        run_id = pl.start_run(ws, seg, options, {"ray": {"actors": n, "gpus_per_actor": int(use_gpu)}})
        summary = pl.PseudolabelSummary(run_id, skipped=skipped)
        reference = unc.reference_stats(ws) if uncertainty else {}
        actor_cls = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0)(_Worker)
        actors = [actor_cls.remote(checkpoint, seg.sha256, options, reference, cpus) for _ in range(n)]
        pending: dict[Any, pl.ScanJob] = {}
        queue = list(jobs)
        bar = tqdm(total=len(jobs), desc="pseudolabel (ray)", unit="scan", disable=not progress)
        i = 0
        while queue or pending:
            while queue and len(pending) < n * (1 + IN_FLIGHT_PER_ACTOR):
                job = queue.pop(0)
                pending[actors[i % n].run.remote(job)] = job  # type: ignore[attr-defined]
                i += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                result: pl.ScanResult = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                # A bug or a resource error in one scan: report it like a bad scan and go on. A dead
                # actor (RayActorError, e.g. a checkpoint that differs on its node) stops the job.
                result = pl.ScanResult(job, error=f"{job.image_path}: worker failed: {exc.cause!r}")
            if result.error is not None:
                summary.failed.append((job.scan_id, result.error))
                outcome = "failed"
            else:
                pl.write_scan_result(ws, result, run_id, seg)  # one short transaction per scan
                summary.done.append(job.scan_id)
                summary.seconds.append(result.seconds.get("total", 0.0))
                outcome = "done"
            bar.update(1)
            if on_scan is not None:
                on_scan(job.scan_id, outcome)
        bar.close()
        pl.finish_run(ws, run_id, summary, t_start)
        summary.done.sort()
        return summary
    finally:
        if started_here:
            ray.shutdown()
