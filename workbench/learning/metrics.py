"""Scoring of segmentations: per-class Dice and normalized surface distance, patient-level tumour
detection, and the tables that pool them. Pure: masks in, numbers out, no catalog.

Scoring rules (one item per scan x class the truth ANNOTATES; a class the truth does not annotate is never
scored, whatever the model predicts there):

* **Dice** (``monai.metrics.compute_dice``) and **NSD**, the normalized surface distance / surface Dice
  (``monai.metrics.compute_surface_dice`` with the scan's voxel spacing, so the tolerance is in mm,
  default :data:`DEFAULT_TOLERANCE_MM`). Truth absent and prediction empty: Dice 1, NSD 1 (the model is
  right that there is nothing). Exactly one of them empty: Dice 0, NSD 0.
* **Tumour detection**, patient level as in the Universal Model paper, per tumour class (the taxonomy's
  tumours and the kidney cyst): a scan whose truth has the tumour is DETECTED when the prediction has at
  least ``min_voxels`` (default 1) voxels of that class (sensitivity = detected / tumour scans); a scan
  whose source annotates the tumour as absent is a true negative when nothing of it is predicted
  (specificity = true negatives / tumour-free scans). Scans that do not annotate the tumour are excluded,
  except those of a tumour-free cohort (:func:`with_tumour_free`: the source's protocol says no patient
  has it), which count as tumour-free.
* Means are taken over items (scan x class); ``dice_present`` / ``nsd_present`` only over items whose
  truth has the class.

:func:`dice` is the plain overlap Dice of two masks (the simulated expert's accept rule).

Example:
    >>> import numpy as np
    >>> m = np.zeros((4, 4, 4), bool); m[1:3, 1:3, 1:3] = True
    >>> dice(m, m), detection_outcome("annotated_absent", 0)
    (1.0, 'tn')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from harmonize.geometry import bbox
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.taxonomy import CLASSES, class_names

DEFAULT_TOLERANCE_MM = 2.0
#: Classes scored for patient-level detection: the taxonomy's tumours and the kidney cyst.
TUMOUR_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASSES if c.is_tumor)
#: ``source_id`` of the rows that pool every source.
ALL_SOURCES = "all"

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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks of one shape.

    Args:
        a / b: bool masks of the same shape.

    Returns:
        ``2 |a & b| / (|a| + |b|)``; 1.0 when both are empty.

    Raises:
        ValueError: the shapes differ.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _one_hot(mask: np.ndarray) -> Any:
    import torch  # the model stack (torch, MONAI) loads only when a surface metric is computed

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
    bt, bp = bbox(t), bbox(p)
    if bt is None and bp is None:
        return 1.0, 1.0
    if bt is None or bp is None:
        return 0.0, 0.0
    sl = tuple(
        slice(max(0, min(a[0], b[0]) - 1), min(n, max(a[1], b[1]) + 1)) for a, b, n in zip(bt, bp, t.shape)
    )
    from monai.metrics import compute_dice, compute_surface_dice  # see _one_hot

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


def with_tumour_free(truth: ScanTruth, classes: Sequence[str]) -> ScanTruth:
    """The truth of a patient from a tumour-free cohort: ``classes`` the scan does not annotate become
    ``annotated_absent`` (the patient is known to have none), so detection counts the scan for the
    specificity; a class the scan annotates keeps its state.

    Args:
        truth: the scan's truth.
        classes: tumour classes its source's protocol names tumour-free (``Protocol.tumour_free``).

    Returns:
        The same truth when nothing is added, else a copy with the added states.

    Example:
        >>> t = ScanTruth("s", "chaos_ct", (1.0, 1.0, 1.0), {"liver": "annotated_present"}, {}, (2, 2, 2))
        >>> with_tumour_free(t, ["liver_tumor"]).states
        {'liver': 'annotated_present', 'liver_tumor': 'annotated_absent'}
    """
    added = {c: ANNOTATED_ABSENT for c in classes if truth.states.get(c, NOT_ANNOTATED) == NOT_ANNOTATED}
    return replace(truth, states={**truth.states, **added}) if added else truth


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
