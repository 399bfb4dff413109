"""The pseudo-label job on a Ray cluster: one actor per GPU (CPU actors where there is none).

Optional dependency: ``pip install ray==2.60.0``. The job is the same driver loop as on one machine
(``workbench.pseudolabel.run.run_jobs``: same settings check, same resume rule, one ``run`` row, the
catalog reference statistics computed once); only the executor differs, and it keeps the catalog's
single-writer rule without holding its lock for the whole job:

* each actor loads the checkpoint (it must be readable at the same path on every node, like the scans
  and the mask store: a shared file system) and checks its sha256 against the driver's; it runs
  ``run_scan_job`` (read, infer, restore the original grid, post-process, uncertainty) and returns the
  result; it never opens the catalog;
* the driver writes each result as it arrives (masks, then one short catalog transaction per scan), so
  reviewers and other writers get the file between scans; at most :data:`IN_FLIGHT_PER_ACTOR` jobs wait
  per actor (back-pressure: results never pile up in the driver).

``ray.init()`` starts a local instance by default; ``address`` joins a running cluster ("auto" or
"ray://host:10001").
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench.pseudolabel.jobs import JobOptions, ScanJob, ScanResult, run_scan_job
from workbench.pseudolabel.run import (
    MODEL_DEFAULT,
    PseudolabelSummary,
    default_low_res_mm,
    resolve_segmenter,
    run_jobs,
)
from workbench.pseudolabel.segmenter import Segmenter
from workbench.pseudolabel.uncertainty import ReferenceStats

#: Jobs queued per actor beyond the one it runs (keeps actors busy without holding every result).
IN_FLIGHT_PER_ACTOR = 2
_INSTALL = "the Ray scale-out needs Ray: pip install ray==2.60.0"


class _Worker:
    """Ray actor body: one loaded model, one scan at a time."""

    def __init__(
        self,
        checkpoint: str,
        sha256: str,
        options: JobOptions,
        reference: Any,
        threads: int,
        backbone: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        import torch  # lazy: the actor's process, not the driver's import, pays for torch

        torch.set_num_threads(max(1, threads))
        seg = Segmenter.from_checkpoint(checkpoint, backbone=backbone)
        self.seg = seg.with_classes(classes) if classes else seg
        if self.seg.sha256 != sha256:
            raise HarmonizeError(
                checkpoint, f"on this node has sha256 {self.seg.sha256[:12]}, the driver's {sha256[:12]}"
            )
        self.options = options
        self.reference = reference

    def run(self, job: ScanJob) -> ScanResult:
        return run_scan_job(self.seg, job, self.options, self.reference)

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.options.device}


@dataclass
class RayExecutor:
    """Scan jobs on Ray actors (an ``Executor`` of ``workbench.pseudolabel.run``); Ray must be running.

    Args:
        checkpoint: the checkpoint file, at the same path on every node.
        sha256: its sha256 as the driver read it (every actor checks its copy against it).
        actors: number of actors.
        use_gpu: one GPU per actor (else CPU actors).
        cpus_per_actor: CPUs (and torch threads) per actor.
        backbone: the release backbone (from the driver's reading of the file).
        classes: the classes the driver's model predicts (None: all of the file's).
    """

    checkpoint: str
    sha256: str
    actors: int
    use_gpu: bool
    cpus_per_actor: int = 1
    backbone: str | None = None
    classes: tuple[str, ...] | None = None
    description: str = "pseudolabel (ray)"

    @property
    def device(self) -> str:
        """The torch device of every actor."""
        return "cuda" if self.use_gpu else "cpu"

    @property
    def run_config(self) -> Mapping[str, Any]:
        """``{"ray": {"actors": n, "gpus_per_actor": 0 or 1}}`` for the run's config."""
        return {"ray": {"actors": self.actors, "gpus_per_actor": int(self.use_gpu)}}

    def results(
        self, seg: Segmenter, jobs: Sequence[ScanJob], options: JobOptions, reference: ReferenceStats
    ) -> Iterator[ScanResult]:
        """Start the actors, keep each fed with up to :data:`IN_FLIGHT_PER_ACTOR` queued jobs, and yield
        every result as it arrives. A task that raised (a bug or a resource error in one scan) comes
        back as that scan's ``error``; a dead actor (e.g. a checkpoint that differs on its node) raises.
        """
        import ray  # lazy: an optional dependency (pseudolabel_ray says how to install it)

        n = self.actors
        actor_cls = ray.remote(num_cpus=self.cpus_per_actor, num_gpus=1 if self.use_gpu else 0)(_Worker)
        actors = [
            actor_cls.remote(
                self.checkpoint,
                self.sha256,
                options,
                reference,
                self.cpus_per_actor,
                self.backbone,
                self.classes,
            )
            for _ in range(n)
        ]
        pending: dict[Any, ScanJob] = {}
        queue = list(jobs)
        i = 0
        while queue or pending:
            while queue and len(pending) < n * (1 + IN_FLIGHT_PER_ACTOR):
                job = queue.pop(0)
                pending[actors[i % n].run.remote(job)] = job  # type: ignore[attr-defined]
                i += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                result: ScanResult = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                result = ScanResult(job, error=f"{job.image_path}: worker failed: {exc.cause!r}")
            yield result


def pseudolabel_ray(
    ws: Workspace,
    checkpoint_path: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
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
) -> PseudolabelSummary:
    """``workbench.pseudolabel.pseudolabel`` on Ray (see the module docstring).

    Args:
        ws: the workspace (the driver's; actors only read scans and the mask store).
        checkpoint_path: a registered model's name or a model file (workbench checkpoint or release
            file); the file must be at the same path on every node.
        address: a Ray cluster to join; None starts (and afterwards stops) a local instance.
        workers: number of actors; default one per GPU of the cluster, else 2 CPU actors.
        device: 'auto' gives each actor a GPU when the cluster has GPUs, else CPU.
        Other arguments: as ``pseudolabel``.

    Returns:
        The same :class:`~workbench.pseudolabel.run.PseudolabelSummary` as the single-machine job.

    Raises:
        ImportError: Ray is not installed (``pip install ray==2.60.0``).
        ValueError: an overlap outside [0, 1) or a spacing that is not positive (before Ray starts).
        HarmonizeError: unreadable or unfitting checkpoint, unknown scan ids.
    """
    try:
        import ray  # lazy: an optional dependency
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc

    seg = resolve_segmenter(ws, checkpoint_path, backbone=backbone, classes=classes)  # the run's identity
    options = JobOptions(  # checked now; the device follows Ray's
        default_low_res_mm(seg, low_res_mm),
        float(seg.settings.get("overlap", 0.5)) if overlap is None else overlap,
        "cpu",
        uncertainty,
        tta,
        sw_batch_size,
    )
    checkpoint = str(Path(seg.path).resolve())
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
        executor = RayExecutor(
            checkpoint,
            seg.sha256,
            n,
            use_gpu,
            max(1, int(resources.get("CPU", 1)) // n),
            seg.backbone if seg.is_release else None,
            tuple(seg.class_names) if classes else None,
        )
        return run_jobs(
            ws,
            seg,
            dataclasses.replace(options, device=executor.device),
            executor,
            scans=scans,
            sources=sources,
            all_classes=all_classes,
            progress=progress,
            on_scan=on_scan,
        )
    finally:
        if started_here:
            ray.shutdown()
