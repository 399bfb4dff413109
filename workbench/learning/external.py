"""External-set evaluation: a model run on every scan of whole sources it never saw (the paper's table 5,
3D-IRCADb), with per-class Dice / NSD and patient-level tumour detection.

A source is EXTERNAL to a model when neither its own id nor the scans it shares with other datasets appear
in the model's training record (:func:`training_record`):

* a release model's ``trained_on`` names the paper's dataset ids per class (``RELEASE_SOURCES``: "04" is
  LiTS, "10_03" MSD Liver, ...); a protocol's ``paper_id`` / ``paper_overlap`` map our sources to them
  (``lits`` is "04" and holds the scans of "10_03" and "12"), so a release is refused ``lits``, ``msd_liver``
  and ``ct_org`` and accepts ``ircadb`` ("06");
* a workbench checkpoint's ``trained_on`` names our source ids (``workbench.training_set.learnt_counts``),
  and the catalog's training run that wrote it (``Catalog.training_run_of``) may name ``sources`` too;
  their paper ids count as well (a model trained on ``msd_liver`` has seen ``lits``' scans).

A model without any training record is refused (nothing says what it saw). The prediction runs in memory
(nothing is written to the label sets, so the review queue and training sets are untouched) with the
model's own inference settings and WITHOUT the scan's annotations as post-processing context (a
pseudo-label run uses them; an evaluation must not see its truth). Sources whose protocol names them
tumour-free (CHAOS, Pancreas-CT) count their patients as tumour-free for the specificity
(:func:`workbench.learning.metrics.with_tumour_free`). The result is one ``evaluate`` run
(``scope: external``), recorded like a held-out evaluation, whose config names the model and the sources
and whose summary holds FLOPs per 96^3 window and seconds per CT (``workbench.model.flops``).

Example:
    >>> ev = evaluate_external(Workspace.open("ws"), "release-unet", ["ircadb"])  # doctest: +SKIP
    >>> ev.lines()[0]  # doctest: +SKIP
    'evaluation run-eval-... of model release-unet: 20 of 20 scans of the external sources, ...'
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.protocols import all_protocols
from storage.workspace import Workspace
from workbench.learning.evaluation import Evaluation, Predictor, evaluate_predictions, store_evaluation
from workbench.learning.metrics import DEFAULT_TOLERANCE_MM
from workbench.model.flops import PAPER_WINDOW, window_flops
from workbench.model.registry import ModelFile, read_model_file, registered_path, trained_on
from workbench.pseudolabel.jobs import JobOptions, ScanJob, plan_jobs, run_scan_job
from workbench.pseudolabel.run import MODEL_DEFAULT, default_low_res_mm
from workbench.pseudolabel.segmenter import Segmenter, resolve_device
from workbench.training_set import EXPERT_BASES


@dataclass(frozen=True)
class TrainingRecord:
    """What a model was trained on, as far as the workspace knows.

    Args:
        model: the model's name (registered) or file name.
        sha256: the model file's sha256.
        kind: ``release`` or ``workbench``.
        classes: class -> the sources that taught it (paper ids for a release, our ids otherwise).
        run_sources: our source ids the catalog's training run names (empty when none).
        training_run: that run's id ('' when the catalog did not train the model).
        init: the sha256 the training run started from ('' for from scratch or unknown).
    """

    model: str
    sha256: str
    kind: str
    classes: Mapping[str, Sequence[str]]
    run_sources: tuple[str, ...] = ()
    training_run: str = ""
    init: str = ""

    @property
    def known(self) -> bool:
        """Whether there is any record of the training sources."""
        return bool(self.classes) or bool(self.run_sources)

    @property
    def our_sources(self) -> set[str]:
        """Our source ids the model trained on (none for a release: its record names paper ids)."""
        named = set() if self.kind == "release" else {s for v in self.classes.values() for s in v}
        return named | set(self.run_sources)

    @property
    def paper_ids(self) -> set[str]:
        """The paper's dataset ids whose scans the model has seen: named by a release's record, or those
        of our sources (``paper_id`` and ``paper_overlap``), widened by every dataset sharing their scans."""
        return self._seen({s for v in self.classes.values() for s in v} | set(self.run_sources))

    def _seen(self, sources: set[str]) -> set[str]:
        protocols = all_protocols()
        if self.kind == "release":
            seen = set(sources)
        else:
            seen = {i for s in sources if s in protocols for i in protocols[s].paper_sources}
        for p in protocols.values():
            if p.paper_id and p.paper_id in seen:
                seen.update(p.paper_sources)
        return seen

    def classes_from(self, source: str) -> list[str]:
        """The classes whose training sources hold ``source``'s scans (itself or a dataset sharing them)."""
        protocol = all_protocols().get(source)
        ids = set(protocol.paper_sources if protocol else ())
        return [c for c, srcs in self.classes.items() if source in srcs or ids & self._seen(set(srcs))]

    def refusal(self, source: str) -> str | None:
        """One line saying why ``source`` is not external to the model, or None when it is."""
        where = f"model {self.model!r} ({self.kind}, sha256 {self.sha256[:12]})"
        if not self.known:
            return (
                f"{where} has no training record (trained_on is empty and no training run of this catalog "
                f"wrote it), so nothing shows that {source!r} is external to it"
            )
        protocol = all_protocols().get(source)
        shared = sorted(self.paper_ids & set(protocol.paper_sources if protocol else ()))
        if source not in self.our_sources and not shared:
            return None
        classes = self.classes_from(source)
        named = ", ".join(classes[:4]) + (f" and {len(classes) - 4} more classes" if len(classes) > 4 else "")
        by = f"for {named}" if classes else f"in training run {self.training_run}"
        scans = f" (paper dataset {', '.join(shared)})" if shared else ""
        return (
            f"source {source!r} is not external to {where}: its training record includes it{scans} {by}; "
            "evaluate it on the held-out split (`workbench evaluate RUN`) or pick a source it never saw"
        )


@dataclass
class ExternalModel:
    """A model loaded for an external evaluation: the segmenter, its training record, its FLOPs."""

    segmenter: Segmenter
    record: TrainingRecord
    backbone: str


def load_external_model(ws: Workspace, ref: str | Path, *, backbone: str | None = None) -> ExternalModel:
    """A registered model (name or sha256) or a model file, with its training record.

    Args:
        ws: the workspace.
        ref: a registered model's name / sha256 (8+ hex digits), or a model file.
        backbone: for a release file whose keys are ambiguous.

    Returns:
        :class:`ExternalModel`.

    Raises:
        HarmonizeError: neither a registered model nor a model file (registered names listed).
    """
    row = ws.catalog.model(str(ref))
    if row is not None:
        mf = read_model_file(registered_path(ws, row), backbone=str(row["backbone"]))
        name, classes = str(row["name"]), trained_on(row) or mf.trained_on or {}
    else:
        path = Path(ref)
        if not path.is_file():
            names = ws.catalog.models()["name"].tolist()
            raise HarmonizeError(
                path,
                "no such model file, and no registered model of that name (registered: "
                f"{', '.join(names) or 'none; see `workbench import-model`'})",
            )
        mf = read_model_file(path, backbone=backbone)
        name, classes = path.name, mf.trained_on or {}
    return ExternalModel(
        Segmenter.from_model_file(mf, name=name), _record(ws, mf, name, classes), mf.backbone
    )


def _record(ws: Workspace, mf: ModelFile, name: str, classes: Mapping[str, Any]) -> TrainingRecord:
    run = ws.catalog.training_run_of(mf.sha256)
    config = json.loads(run["config"]) if run is not None and isinstance(run.get("config"), str) else {}
    sources = config.get("sources") or []  # empty: no filter, so trained_on is the record then
    return TrainingRecord(
        model=name,
        sha256=mf.sha256,
        kind=mf.kind,
        classes={str(c): tuple(str(s) for s in (v or {}).get("sources", ())) for c, v in classes.items()},
        run_sources=tuple(str(s) for s in sources) if isinstance(sources, list) else (),
        training_run="" if run is None else str(run["id"]),
        init=str(config.get("init") or ""),
    )


def check_external(ws: Workspace, record: TrainingRecord, sources: Sequence[str]) -> list[str]:
    """The scans of ``sources``, after refusing any source that is not external to the model.

    Args:
        ws: the workspace.
        record: the model's training record.
        sources: our source ids.

    Returns:
        Every scan id of those sources, sorted.

    Raises:
        HarmonizeError: no source, a source the record includes, or one without scans in the catalog
            (one line naming the source and the record).
    """
    if not sources:
        raise HarmonizeError(ws.catalog.path, "name at least one external source (--external SOURCE)")
    for source in sources:
        problem = record.refusal(source)
        if problem is not None:
            raise HarmonizeError(ws.catalog.path, problem)
    scans = ws.catalog.scans_of_sources(list(sources))
    for source in sources:
        if not (scans["source_id"] == source).any():
            raise HarmonizeError(
                ws.catalog.path,
                f"source {source!r} has no scans in this catalog; ingest it first (`workbench ingest "
                f"{source} ROOT`)",
            )
    return sorted(str(s) for s in scans["scan_id"])


def model_predictor(
    ws: Workspace, seg: Segmenter, scan_ids: Sequence[str], options: JobOptions, seconds: list[float]
) -> tuple[Predictor, list[tuple[str, str]]]:
    """The model as a :data:`Predictor` over these scans: every class, predicted when asked, in memory.

    Args:
        ws: the workspace.
        seg: the model.
        scan_ids: the scans it may be asked about.
        options: inference settings (uncertainty off).
        seconds: appended with each predicted scan's total seconds (read, infer, post-process).

    Returns:
        ``(predict, failed)``: ``failed`` collects (scan id, problem) of scans that could not be read.
    """
    # Planned as a model that labelled nothing yet, so that no scan is skipped for an earlier pseudo-label
    # run of this model, and without the scan's annotations (the truth) as post-processing context.
    jobs, _ = plan_jobs(ws, dataclasses.replace(seg, sha256=""), scans=scan_ids, all_classes=True)
    by_id = {j.scan_id: _without_truth(j) for j in jobs}
    failed: list[tuple[str, str]] = []

    def predict(scan_id: str) -> tuple[Mapping[str, np.ndarray], Mapping[str, str]] | None:
        job = by_id.get(scan_id)
        if job is None:
            return None
        result = run_scan_job(seg, job, options, {})
        if result.error is not None:
            failed.append((scan_id, result.error))
            return None
        seconds.append(float(result.seconds.get("total", 0.0)))
        return {n: m.full() for n, m in result.masks.items()}, {}

    return predict, failed


def _without_truth(job: ScanJob) -> ScanJob:
    return dataclasses.replace(job, original_mask_key=None, coverage={}, known_centroids={}, parent_id=None)


def evaluate_external(
    ws: Workspace,
    model: str | Path,
    sources: Sequence[str],
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    min_tumour_voxels: int = 1,
    low_res_mm: float | str | None = MODEL_DEFAULT,
    overlap: float | None = None,
    device: str = "auto",
    sw_batch_size: int = 1,
    backbone: str | None = None,
    store: bool = True,
    progress: bool = False,
) -> Evaluation:
    """Evaluate a model on every scan of whole sources it was not trained on (module docstring).

    Args:
        ws: the workspace.
        model: a registered model's name / sha256, or a model file.
        sources: our source ids of the external sets.
        tolerance_mm: NSD tolerance in mm.
        min_tumour_voxels: predicted voxels that count as a detected tumour.
        low_res_mm: inference spacing (mm); default the model's own (a release at 1.5 mm, a workbench
            checkpoint at 3 mm), None its trained spacing.
        overlap: sliding-window overlap (None: the model's, 0.5).
        device: 'auto', 'cpu', 'cuda', ...
        sw_batch_size: windows per forward.
        backbone: for a release file whose keys are ambiguous.
        store: record the ``evaluate`` run, its rows and the report folder.
        progress: a progress bar per scan.

    Returns:
        The :class:`Evaluation` (``scope`` external); its ``facts`` hold the model, the sources, FLOPs per
        96^3 window, seconds per CT and the scans that failed.

    Raises:
        HarmonizeError: a source that is not external (one line naming it and the record), a source
            without scans, a model that is neither registered nor a file, no scan with expert labels.
    """
    started = time.time()
    loaded = load_external_model(ws, model, backbone=backbone)
    seg, record = loaded.segmenter, loaded.record
    scan_ids = check_external(ws, record, sources)
    options = JobOptions(
        default_low_res_mm(seg, low_res_mm),
        float(seg.settings.get("overlap", 0.5)) if overlap is None else overlap,
        resolve_device(device),
        uncertainty=False,
        sw_batch_size=sw_batch_size,
    )
    seconds: list[float] = []
    predict, failed = model_predictor(ws, seg, scan_ids, options, seconds)
    ev = evaluate_predictions(
        ws,
        predict,
        name=f"model {record.model}",
        tolerance_mm=tolerance_mm,
        min_tumour_voxels=min_tumour_voxels,
        store=False,
        progress=progress,
        scan_ids=scan_ids,
        tumour_free=True,
    )
    ev.facts = {
        "model": model_facts(record, loaded.backbone),
        "external_sources": sorted(set(sources)),
        "flops_per_window": window_flops(seg.module, PAPER_WINDOW),
        "window": list(PAPER_WINDOW),
        "seconds_per_scan": float(np.mean(seconds)) if seconds else None,
        "timed_scans": len(seconds),
        "inference": {"spacing_mm": list(options.spacing_mm(seg)), "overlap": options.overlap},
        "failed_scans": [list(f) for f in failed],
    }
    if store:
        store_evaluation(
            ws,
            ev,
            fraction=0.0,
            seed=0,
            truth_origins=EXPERT_BASES,
            min_tumour_voxels=min_tumour_voxels,
            started=started,
            config={
                "model": ev.facts["model"],
                "external_sources": ev.facts["external_sources"],
                "tumour_free": True,
                "device": options.device,
            },
        )
    return ev


def model_facts(record: TrainingRecord, backbone: str) -> dict[str, Any]:
    """The model entry of an external evaluation's config and summary: name, sha256, kind, backbone, its
    training run and the checkpoint that run started from ('' for none)."""
    return {
        "name": record.model,
        "sha256": record.sha256,
        "kind": record.kind,
        "backbone": backbone,
        "training_run": record.training_run,
        "init": record.init,
    }
