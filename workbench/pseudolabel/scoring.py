"""Scoring of uncertainty items: one score per scan x class from its signals, with reasons in words.

Each signal (see ``workbench.pseudolabel.uncertainty``) becomes a severity in [0, 1] and, when it matters,
a reason; severities combine as a weighted noisy-OR (``1 - prod(1 - w * s)``), so one strong signal is
enough to put an item near the top and several weak ones add up. A long-tail boost then multiplies the
score by ``1 + long_tail_boost / sqrt(1 + n)`` where ``n`` is the number of annotated scans of the class in
the catalog: an error in a rare class costs more (few examples to outvote it) and the catalog statistics
behind its plausibility checks are weaker. Once a run is complete, its own statistics of each class
(:func:`add_run_statistics`) temper the catalog's, and :func:`rescore` stores the scores again.

Example:
    >>> score, reasons = assess("kidney_left", {"volume_z": 3.1, "components": 2, "expected_components": 1})
    >>> round(score, 3), reasons
    (0.849, ['volume 3.1 sd above the catalog mean', '2 components (annotated scans: 1)'])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from storage.workspace import Workspace

#: Weight of each signal's severity in the noisy-OR.
WEIGHTS: dict[str, float] = {
    "side": 1.0,
    "missing": 0.95,
    "outside_parent": 0.9,
    "overlap": 0.85,
    "volume": 0.85,
    "components": 0.75,
    "near_miss": 0.75,
    "tta": 0.5,
    "entropy": 0.4,
}
DEFAULT_LONG_TAIL_BOOST = 0.5
#: Signal key that says why no test-time augmentation was made (its text is the queue's last reason).
TTA_NOT_RUN_KEY = "tta_not_run"
#: ... and its text.
TTA_NOT_RUN = "no test-time augmentation was run (no TTA disagreement; `pseudolabel --tta` adds it)"

#: A reason is given for a signal whose severity reaches this.
REASON_SEVERITY = 0.2
#: A near miss (a region of a class predicted absent at probability 0.1-0.5) of this many mL or more
#: counts fully: a sphere of 5 mm diameter, the smallest lesion a radiologist reports as one (a single
#: voxel of a 1.5 mm grid, 3 uL, is noise; 19 of them are a lesion).
NEAR_MISS_ML = 0.065
#: The probability (``near_miss_p``) from which a near miss counts (``uncertainty.NEAR_MISS_P``: a compact
#: region the model half-saw while it predicts the class absent is worth a look by itself, severity
#: :data:`NEAR_MISS_BASE`), and the one at which it counts fully (more than half-way to the 0.5 threshold:
#: the model nearly drew it); linear between.
NEAR_MISS_FROM_P, NEAR_MISS_FULL_P, NEAR_MISS_BASE = 0.1, 0.3, 0.5
#: A class predicted absent whose probability stays below this EVERYWHERE (``absent_peak_p``; a logit
#: of -3.9) is the model's confident absence: "missing" keeps only :data:`CONFIDENT_ABSENT_SEVERITY`
#: (the item asks to confirm a true absence, e.g. a nephrectomy, rather than to fix a miss). From
#: :data:`SEEN_P` (logit -2.2, where the model half-sees a structure) it counts in full; linear between.
CONFIDENT_ABSENT_P, SEEN_P = 0.02, 0.1
#: What is left of "missing" for a confident absence (still above the reason floor: it is said).
CONFIDENT_ABSENT_SEVERITY = 0.2
#: ... unless the CT says otherwise: from this share of the twin's mirror at the twin's density
#: (``twin_density_match``) the organ may well be there, so "missing" counts in full whatever the model's
#: confidence. An emptied fossa holds essentially none (fat -100 HU, bowel 20-40, the spleen's 110-130
#: below a portal-venous kidney's 150-200); a missed kidney still covers part of its twin's mirror (the
#: two differ in height by a centimetre or two; on the error-detection benchmark's phantoms the kidneys
#: predicted absent that are there match 29-57 %, the true nephrectomies 0 %).
TWIN_MATCH_MAX = 0.1
#: Run statistics of a class need this many items of the run.
MIN_RUN_ITEMS = 5


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _volume_z(signals: Mapping[str, Any]) -> float | None:
    """The volume z-score that counts: against the catalog's annotated scans, and, when the run's own
    statistics are known (``volume_z_run``, robust z against the run's predictions of the class), only as
    far as both agree: a model that draws every spleen 20 % small shifts every item against the catalog,
    and that bias is not an error of one item."""
    z = signals.get("volume_z")
    z_run = signals.get("volume_z_run")
    if z is None or z_run is None:
        return z
    if z * z_run <= 0:
        return 0.0
    return math.copysign(min(abs(z), abs(z_run)), z)


def severities(signals: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """Per signal: (severity in [0, 1], reason in words). Signals that are absent or None count 0.

    Args:
        signals: the ``uncertainty.signals`` dict of one scan x class (keys documented in
            ``workbench.pseudolabel.uncertainty.SIGNAL_KEYS``).
    """
    out: dict[str, tuple[float, str]] = {}
    side = signals.get("side_offset_mm")
    if side is not None and side < 0:
        wrong = "right" if signals.get("side") == "left" else "left"
        out["side"] = (
            _clip(0.6 + abs(side) / 50.0),
            f"centroid {abs(side):.0f} mm on the patient's {wrong} of the body midline",
        )
    presence = signals.get("expected_presence")
    if not signals.get("present", True) and signals.get("in_region") and presence is not None:
        sev = _clip(presence) if presence >= 0.5 else 0.0
        reason = (
            f"predicted absent although the scan covers where it lies (present in {presence:.0%} of "
            f"{signals.get('n_reference', 0)} annotated scans)"
        )
        peak, match = signals.get("absent_peak_p"), signals.get("twin_density_match")
        if match is not None and match >= TWIN_MATCH_MAX:
            reason += f"; {match:.0%} of the other side's mirror has its density"
        elif peak is not None and peak < SEEN_P:
            seen = _clip((peak - CONFIDENT_ABSENT_P) / (SEEN_P - CONFIDENT_ABSENT_P))
            sev *= CONFIDENT_ABSENT_SEVERITY + (1.0 - CONFIDENT_ABSENT_SEVERITY) * seen
            if seen == 0.0:
                fossa = "" if match is None else f", {match:.0%} of the other side's mirror at its density"
                reason = (
                    f"predicted absent, the model sure of it (probability at most {peak:.2f} anywhere"
                    f"{fossa}): confirm a true absence (present in {presence:.0%} of "
                    f"{signals.get('n_reference', 0)} annotated scans)"
                )
        out["missing"] = (sev, reason)
    near_ml, near_p = signals.get("near_miss_ml"), signals.get("near_miss_p")
    if not signals.get("present", True) and near_ml and near_p is not None:
        # a faint region the threshold dropped: surer the closer it came to 0.5 and the bigger it is
        if near_p >= NEAR_MISS_FROM_P:
            ramp = _clip((near_p - NEAR_MISS_FROM_P) / (NEAR_MISS_FULL_P - NEAR_MISS_FROM_P))
            sev = (NEAR_MISS_BASE + (1.0 - NEAR_MISS_BASE) * ramp) * _clip(near_ml / NEAR_MISS_ML)
        else:
            sev = 0.0
        out["near_miss"] = (
            sev,
            f"predicted absent, but the model saw {near_ml:.2f} mL at probability up to {near_p:.2f}",
        )
    outside = signals.get("outside_parent")
    if outside is not None and outside > 0.05:
        out["outside_parent"] = (
            _clip(outside / 0.3),
            f"{outside:.0%} lies outside its organ ({signals.get('parent') or 'parent'})",
        )
    overlap = signals.get("overlap")
    if overlap is not None and overlap > 0.05:
        out["overlap"] = (_clip(overlap / 0.3), f"{overlap:.0%} overlaps {signals.get('overlap_with')}")
    z = _volume_z(signals)
    if z is not None and abs(z) > 2.0:
        out["volume"] = (
            _clip((abs(z) - 2.0) / 1.5),
            f"volume {abs(z):.1f} sd {'above' if z > 0 else 'below'} the catalog mean",
        )
    comps, expected = signals.get("components"), signals.get("expected_components")
    if comps is not None and expected is not None and comps > expected:
        extra = comps - expected
        out["components"] = (
            _clip(0.8 + 0.1 * (extra - 1)),
            f"{comps} components (annotated scans: {expected})",
        )
    tta = signals.get("tta_disagreement")
    if tta is not None:
        # Above the run's typical disagreement for the class, when known (a model's baseline varies).
        excess = tta - signals.get("tta_run_median", 0.15)
        out["tta"] = (
            _clip((excess - 0.05) / 0.3),
            f"test-time augmentations disagree (1 - Dice {tta:.2f})",
        )
    entropy = signals.get("entropy")
    if entropy is not None:
        excess = entropy - signals.get("entropy_run_median", 0.35)
        out["entropy"] = (_clip((excess - 0.05) / 0.35), f"uncertain (mean entropy {entropy:.2f} bits)")
    return out


def assess(
    class_name: str,
    signals: Mapping[str, Any],
    n_annotated: int | None = None,
    long_tail_boost: float = DEFAULT_LONG_TAIL_BOOST,
    weights: Mapping[str, float] = WEIGHTS,
) -> tuple[float, list[str]]:
    """The queue score (higher = review first) and the reasons of one scan x class.

    Args:
        class_name: the class (for the long tail; reasons do not repeat it).
        signals: its uncertainty signals.
        n_annotated: annotated scans of the class in the catalog; None means no boost.
        long_tail_boost: strength of the boost for rare classes (0 turns it off).
        weights: weight per signal name (see :data:`WEIGHTS`).

    Returns:
        ``(score, reasons)``: score >= 0; reasons ordered by severity, strongest first.
    """
    sev = severities(signals)
    keep = 1.0
    for name, (s, _) in sev.items():
        keep *= 1.0 - weights.get(name, 0.0) * s
    score = 1.0 - keep
    if n_annotated is not None and long_tail_boost:
        score *= 1.0 + long_tail_boost / math.sqrt(1.0 + max(0, n_annotated))
    ordered = sorted(sev.items(), key=lambda kv: -kv[1][0] * weights.get(kv[0], 0.0))
    reasons = [reason for _, (s, reason) in ordered if s >= REASON_SEVERITY]
    if signals.get("tta_disagreement") is None and signals.get(TTA_NOT_RUN_KEY):
        reasons.append(str(signals[TTA_NOT_RUN_KEY]))  # the second opinion that was not asked for
    return float(score), reasons


def add_run_statistics(records: Sequence[dict[str, Any]]) -> None:
    """Add the run's own statistics of each class to every item's ``signals`` (in place):
    ``volume_z_run`` (robust z of log volume: median and 1.4826 x MAD over the run's present items),
    ``tta_run_median`` and ``entropy_run_median``. Classes with fewer than :data:`MIN_RUN_ITEMS` items in
    the run get none.

    Args:
        records: dicts with ``run_id``, ``class_name`` and ``signals`` (a dict).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["run_id"], r["class_name"]), []).append(r["signals"])
    for sigs in groups.values():
        if len(sigs) < MIN_RUN_ITEMS:
            continue
        for key in ("tta_disagreement", "entropy"):
            vals = [s[key] for s in sigs if s.get(key) is not None]
            if len(vals) >= MIN_RUN_ITEMS:
                med = float(np.median(vals))
                for s in sigs:
                    s[key.split("_")[0] + "_run_median"] = med
        logv = [math.log(s["volume_ml"]) for s in sigs if s.get("volume_ml")]
        if len(logv) < MIN_RUN_ITEMS:
            continue
        med = float(np.median(logv))
        # MAD floor as the catalog's sd floor: near-identical predictions must not make 10 % a big deviation.
        scale = max(1.4826 * float(np.median(np.abs(np.array(logv) - med))), 0.15)
        for s in sigs:
            if s.get("volume_ml"):
                s["volume_z_run"] = round((math.log(s["volume_ml"]) - med) / scale, 4)


def score_items(
    records: Sequence[Mapping[str, Any]],
    n_annotated: Mapping[str, int],
    long_tail_boost: float = DEFAULT_LONG_TAIL_BOOST,
) -> list[dict[str, Any]]:
    """Score stored uncertainty items together: their run's statistics first, then :func:`assess`.

    Args:
        records: dicts with ``run_id``, ``class_name`` and ``signals`` (a dict, JSON text, or empty);
            other keys are kept.
        n_annotated: class -> annotated scans in the catalog (``Catalog.annotated_counts``); a class
            missing counts 0.
        long_tail_boost: see :func:`assess`.

    Returns:
        One new dict per record, in order, with ``signals`` as a dict (run statistics added), ``score``
        and ``reasons``.
    """
    items = [{**r, "signals": _signals(r.get("signals"))} for r in records]
    add_run_statistics(items)
    for it in items:
        name = it["class_name"]
        it["score"], it["reasons"] = assess(name, it["signals"], n_annotated.get(name, 0), long_tail_boost)
    return items


def _signals(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return dict(value) if value else {}


def rescore(
    ws: Workspace, run_id: str | None = None, long_tail_boost: float = DEFAULT_LONG_TAIL_BOOST
) -> int:
    """Recompute and store ``uncertainty.score`` and ``reasons`` from the stored signals (after the
    catalog's long tail changed, or a run completed), decided items included.

    Args:
        ws: the workspace.
        run_id: only the items of this pseudo-label run (default: every run).
        long_tail_boost: see :func:`assess`.

    Returns:
        The number of rows updated.
    """
    records = ws.catalog.uncertainty_items(run_id).to_dict("records")
    items = score_items(records, ws.catalog.annotated_counts(), long_tail_boost)
    ws.catalog.update_scores(items)
    return len(items)
