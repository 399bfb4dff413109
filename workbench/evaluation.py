"""Held-out evaluation: per-class Dice and normalized surface distance, patient-level tumour detection.

The held-out split (:func:`held_out_split`) is chosen ONCE per workspace and stored in the catalog's
``split`` table. The first call assigns every scan, stratified by source: within each source the scans
are ordered by a hash of (seed, scan id) and the first ``floor(fraction * n + 0.5)`` are held out (so a
source with one scan, or two at the default 0.2, keeps them all for training). Every later call returns
the stored split; a scan that arrives afterwards is held out when the hash of (seed, scan id), read as a
number in [0, 1), is below the fraction: deterministic, independent of arrival order, and stratified in
expectation. Held-out scans must stay out of training (:func:`training_scan_ids`).

Scoring rules (one item per held-out scan x class the scan ANNOTATES; a class the truth does not
annotate is never scored, whatever the model predicts there):

* **Dice** (``monai.metrics.compute_dice``) and **NSD**, the normalized surface distance / surface Dice
  (``monai.metrics.compute_surface_dice`` with the scan's voxel spacing, so the tolerance is in mm,
  default :data:`DEFAULT_TOLERANCE_MM`). Truth absent and prediction empty: Dice 1, NSD 1 (the model is
  right that there is nothing). Exactly one of them empty: Dice 0, NSD 0.
* **Tumour detection**, patient level as in the Universal Model paper, per tumour class (the taxonomy's
  tumours and the kidney cyst): a scan whose truth has the tumour is DETECTED when the prediction has at
  least ``min_voxels`` (default 1) voxels of that class (sensitivity = detected / tumour scans); a scan
  whose source annotates the tumour as absent is a true negative when nothing of it is predicted
  (specificity = true negatives / tumour-free scans). Scans that do not annotate the tumour are excluded.
* Means are taken over items (scan x class); ``dice_present`` / ``nsd_present`` only over items whose
  truth has the class. The summary's mean Dice is the macro mean over classes of the pooled means.

Truth is the scan's expert labels under the training-set rule restricted to ``revised`` > ``original``
(never a model's guess), or truths the caller passes (benchmarks: the phantoms' complete truth, so every
round is scored on the same items). Predictions are the ``pseudo`` label sets of a pseudo-label run
(:func:`evaluate`; the run must predict the annotated classes too: ``workbench pseudolabel --all-classes``)
or any callable that returns masks (:func:`evaluate_predictions`, e.g. a round's model in memory).

Each evaluation is one ``evaluate`` run in the catalog (config and summary metrics as JSON), one
``evaluation`` row per scored item, and a report folder ``<workspace>/reports/<run id>/`` with
``report.md``, ``metrics.csv`` (per source and class; ``source_id = all`` pools the sources),
``detection.csv`` and ``items.csv``.

Example:
    >>> ev = evaluate(Workspace.open("ws"), "run-pl-0123456789abcdef")  # doctest: +SKIP
    >>> ev.metrics.query("source_id == 'all'")[["class_name", "dice", "nsd"]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.taxonomy import CLASSES, class_names
from storage.workspace import Workspace

DEFAULT_TOLERANCE_MM = 2.0
DEFAULT_FRACTION = 0.2
HELD_OUT = "held_out"
TRAIN = "train"
#: Classes scored for patient-level detection: the taxonomy's tumours and the kidney cyst.
TUMOUR_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASSES if c.is_tumor)
#: ``source_id`` of the rows that pool every source.
ALL_SOURCES = "all"
REPORTS_DIR = "reports"

ITEM_COLUMNS = (
    "scan_id",
    "source_id",
    "class_name",
    "truth_state",
    "truth_voxels",
    "predicted_voxels",
    "dice",
    "nsd",
    "truth_label_set_id",
    "prediction_label_set_id",
)

# ------------------------------------------------------------------------------------------- split


def unit_hash(seed: int, scan_id: str) -> float:
    """A number in [0, 1) fixed by (seed, scan id): the first 8 bytes of SHA-256 over ``"seed:scan_id"``."""
    digest = hashlib.sha256(f"{int(seed)}:{scan_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    return f


def choose_split(
    scans: Mapping[str, str], fraction: float = DEFAULT_FRACTION, seed: int = 0
) -> dict[str, str]:
    """The first, stratified split of a set of scans (pure; :func:`held_out_split` stores it).

    Args:
        scans: scan id -> source id.
        fraction: share of each source to hold out, in [0, 1).
        seed: hash seed.

    Returns:
        scan id -> :data:`HELD_OUT` or :data:`TRAIN`. Per source, the ``floor(fraction * n + 0.5)`` scans
        with the smallest :func:`unit_hash` are held out.
    """
    f = _check_fraction(fraction)
    by_source: dict[str, list[str]] = {}
    for scan_id, source in scans.items():
        by_source.setdefault(source, []).append(scan_id)
    out: dict[str, str] = {}
    for ids in by_source.values():
        ranked = sorted(ids, key=lambda s: (unit_hash(seed, s), s))
        k = math.floor(f * len(ranked) + 0.5)
        out.update({s: HELD_OUT if i < k else TRAIN for i, s in enumerate(ranked)})
    return out


def held_out_split(ws: Workspace, fraction: float = DEFAULT_FRACTION, seed: int = 0) -> set[str]:
    """The workspace's held-out scan ids; assigns (and stores) scans that have no split yet.

    Args:
        ws: the workspace.
        fraction: share of scans to hold out, in [0, 1); used only for scans not yet assigned.
        seed: hash seed; used only for scans not yet assigned.

    Returns:
        The held-out scan ids. Stable: once stored, a scan's split never changes, whatever ``fraction``
        and ``seed`` later calls pass (the ``split`` table records the ones that assigned it).
    """
    f = _check_fraction(fraction)
    stored = ws.catalog.split_assignments()
    scans = ws.catalog.query("SELECT id, source_id FROM scan")
    pending = {str(r.id): str(r.source_id) for r in scans.itertuples() if r.id not in stored}
    if pending:
        if stored:
            method = "hash"
            chosen = {s: HELD_OUT if unit_hash(seed, s) < f else TRAIN for s in pending}
        else:
            method = "stratified"
            chosen = choose_split(pending, f, seed)
        # Two processes may assign at once: the catalog keeps the first row per scan, and we re-read.
        ws.catalog.add_split_assignments(
            [
                {"scan_id": s, "split": v, "method": method, "fraction": f, "seed": int(seed)}
                for s, v in chosen.items()
            ]
        )
        stored = ws.catalog.split_assignments()
    return {s for s, v in stored.items() if v == HELD_OUT}


def training_scan_ids(ws: Workspace, fraction: float = DEFAULT_FRACTION, seed: int = 0) -> set[str]:
    """Every scan id that is NOT held out (assigning new scans first, as :func:`held_out_split`)."""
    held = held_out_split(ws, fraction, seed)
    return {str(s) for s in ws.catalog.query("SELECT id FROM scan")["id"]} - held


# ----------------------------------------------------------------------------------------- metrics


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Half-open per-axis extent of the foreground, None when empty."""
    spans = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != ax)))
        if hit.size == 0:
            return None
        spans.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)


def _one_hot(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


def dice_nsd(
    truth: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> tuple[float, float]:
    """Dice and normalized surface distance of one class.

    Args:
        truth: (i, j, k) bool mask.
        prediction: (i, j, k) bool mask, same shape.
        spacing: voxel size in mm along i, j, k.
        tolerance_mm: NSD boundary tolerance in mm (finite, >= 0).

    Returns:
        ``(dice, nsd)`` in [0, 1]. Both empty: (1, 1); exactly one empty: (0, 0); otherwise MONAI's
        ``compute_dice`` and ``compute_surface_dice`` (euclidean distances in mm, edge voxels) on the
        union bounding box grown by one voxel, which gives the same values as the whole volume.

    Raises:
        ValueError: shapes differ, a spacing that is not three positive numbers, a bad tolerance.
    """
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(prediction, dtype=bool)
    if t.shape != p.shape or t.ndim != 3:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be 3D masks of the same shape")
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    bt, bp = _bbox(t), _bbox(p)
    if bt is None and bp is None:
        return 1.0, 1.0
    if bt is None or bp is None:
        return 0.0, 0.0
    sl = tuple(
        slice(max(0, min(a[0], b[0]) - 1), min(n, max(a[1], b[1]) + 1)) for a, b, n in zip(bt, bp, t.shape)
    )
    from monai.metrics import compute_dice, compute_surface_dice

    y, y_pred = _one_hot(t[sl]), _one_hot(p[sl])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated internal argument
        dice = float(compute_dice(y_pred, y, include_background=False, ignore_empty=False)[0, 0])
        nsd = float(
            compute_surface_dice(y_pred, y, [tol], include_background=False, spacing=sp)[0, 0]  # type: ignore[arg-type]
        )
    return dice, nsd


def detection_outcome(truth_state: str, predicted_voxels: int, min_voxels: int = 1) -> str | None:
    """Patient-level detection outcome of one scan x tumour class.

    Returns:
        ``"tp"`` (tumour present, >= ``min_voxels`` predicted), ``"fn"`` (present, fewer predicted),
        ``"tn"`` (annotated absent, fewer predicted), ``"fp"`` (annotated absent, >= ``min_voxels``
        predicted), or None for a scan that does not annotate the class (excluded).
    """
    detected = int(predicted_voxels) >= max(1, int(min_voxels))
    if truth_state == ANNOTATED_PRESENT:
        return "tp" if detected else "fn"
    if truth_state == ANNOTATED_ABSENT:
        return "fp" if detected else "tn"
    if truth_state == NOT_ANNOTATED:
        return None
    raise ValueError(f"unknown coverage state {truth_state!r}")


@dataclass(frozen=True)
class ScanTruth:
    """The expert truth of one scan.

    Args:
        scan_id / source_id: catalog ids.
        spacing: voxel size in mm along i, j, k.
        states: every ANNOTATED class -> ``annotated_present`` or ``annotated_absent`` (classes left out
            are not annotated and never scored).
        masks: present class -> (i, j, k) bool mask (may be lazy).
        shape: (i, j, k) voxel shape of the scan.
        label_sets: class -> label set id the truth came from (provenance; optional).
    """

    scan_id: str
    source_id: str
    spacing: tuple[float, float, float]
    states: Mapping[str, str]
    masks: Mapping[str, np.ndarray]
    shape: tuple[int, int, int]
    label_sets: Mapping[str, str] = field(default_factory=dict)

    def mask(self, class_name: str) -> np.ndarray:
        """The class's truth mask (all False when annotated absent)."""
        if self.states.get(class_name) == ANNOTATED_PRESENT:
            return np.asarray(self.masks[class_name], dtype=bool)
        return np.zeros(self.shape, dtype=bool)


def score_scan(
    truth: ScanTruth,
    prediction: Mapping[str, np.ndarray],
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    classes: Sequence[str] | None = None,
    prediction_label_sets: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Score one scan: one item per class the truth annotates and the prediction covers.

    Args:
        truth: the scan's truth.
        prediction: class -> (i, j, k) bool mask of the scan's shape; a class left out was not predicted
            (an empty mask means "predicted absent").
        tolerance_mm: NSD tolerance in mm.
        classes: score only these (default: all annotated).
        prediction_label_sets: class -> label set id of the prediction (provenance).

    Returns:
        ``(items, unpredicted)``: item dicts with the keys of :data:`ITEM_COLUMNS`, in model order, and the
        annotated classes the prediction does not cover.
    """
    wanted = set(classes) if classes is not None else None
    items, unpredicted = [], []
    for name in class_names():
        state = truth.states.get(name)
        if state is None or state == NOT_ANNOTATED or (wanted is not None and name not in wanted):
            continue
        if name not in prediction:
            unpredicted.append(name)
            continue
        t = truth.mask(name)
        p = np.asarray(prediction[name], dtype=bool)
        if p.shape != t.shape:
            raise ValueError(f"{truth.scan_id} {name}: prediction shape {p.shape} != scan shape {t.shape}")
        dice, nsd = dice_nsd(t, p, truth.spacing, tolerance_mm)
        items.append(
            {
                "scan_id": truth.scan_id,
                "source_id": truth.source_id,
                "class_name": name,
                "truth_state": state,
                "truth_voxels": int(t.sum()),
                "predicted_voxels": int(p.sum()),
                "dice": dice,
                "nsd": nsd,
                "truth_label_set_id": truth.label_sets.get(name),
                "prediction_label_set_id": (prediction_label_sets or {}).get(name),
            }
        )
    return items, unpredicted


def _mean(s: pd.Series) -> float:
    return float(s.mean()) if len(s) else float("nan")


def metrics_table(items: pd.DataFrame) -> pd.DataFrame:
    """Per source x class and pooled (``source_id`` = :data:`ALL_SOURCES`) means of the items.

    Returns:
        Columns ``source_id, class_name, n, n_present, dice, nsd, dice_present, nsd_present``; rows in
        model class order, the pooled rows first. NaN where a group has no present item.
    """
    cols = ["source_id", "class_name", "n", "n_present", "dice", "nsd", "dice_present", "nsd_present"]
    if items.empty:
        return pd.DataFrame(columns=cols)
    order = {n: i for i, n in enumerate(class_names())}
    rows = []
    for source, group in [
        (ALL_SOURCES, items),
        *sorted(items.groupby("source_id"), key=lambda kv: str(kv[0])),
    ]:
        for name, g in group.groupby("class_name"):
            present = g[g["truth_state"] == ANNOTATED_PRESENT]
            rows.append(
                {
                    "source_id": str(source),
                    "class_name": str(name),
                    "n": len(g),
                    "n_present": len(present),
                    "dice": _mean(g["dice"]),
                    "nsd": _mean(g["nsd"]),
                    "dice_present": _mean(present["dice"]),
                    "nsd_present": _mean(present["nsd"]),
                    "_s": 0 if source == ALL_SOURCES else 1,
                    "_o": order[str(name)],
                }
            )
    df = pd.DataFrame(rows).sort_values(["_s", "source_id", "_o"]).drop(columns=["_s", "_o"])
    return df.reset_index(drop=True)[cols]


def detection_table(items: pd.DataFrame, scans: pd.DataFrame, min_voxels: int = 1) -> pd.DataFrame:
    """Patient-level detection per tumour class, per source and pooled (see :func:`detection_outcome`).

    Args:
        items: scored items (:data:`ITEM_COLUMNS`).
        scans: every evaluated scan, columns ``scan_id, source_id`` (for the ``excluded`` count).
        min_voxels: predicted voxels that count as "a tumour is predicted".

    Returns:
        Columns ``source_id, class_name, tumour_scans, detected, sensitivity, tumour_free, false_positives,
        specificity, excluded``: one row per tumour class that some evaluated scan annotates. Sensitivity
        (specificity) is NaN when there is no tumour (tumour-free) scan; ``excluded`` counts evaluated
        scans that do not annotate the class.
    """
    cols = [
        "source_id",
        "class_name",
        "tumour_scans",
        "detected",
        "sensitivity",
        "tumour_free",
        "false_positives",
        "specificity",
        "excluded",
    ]
    tum = items[items["class_name"].isin(TUMOUR_CLASSES)] if not items.empty else items
    if tum.empty:
        return pd.DataFrame(columns=cols)
    outcome = [
        detection_outcome(s, v, min_voxels) for s, v in zip(tum["truth_state"], tum["predicted_voxels"])
    ]
    tum = tum.assign(outcome=outcome)
    rows = []
    groups = [
        (ALL_SOURCES, tum, scans),
        *((s, g, scans[scans["source_id"] == s]) for s, g in tum.groupby("source_id")),
    ]
    for source, group, group_scans in groups:
        for name in TUMOUR_CLASSES:
            g = group[group["class_name"] == name]
            if g.empty:
                continue
            counts = g["outcome"].value_counts()
            tp, fn, tn, fp = (int(counts.get(k, 0)) for k in ("tp", "fn", "tn", "fp"))
            rows.append(
                {
                    "source_id": str(source),
                    "class_name": name,
                    "tumour_scans": tp + fn,
                    "detected": tp,
                    "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
                    "tumour_free": tn + fp,
                    "false_positives": fp,
                    "specificity": tn / (tn + fp) if tn + fp else float("nan"),
                    "excluded": int(group_scans["scan_id"].nunique()) - int(g["scan_id"].nunique()),
                }
            )
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """One evaluation.

    Args:
        run_id: the ``evaluate`` run in the catalog ('' when not stored).
        predictions: what was evaluated (a pseudo-label run id, or a caller's name).
        tolerance_mm: the NSD tolerance.
        held_out: held-out scan ids.
        scans: evaluated scans (held out, with a prediction), columns ``scan_id, source_id``.
        items: one row per scored scan x class (:data:`ITEM_COLUMNS`).
        metrics: :func:`metrics_table` of the items.
        detection: :func:`detection_table` of the items.
        unpredicted: (scan id, class) pairs the truth annotates but the prediction did not cover.
        report_dir: the report folder (None when not written).
        truth: ``catalog`` (expert labels in the catalog) or ``given`` (truths passed by the caller).
    """

    run_id: str
    predictions: str
    tolerance_mm: float
    held_out: set[str]
    scans: pd.DataFrame
    items: pd.DataFrame
    metrics: pd.DataFrame
    detection: pd.DataFrame
    unpredicted: list[tuple[str, str]]
    report_dir: Path | None = None
    truth: str = "catalog"

    @property
    def mean_dice(self) -> float:
        """Macro mean over classes of the pooled per-class mean Dice (NaN without items)."""
        pooled = self.metrics[self.metrics["source_id"] == ALL_SOURCES]
        return float(pooled["dice"].mean()) if len(pooled) else float("nan")

    @property
    def mean_nsd(self) -> float:
        """Macro mean over classes of the pooled per-class mean NSD (NaN without items)."""
        pooled = self.metrics[self.metrics["source_id"] == ALL_SOURCES]
        return float(pooled["nsd"].mean()) if len(pooled) else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (stored as the run's metrics): means, per class, per source, detection."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        def per_class(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
            return {
                str(r["class_name"]): {
                    k: clean(r[k]) for k in ("n", "n_present", "dice", "nsd", "dice_present", "nsd_present")
                }
                for r in df.to_dict("records")
            }

        m = self.metrics
        return {
            "predictions": self.predictions,
            "truth": self.truth,
            "tolerance_mm": self.tolerance_mm,
            "held_out_scans": len(self.held_out),
            "evaluated_scans": len(self.scans),
            "items": len(self.items),
            "unpredicted_items": len(self.unpredicted),
            "mean_dice": clean(self.mean_dice),
            "mean_nsd": clean(self.mean_nsd),
            "by_class": per_class(m[m["source_id"] == ALL_SOURCES]),
            "by_source": {
                str(s): per_class(g) for s, g in m[m["source_id"] != ALL_SOURCES].groupby("source_id")
            },
            "detection": {
                f"{r['source_id']}/{r['class_name']}": {k: clean(v) for k, v in r.items()}
                for r in self.detection.to_dict("records")
            },
            "report": None if self.report_dir is None else str(self.report_dir),
        }

    def lines(self) -> list[str]:
        """A short human summary for the CLI."""
        out = [
            f"evaluation {self.run_id or '(not stored)'} of {self.predictions}: {len(self.scans)} of "
            f"{len(self.held_out)} held-out scans, {len(self.items)} scan x class items, NSD tolerance "
            f"{self.tolerance_mm:g} mm",
            f"mean over classes: Dice {self.mean_dice:.3f}, NSD {self.mean_nsd:.3f}",
        ]
        pooled = self.metrics[self.metrics["source_id"] == ALL_SOURCES]
        for r in pooled.itertuples():
            out.append(f"  {r.class_name:<30} n={r.n:<4} Dice {r.dice:.3f}  NSD {r.nsd:.3f}")
        for r in self.detection[self.detection["source_id"] == ALL_SOURCES].itertuples():
            out.append(
                f"  detection {r.class_name:<20} sensitivity {r.detected}/{r.tumour_scans}, specificity "
                f"{r.tumour_free - r.false_positives}/{r.tumour_free} ({r.excluded} scans excluded)"
            )
        if self.unpredicted:
            out.append(
                f"{len(self.unpredicted)} annotated items had no prediction (pseudo-label with --all-classes "
                "to score them)"
            )
        if self.report_dir is not None:
            out.append(f"report: {self.report_dir / 'report.md'}")
        return out


def catalog_truth(
    ws: Workspace, scan_ids: Sequence[str], origins: Sequence[str] = ("revised", "original")
) -> Iterator[ScanTruth]:
    """Expert truth of these scans from the catalog (training-set priority over ``origins``; masks lazy).

    Scans without any known class are skipped.
    """
    from workbench.training_set import assemble_training_set

    if not scan_ids:  # assemble_training_set reads "no filter" as every scan
        return
    geo = ws.catalog.query(
        "SELECT id, spacing, shape FROM scan WHERE id IN (SELECT unnest(?))", [list(scan_ids)]
    )
    geometry = {str(r["id"]): r for r in geo.to_dict("records")}
    for e in assemble_training_set(ws, scan_ids=list(scan_ids), origins=origins):
        g = geometry[e.scan_id]
        present = set(e.present)
        yield ScanTruth(
            scan_id=e.scan_id,
            source_id=e.source_id,
            spacing=tuple(float(s) for s in g["spacing"]),  # type: ignore[arg-type]
            states={n: ANNOTATED_PRESENT if n in present else ANNOTATED_ABSENT for n in e.annotated},
            masks=e.masks,
            shape=tuple(int(s) for s in g["shape"]),  # type: ignore[arg-type]
            label_sets=e.label_sets,
        )


class _StoredPrediction(Mapping[str, np.ndarray]):
    """class -> mask of one label set: present classes read on access, annotated-absent ones empty,
    not-annotated ones left out."""

    def __init__(self, ws: Workspace, label_set_id: str, mask_key: str, shape: tuple[int, int, int]) -> None:
        self._ws, self._key, self._shape = ws, mask_key, shape
        self._states = {n: s for n, s in ws.catalog.coverage(label_set_id).items() if s != NOT_ANNOTATED}

    def __getitem__(self, name: str) -> np.ndarray:
        if self._states[name] == ANNOTATED_PRESENT:
            return self._ws.masks.read(self._key, name)
        return np.zeros(self._shape, dtype=bool)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)


#: A prediction source: scan id -> (class -> mask, class -> label set id) or None when it has none.
Predictor = Callable[[str], tuple[Mapping[str, np.ndarray], Mapping[str, str]] | None]


def run_predictor(ws: Workspace, run_id: str) -> Predictor:
    """The pseudo label sets of a run as a :data:`Predictor` (the newest one per scan).

    Raises:
        HarmonizeError: the run wrote no pseudo label set.
    """
    df = ws.catalog.query(
        """
        SELECT l.id, l.scan_id, l.mask_key, s.shape FROM label_set l JOIN scan s ON s.id = l.scan_id
        WHERE l.origin = 'pseudo' AND l.run_id = ?
        QUALIFY row_number() OVER (PARTITION BY l.scan_id ORDER BY l.version DESC) = 1
        """,
        [run_id],
    )
    if df.empty:
        known = ws.catalog.query("SELECT DISTINCT run_id FROM label_set WHERE origin = 'pseudo' ORDER BY 1")
        raise HarmonizeError(
            ws.catalog.path,
            f"run {run_id!r} wrote no pseudo label set; "
            f"pseudo-label runs: {known['run_id'].tolist() or 'none'}",
        )
    rows = {str(r["scan_id"]): r for r in df.to_dict("records")}

    def predict(scan_id: str) -> tuple[Mapping[str, np.ndarray], Mapping[str, str]] | None:
        r = rows.get(scan_id)
        if r is None:
            return None
        pred = _StoredPrediction(ws, str(r["id"]), str(r["mask_key"]), tuple(int(s) for s in r["shape"]))  # type: ignore[arg-type]
        return pred, {n: str(r["id"]) for n in pred}

    return predict


def evaluate_predictions(
    ws: Workspace,
    predict: Predictor,
    *,
    name: str,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    truth_origins: Sequence[str] = ("revised", "original"),
    classes: Sequence[str] | None = None,
    min_tumour_voxels: int = 1,
    truths: Iterable[ScanTruth] | None = None,
    store: bool = True,
    progress: bool = False,
) -> Evaluation:
    """Evaluate any prediction source on the held-out split; store and report it.

    Args:
        ws: the workspace.
        predict: scan id -> (class -> (i, j, k) bool mask on the scan's grid, class -> label set id), or
            None when it has no prediction for the scan.
        name: what is evaluated (a run id, "round 3", ...), recorded with the results.
        tolerance_mm: NSD tolerance in mm.
        fraction / seed: the held-out split, if it is not chosen yet (:func:`held_out_split`).
        truth_origins: label origins that count as truth (priority revised > original).
        classes: score only these classes (default: all).
        min_tumour_voxels: predicted voxels that count as a detected tumour.
        truths: fixed truths to score against instead of the catalog's expert labels (only the held-out
            ones are used), e.g. ``PhantomTruth.scan_truth`` in benchmarks, so that every round is scored
            on the same items whatever reviewers add to the catalog.
        store: record an ``evaluate`` run, its ``evaluation`` rows and the report folder.
        progress: show a progress bar over scans.

    Returns:
        The :class:`Evaluation`.

    Raises:
        HarmonizeError: no held-out scan, or no held-out scan with both truth and a prediction.
    """
    started = time.time()
    held = held_out_split(ws, fraction, seed)
    if not held:
        raise HarmonizeError(
            ws.catalog.path,
            f"no scan is held out (at fraction {fraction} a source needs at least "
            f"{math.ceil(0.5 / fraction) if fraction > 0 else 'infinitely many'} scans); "
            "add scans or use a larger fraction before the split is first stored",
        )
    items: list[dict[str, Any]] = []
    unpredicted: list[tuple[str, str]] = []
    evaluated: list[dict[str, str]] = []
    if truths is None:
        scan_truths = list(catalog_truth(ws, sorted(held), truth_origins))
    else:
        scan_truths = sorted((t for t in truths if t.scan_id in held), key=lambda t: t.scan_id)
    for truth in tqdm(scan_truths, desc="evaluate", unit="scan", disable=not progress):
        got = predict(truth.scan_id)
        if got is None:
            continue
        pred, pred_sets = got
        scan_items, missing = score_scan(
            truth, pred, tolerance_mm=tolerance_mm, classes=classes, prediction_label_sets=pred_sets
        )
        evaluated.append({"scan_id": truth.scan_id, "source_id": truth.source_id})
        items += scan_items
        unpredicted += [(truth.scan_id, c) for c in missing]
    if not evaluated:
        raise HarmonizeError(
            ws.catalog.path,
            f"{name}: none of the {len(held)} held-out scans has both expert labels and a prediction "
            "(pseudo-label the held-out scans with --all-classes)",
        )
    item_df = pd.DataFrame(items, columns=list(ITEM_COLUMNS))
    scans = pd.DataFrame(evaluated, columns=["scan_id", "source_id"])
    result = Evaluation(
        run_id="",
        predictions=name,
        tolerance_mm=float(tolerance_mm),
        held_out=held,
        scans=scans,
        items=item_df,
        metrics=metrics_table(item_df),
        detection=detection_table(item_df, scans, min_tumour_voxels),
        unpredicted=unpredicted,
        truth="catalog" if truths is None else "given",
    )
    if store:
        _store(ws, result, fraction, seed, truth_origins, min_tumour_voxels, started)
    return result


def evaluate(
    ws: Workspace,
    run_id: str,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    truth_origins: Sequence[str] = ("revised", "original"),
    classes: Sequence[str] | None = None,
    min_tumour_voxels: int = 1,
    truths: Iterable[ScanTruth] | None = None,
    store: bool = True,
    progress: bool = False,
) -> Evaluation:
    """Evaluate the pseudo label sets of pseudo-label run ``run_id`` on the held-out split.

    Arguments as in :func:`evaluate_predictions`. Only classes the run predicted are scored: a run made
    without ``--all-classes`` predicts only what scans lack, which the truth cannot score.
    """
    return evaluate_predictions(
        ws,
        run_predictor(ws, run_id),
        name=run_id,
        tolerance_mm=tolerance_mm,
        fraction=fraction,
        seed=seed,
        truth_origins=truth_origins,
        classes=classes,
        min_tumour_voxels=min_tumour_voxels,
        truths=truths,
        store=store,
        progress=progress,
    )


def _store(
    ws: Workspace,
    ev: Evaluation,
    fraction: float,
    seed: int,
    truth_origins: Sequence[str],
    min_tumour_voxels: int,
    started: float,
) -> None:
    ev.run_id = "run-eval-" + uuid.uuid4().hex[:16]
    ws.catalog.start_run(
        ev.run_id,
        "evaluate",
        config={
            "predictions": ev.predictions,
            "tolerance_mm": ev.tolerance_mm,
            "split": {"fraction": fraction, "seed": seed},
            "truth_origins": list(truth_origins) if ev.truth == "catalog" else [],
            "truth": ev.truth,
            "min_tumour_voxels": int(min_tumour_voxels),
        },
    )
    ws.catalog.add_evaluation_items(ev.run_id, ev.tolerance_mm, ev.items.to_dict("records"))
    write_report(ev, ws.root / REPORTS_DIR / ev.run_id)
    ws.catalog.finish_run(
        ev.run_id, metrics=ev.summary(), timings={"seconds": round(time.time() - started, 2)}
    )


# ----------------------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``df`` (floats with 3 decimals, NaN as an en dash)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_report(ev: Evaluation, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``metrics.csv``, ``detection.csv``, ``items.csv`` and ``summary.json`` into
    ``out_dir`` (created); sets ``ev.report_dir`` and returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev.report_dir = out
    ev.metrics.to_csv(out / "metrics.csv", index=False)
    ev.detection.to_csv(out / "detection.csv", index=False)
    ev.items.to_csv(out / "items.csv", index=False)
    per_source = ev.scans.groupby("source_id").size().rename("scans").reset_index()
    m = ev.metrics
    parts = [
        f"# Evaluation {ev.run_id or '(not stored)'}",
        "",
        f"- predictions: `{ev.predictions}`; truth: {ev.truth}",
        f"- held-out scans: {len(ev.held_out)}; evaluated (with a prediction): {len(ev.scans)}",
        f"- scored items (scan x annotated class): {len(ev.items)}; annotated items without a prediction: "
        f"{len(ev.unpredicted)}",
        f"- NSD tolerance: {ev.tolerance_mm:g} mm; mean over classes: Dice {_fmt(ev.mean_dice)}, "
        f"NSD {_fmt(ev.mean_nsd)}",
        "- rules: only classes a scan annotates are scored; truth absent and nothing predicted = 1, exactly "
        "one of them empty = 0; `*_present` columns average only scans whose truth has the class.",
        "",
        "## Evaluated scans per source",
        "",
        markdown_table(per_source),
        "",
        "## Per class (all sources)",
        "",
        markdown_table(m[m["source_id"] == ALL_SOURCES].drop(columns="source_id")),
        "",
        "## Tumour detection (patient level)",
        "",
        "A tumour scan is detected when any voxel of the tumour class is predicted; tumour-free scans of "
        "sources that annotate the tumour as absent give the specificity; other scans are excluded.",
        "",
        markdown_table(ev.detection) if len(ev.detection) else "No evaluated scan annotates a tumour class.",
        "",
        "## Per source and class",
        "",
        markdown_table(m[m["source_id"] != ALL_SOURCES]),
        "",
    ]
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(ev.summary(), indent=1), encoding="utf-8")
    return out
