"""The per-scan work of a pseudo-label job: what to do for each scan, and doing it without the catalog.

:func:`plan_jobs` reads the catalog once and turns every scan to process into a :class:`ScanJob`
(picklable: a Ray worker gets it as it is). A scan already pseudo-labelled by the same checkpoint (file
sha256) is skipped; one whose label set lost its uncertainty to a kill gets a job that completes it
without predicting a second label set. :func:`run_scan_job` is the pure computation of one scan (also
what a Ray worker runs): read the CT, predict on the inference grid, restore the original grid,
post-process, statistics and uncertainty signals. It writes nothing; a scan whose file vanished, is
unreadable or changed since ingest comes back with a one-line ``error`` only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.geometry import same_grid
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.laterality import estimate_midline_x
from harmonize.masks import CroppedMask
from harmonize.readers import read_volume
from harmonize.stats import class_stats
from harmonize.taxonomy import PAIRS, class_names
from harmonize.volume import Volume
from storage.masks import MaskStore
from storage.workspace import Workspace
from workbench.pseudolabel.inference import PreparedImage, predict_prepared, prepare_image, to_original_grid
from workbench.pseudolabel.postprocess import postprocess
from workbench.pseudolabel.scoring import TTA_NOT_RUN, TTA_NOT_RUN_KEY
from workbench.pseudolabel.segmenter import Segmenter
from workbench.pseudolabel.uncertainty import ReferenceStats, ScanContext, scan_signals


@dataclass
class ScanJob:
    """Everything one scan's computation needs, without the catalog (picklable, for Ray workers).

    Args:
        scan_id: catalog id.
        image_path: the CT file or DICOM folder.
        shape / affine: the original grid on record (a file that changed since ingest is refused).
        classes: classes to predict and write.
        original_mask_key: mask store key of the current original label set (None when none).
        coverage: that label set's coverage (class -> state).
        known_centroids: its present classes -> RAS+ centroid (mm).
        mask_root: the mask store folder.
        parent_id: the label set the pseudo labels complete (the current original).
        existing_label_set: a pseudo label set of this checkpoint that still lacks uncertainty rows: the
            job computes them for its masks instead of predicting new ones.
    """

    scan_id: str
    image_path: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    classes: tuple[str, ...]
    original_mask_key: str | None
    coverage: dict[str, str]
    known_centroids: dict[str, tuple[float, float, float]]
    mask_root: str
    parent_id: str | None = None
    existing_label_set: str | None = None


@dataclass
class ScanResult:
    """What one scan's computation produced (written by ``workbench.pseudolabel.run.write_scan_result``).

    Args:
        job: the job.
        masks: written class -> final mask (original grid), empty ones included.
        stats: class_stats dicts of the non-empty ones.
        coverage: 32 classes -> state for the pseudo label set.
        splits: left/right decisions.
        notes: post-processing notes.
        midline_x_mm: the body midline used.
        signals: class -> uncertainty signals (None when uncertainty was off).
        entropy_map / map_affine: float16 viewer map on the inference grid and its affine.
        map_classes: the classes the map covers.
        seconds: timings.
        error: a one-line problem when the scan failed (nothing else is set then).
    """

    job: ScanJob
    masks: dict[str, CroppedMask] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    coverage: dict[str, str] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    midline_x_mm: float | None = None
    signals: dict[str, dict[str, Any]] | None = None
    entropy_map: np.ndarray | None = None
    map_affine: np.ndarray | None = None
    map_classes: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class JobOptions:
    """Settings shared by every scan of a job (see ``workbench.pseudolabel.run.pseudolabel``).

    Args:
        low_res_mm: isotropic inference spacing (mm); None uses the checkpoint's spacing.
        overlap: sliding-window overlap, in [0, 1).
        device: torch device of the inference.
        uncertainty: also compute uncertainty signals and the entropy map.
        tta: run the test-time augmentation (a second prediction, about twice the device time); None: the
            model's default (a workbench checkpoint: yes, with uncertainty; a release model: no, as the
            paper's inference).
        sw_batch_size: sliding windows per forward (more: faster on a GPU, more device memory).

    Raises:
        ValueError: an overlap outside [0, 1), a spacing that is not a positive number of mm, or a
            window batch below 1.
    """

    low_res_mm: float | None = 3.0
    overlap: float = 0.5
    device: str = "cpu"
    uncertainty: bool = True
    tta: bool | None = None
    sw_batch_size: int = 1

    def __post_init__(self) -> None:
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be at least 1, got {self.sw_batch_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.low_res_mm is not None and not (math.isfinite(self.low_res_mm) and self.low_res_mm > 0):
            raise ValueError(f"low_res_mm must be a positive spacing in mm, got {self.low_res_mm}")

    def spacing_mm(self, seg: Segmenter) -> tuple[float, float, float]:
        """The inference grid spacing for ``seg``: ``low_res_mm`` isotropic, else the checkpoint's."""
        return (self.low_res_mm,) * 3 if self.low_res_mm else seg.spacing_mm

    def use_tta(self, seg: Segmenter) -> bool:
        """Whether the job runs the test-time augmentation for ``seg`` (see ``tta``)."""
        if not self.uncertainty:
            return False
        return bool(self.tta) if self.tta is not None else bool(seg.settings.get("tta", not seg.is_release))


# ------------------------------------------------------------------------------------------ plan


def plan_jobs(
    ws: Workspace,
    seg: Segmenter,
    *,
    scans: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    all_classes: bool = False,
    uncertainty: bool = True,
) -> tuple[list[ScanJob], list[str]]:
    """The scans to process and those to skip (already done by this checkpoint).

    Args:
        ws: the workspace.
        seg: the model (its sha256 is the resume key; its classes are what can be predicted).
        scans: only these scan ids (default: all).
        sources: only scans of these sources.
        all_classes: predict every class of the model, not only those the scan's labels lack.
        uncertainty: whether the job computes uncertainty (a label set without it is then completed).

    Returns:
        ``(jobs, skipped)``: the jobs in scan id order, and the skipped scan ids.

    Raises:
        HarmonizeError: a requested scan id is not in the catalog.
    """
    rows = ws.catalog.pseudolabel_scans(scans, sources)
    if scans:
        missing = sorted(set(scans) - set(rows["id"]))
        if missing:
            raise HarmonizeError(ws.catalog.path, f"scans not in the catalog: {', '.join(missing)}")
    done_by_scan = ws.catalog.checkpoint_label_sets(seg.sha256)
    orig_ids = [x for x in rows["orig_id"].tolist() if isinstance(x, str)]
    cov_by = ws.catalog.coverages(orig_ids)
    cen_by = ws.catalog.centroids_of(orig_ids)
    jobs, skipped = [], []
    for r in rows.to_dict("records"):
        orig = r["orig_id"] if isinstance(r["orig_id"], str) else None
        coverage = cov_by.get(orig, {}) if orig else {}
        wanted = tuple(
            n for n in seg.class_names if all_classes or coverage.get(n, NOT_ANNOTATED) == NOT_ANNOTATED
        )
        existing = None
        prior = done_by_scan.get(r["id"], [])
        if prior:
            if not uncertainty or any(n > 0 for _, n in prior):
                skipped.append(r["id"])
                continue
            existing = prior[0][0]
            # Complete the uncertainty of the label set that was written: predict exactly its classes.
            cov_existing = ws.catalog.coverage(existing)
            wanted = tuple(n for n in seg.class_names if cov_existing.get(n, NOT_ANNOTATED) != NOT_ANNOTATED)
        if not wanted:
            skipped.append(r["id"])
            continue
        jobs.append(
            ScanJob(
                scan_id=r["id"],
                image_path=r["image_path"],
                shape=tuple(int(s) for s in r["shape"]),  # type: ignore[arg-type]
                affine=np.asarray(list(r["affine"]), dtype=np.float64).reshape(4, 4),
                classes=wanted,
                original_mask_key=r["orig_key"] if orig else None,
                coverage=coverage,
                known_centroids=cen_by.get(orig, {}) if orig else {},
                mask_root=str(ws.masks.root),
                parent_id=orig,
                existing_label_set=existing,
            )
        )
    return jobs, skipped


# ------------------------------------------------------------------------------------------- run


def _read_image(job: ScanJob) -> Volume:
    try:
        vol = read_volume(job.image_path)
    except HarmonizeError:
        raise
    except (OSError, ValueError, MemoryError) as e:
        raise HarmonizeError(job.image_path, f"cannot read the CT: {type(e).__name__}: {e}") from e
    if not same_grid(vol.affine, job.affine, vol.shape, job.shape):
        raise HarmonizeError(
            job.image_path,
            f"the CT changed since ingest (shape {vol.shape}, catalog {tuple(job.shape)}, or its affine): "
            "re-ingest it first",
        )
    return vol


def _stored_mask(store: MaskStore, key: str, name: str, shape: tuple[int, int, int]) -> CroppedMask:
    """One class of a stored label set as a :class:`CroppedMask` (read as its bounding-box crop)."""
    crop, bbox = store.read_crop(key, name)
    if bbox is None:
        return CroppedMask.empty(shape)
    return CroppedMask(shape, (bbox[0][0], bbox[1][0], bbox[2][0]), crop)


def _known_masks(job: ScanJob) -> dict[str, CroppedMask]:
    """Annotated classes of the scan's original labels -> mask (empty for annotated absent)."""
    out: dict[str, CroppedMask] = {}
    store = MaskStore(job.mask_root)
    for name, state in job.coverage.items():
        if state == ANNOTATED_ABSENT:
            out[name] = CroppedMask.empty(job.shape)
        elif state == ANNOTATED_PRESENT and job.original_mask_key is not None:
            out[name] = _stored_mask(store, job.original_mask_key, name, job.shape)
    return out


@dataclass
class PreparedScan:
    """A scan read and preprocessed for inference (:func:`prepare_scan`), or its one-line error."""

    job: ScanJob
    volume: Volume | None = None
    known: dict[str, CroppedMask] = field(default_factory=dict)
    image: PreparedImage | None = None
    read_s: float = 0.0
    error: str | None = None


def prepare_scan(seg: Segmenter, job: ScanJob, options: JobOptions) -> PreparedScan:
    """Read the CT and the scan's annotated masks and preprocess the CT (what a job does for the next
    scan in a background thread while the device works on the current one).

    Args:
        seg: the model (its window).
        job: the scan.
        options: job settings (the spacing).

    Returns:
        :class:`PreparedScan`; on bad input (missing or changed file) only ``error`` is set.
    """
    t0 = time.perf_counter()
    try:
        vol = _read_image(job)
        known = _known_masks(job)
    except HarmonizeError as e:
        return PreparedScan(job, error=f"{e.path}: {e.problem}")
    t_read = time.perf_counter() - t0
    image = prepare_image(seg, vol, options.spacing_mm(seg))
    return PreparedScan(job, vol, known, image, t_read)


def run_scan_job(
    seg: Segmenter,
    job: ScanJob,
    options: JobOptions,
    reference: ReferenceStats,
    *,
    on_masks: Callable[[ScanJob, dict[str, CroppedMask]], dict[str, CroppedMask]] | None = None,
    prepared: PreparedScan | None = None,
) -> ScanResult:
    """Predict, post-process and assess one scan; writes nothing.

    Args:
        seg: the model.
        job: the scan.
        options: job settings.
        reference: catalog statistics for the plausibility signals.
        on_masks: hook called with the final masks before statistics and signals, returning the masks to
            use (the error-detection benchmark injects faults here).
        prepared: the scan already read and preprocessed (:func:`prepare_scan`); read now when None.

    Returns:
        :class:`ScanResult`; on bad input (missing or changed file) only ``error`` is set.
    """
    t0 = time.perf_counter()
    prep = prepared if prepared is not None else prepare_scan(seg, job, options)
    if prep.error is not None or prep.volume is None or prep.image is None:
        return ScanResult(job, error=prep.error or f"{job.image_path}: not read")
    vol, known, t_read = prep.volume, prep.known, prep.read_s
    pred = predict_prepared(
        seg,
        prep.image,
        overlap=options.overlap,
        device=options.device,
        tta=options.use_tta(seg),
        sw_batch_size=options.sw_batch_size,
    )
    if prepared is not None:
        t0 -= t_read + prep.image.seconds  # the total counts the scan's read and preprocessing too
    t1 = time.perf_counter()
    midline = estimate_midline_x(vol)
    if job.existing_label_set is not None:
        store = MaskStore(job.mask_root)
        names = set(store.names(job.existing_label_set))
        final = {
            n: _stored_mask(store, job.existing_label_set, n, job.shape)
            if n in names
            else CroppedMask.empty(job.shape)
            for n in job.classes
        }
        result = ScanResult(job, masks=final, midline_x_mm=midline)
    else:
        raw = to_original_grid(pred, seg.class_names, vol.affine, vol.shape)
        post = postprocess(raw, vol.affine, midline_x_mm=midline, known=known)
        final = {name: post.masks[name] for name in job.classes if name in post.masks}
        if on_masks is not None:
            final = on_masks(job, final)
        result = ScanResult(
            job,
            masks=final,
            notes=post.notes,
            midline_x_mm=midline,
            splits=[d.as_dict() for d in post.splits if any(n in final for n in PAIRS[d.pair])],
        )
        changes = json.dumps(post.changes, separators=(",", ":"), default=str)
        result.notes.append("postprocess-json:" + changes)
        hu = vol.array
        for name, m in final.items():
            if not m.is_empty:
                result.stats.append(
                    class_stats(name, m.data, vol.affine, hu[m.box], offset=m.offset).as_dict()
                )
        result.coverage = {
            name: (ANNOTATED_PRESENT if not final[name].is_empty else ANNOTATED_ABSENT)
            if name in final
            else NOT_ANNOTATED
            for name in class_names()  # the 32 and the workspace's added classes
        }
    t2 = time.perf_counter()
    if options.uncertainty:
        ctx = ScanContext(
            vol.affine,
            vol.shape,
            midline,
            known,
            {k: np.asarray(v, dtype=np.float64) for k, v in job.known_centroids.items()},
            hu=vol.array,
        )
        from workbench.review.learnt import learnt  # lazily: workbench.review imports this wing

        result.signals, result.entropy_map = scan_signals(
            final,
            ctx,
            reference,
            pred.probs,
            seg.class_names,
            pred.affine,
            pred.tta_probs,
            learnt={n for n in final if learnt(seg.trained_on, n)},
        )
        if pred.tta_probs is None:  # say so: tta_disagreement is None because it was not made
            for sig in result.signals.values():
                sig[TTA_NOT_RUN_KEY] = TTA_NOT_RUN
        result.map_affine = pred.affine
        result.map_classes = tuple(final)
    t3 = time.perf_counter()
    result.seconds = {
        "read": t_read,
        **pred.seconds,
        "resample_postprocess": t2 - t1,
        "uncertainty": t3 - t2,
        "total": t3 - t0,
    }
    return result
