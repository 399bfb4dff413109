"""Held-out evaluation against the catalog: truths, predictions, the stored evaluation and its report.

Truth is the scan's expert labels: the assembly rule restricted to the expert bases
(``current_label_of(['revised', 'original'])``, :data:`workbench.training_set.EXPERT_BASES`), never a
pseudo-label, not even an accepted one (an accepted prediction is a model's guess a reviewer found good
enough, and scoring a model against its own guesses inflates it; ``docs/decisions.md``), or truths the
caller passes (benchmarks: the phantoms' complete truth, so every
round is scored on the same items). With ``tumour_free``, a scan of a source whose protocol names it
tumour-free (``tumour_free`` in its TOML: CHAOS, Pancreas-CT) has those tumour classes as known absent
(:func:`workbench.learning.metrics.with_tumour_free`), so the patients count for the specificity.
Predictions are the ``pseudo`` label sets of a pseudo-label run
(:func:`evaluate`; the run must predict the annotated classes too: ``workbench pseudolabel --all-classes``)
or any callable that returns masks (:func:`evaluate_predictions`, e.g. a round's model in memory). Only
held-out scans (:mod:`workbench.learning.split`) are scored, or the scans the caller names (whole external
sources, :mod:`workbench.learning.external`), by the rules of
:mod:`workbench.learning.metrics`; the summary's mean Dice is the macro mean over classes of the pooled
means.

Each evaluation is one ``evaluate`` run in the catalog (config and summary metrics as JSON), one
``evaluation`` row per scored item, and a report folder ``<workspace>/reports/<run id>/``
(:attr:`storage.workspace.Workspace.reports`) with ``report.md``, ``metrics.csv`` (per source and class;
``source_id = all`` pools the sources), ``detection.csv``, ``items.csv`` and ``summary.json``.

Example:
    >>> ev = evaluate(Workspace.open("ws"), "run-pl-0123456789abcdef")  # doctest: +SKIP
    >>> ev.metrics.query("source_id == 'all'")[["class_name", "dice", "nsd"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.protocols import all_protocols
from storage.workspace import Workspace
from workbench.learning.metrics import (
    ALL_SOURCES,
    DEFAULT_TOLERANCE_MM,
    ITEM_COLUMNS,
    ScanTruth,
    detection_table,
    metrics_table,
    score_scan,
    with_tumour_free,
)
from workbench.learning.split import DEFAULT_FRACTION, held_out_split
from workbench.training_set import EXPERT_BASES, assemble_training_set


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
        scope: ``held-out`` (the held-out split) or ``external`` (whole sources the caller named; then
            ``held_out`` holds their scans).
        facts: more entries of the summary (an external evaluation's model, FLOPs, seconds per scan).
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
    scope: str = "held-out"
    facts: dict[str, Any] = field(default_factory=dict)

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
            "scope": self.scope,
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
            **self.facts,
        }

    def lines(self) -> list[str]:
        """A short human summary for the CLI."""
        pool = "held-out scans" if self.scope == "held-out" else "scans of the external sources"
        out = [
            f"evaluation {self.run_id or '(not stored)'} of {self.predictions}: {len(self.scans)} of "
            f"{len(self.held_out)} {pool}, {len(self.items)} scan x class items, NSD tolerance "
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
        out += efficiency_lines(self.facts)
        if self.unpredicted:
            out.append(
                f"{len(self.unpredicted)} annotated items had no prediction (pseudo-label with --all-classes "
                "to score them)"
            )
        if self.report_dir is not None:
            out.append(f"report: {self.report_dir / 'report.md'}")
        return out


def efficiency_lines(facts: Mapping[str, Any]) -> list[str]:
    """The CLI's efficiency line of an evaluation that ran its model (FLOPs per window, seconds per CT);
    none for one that scored stored predictions.

    Example:
        >>> efficiency_lines({"flops_per_window": 6.4e11, "window": [96, 96, 96], "seconds_per_scan": 1.5,
        ...                   "timed_scans": 2})
        ['efficiency: 640.0 GFLOPs per 96x96x96 window, 1.50 s per CT (n=2 scans)']
    """
    if "flops_per_window" not in facts:
        return []
    window = "x".join(str(int(v)) for v in facts.get("window", ()))
    seconds = facts.get("seconds_per_scan")
    per_ct = "–" if seconds is None else f"{float(seconds):.2f}"
    return [
        f"efficiency: {float(facts['flops_per_window']) / 1e9:.1f} GFLOPs per {window} window, {per_ct} s "
        f"per CT (n={int(facts.get('timed_scans', 0))} scans)"
    ]


def catalog_truth(
    ws: Workspace, scan_ids: Sequence[str], origins: Sequence[str] = EXPERT_BASES
) -> Iterator[ScanTruth]:
    """Expert truth of these scans from the catalog (the assembly rule over ``origins``; masks lazy).

    Args:
        ws: the workspace.
        scan_ids: the scans.
        origins: the expert bases that count as truth (a subset of ``revised``, ``original``).

    Returns:
        One :class:`ScanTruth` per scan with a known class, by scan id; scans without any are skipped.

    Raises:
        ValueError: ``origins`` names a pseudo-label basis (``pseudo`` or ``accepted``) or nothing.
    """
    check_truth_bases(origins)
    if not scan_ids:  # assemble_training_set reads "no filter" as every scan
        return
    geo = ws.catalog.scan_geometry(scan_ids)
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


def check_truth_bases(origins: Sequence[str]) -> None:
    """Refuse truth bases that are not expert ones.

    Args:
        origins: the bases asked to count as truth.

    Raises:
        ValueError: empty, or a basis outside :data:`workbench.training_set.EXPERT_BASES`.
    """
    bad = sorted(set(origins) - set(EXPERT_BASES))
    if bad or not origins:
        raise ValueError(
            f"evaluation truth must be expert labels ({', '.join(EXPERT_BASES)}), not {bad or 'nothing'}: "
            "a pseudo-label, accepted or not, is a model's guess"
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

    Args:
        ws: the workspace.
        run_id: a pseudo-label run.

    Returns:
        scan id -> (class -> mask read on access, class -> label set id), None for a scan the run did not
        label; classes the label set does not annotate are left out.

    Raises:
        HarmonizeError: the run wrote no pseudo label set.
    """
    df = ws.catalog.run_pseudo_label_sets(run_id)
    if df.empty:
        known = ws.catalog.pseudo_label_run_ids()
        raise HarmonizeError(
            ws.catalog.path,
            f"run {run_id!r} wrote no pseudo label set; pseudo-label runs: {known or 'none'}",
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
    truth_origins: Sequence[str] = EXPERT_BASES,
    classes: Sequence[str] | None = None,
    min_tumour_voxels: int = 1,
    truths: Iterable[ScanTruth] | None = None,
    store: bool = True,
    progress: bool = False,
    scan_ids: Sequence[str] | None = None,
    tumour_free: bool = False,
) -> Evaluation:
    """Evaluate any prediction source on the held-out split (or on ``scan_ids``); store and report it.

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
        scan_ids: evaluate these scans instead of the held-out split (scope ``external``: whole sources
            a model never saw, :func:`workbench.learning.external.evaluate_external`).
        tumour_free: score the tumour classes a scan's protocol names tumour-free as known absent
            (:func:`workbench.learning.metrics.with_tumour_free`).

    Returns:
        The :class:`Evaluation`.

    Raises:
        HarmonizeError: no held-out scan, or no held-out scan with both truth and a prediction.
    """
    started = time.time()
    check_truth_bases(truth_origins)
    scope = "held-out" if scan_ids is None else "external"
    held = held_out_split(ws, fraction, seed) if scan_ids is None else set(scan_ids)
    if not held:
        raise HarmonizeError(
            ws.catalog.path,
            f"no scan is held out (at fraction {fraction} a source needs at least "
            f"{math.ceil(0.5 / fraction) if fraction > 0 else 'infinitely many'} scans); "
            "add scans or use a larger fraction before the split is first stored"
            if scan_ids is None
            else "no scan to evaluate",
        )
    items: list[dict[str, Any]] = []
    unpredicted: list[tuple[str, str]] = []
    evaluated: list[dict[str, str]] = []
    if truths is None:
        scan_truths = list(catalog_truth(ws, sorted(held), truth_origins))
    else:
        scan_truths = sorted((t for t in truths if t.scan_id in held), key=lambda t: t.scan_id)
    if tumour_free:
        scan_truths = [with_tumour_free(t, tumour_free_classes(t.source_id)) for t in scan_truths]
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
            f"{name}: none of the {len(held)} {scope} scans has both expert labels and a prediction "
            + ("(pseudo-label the held-out scans with --all-classes)" if scan_ids is None else ""),
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
        scope=scope,
    )
    if store:
        store_evaluation(
            ws,
            result,
            fraction=fraction,
            seed=seed,
            truth_origins=truth_origins,
            min_tumour_voxels=min_tumour_voxels,
            started=started,
            config={"tumour_free": True} if tumour_free else None,
        )
    return result


def tumour_free_classes(source_id: str) -> tuple[str, ...]:
    """The tumour classes the built-in protocol of ``source_id`` names tumour-free (``tumour_free`` in
    its TOML); none for a source without a built-in protocol.

    Example:
        >>> tumour_free_classes("chaos_ct"), tumour_free_classes("lits")
        (('kidney_tumor', 'liver_tumor', 'pancreas_tumor'), ())
    """
    protocol = all_protocols().get(source_id)
    return () if protocol is None else protocol.tumour_free


def evaluate(
    ws: Workspace,
    run_id: str,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    truth_origins: Sequence[str] = EXPERT_BASES,
    classes: Sequence[str] | None = None,
    min_tumour_voxels: int = 1,
    truths: Iterable[ScanTruth] | None = None,
    store: bool = True,
    progress: bool = False,
    tumour_free: bool = False,
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
        tumour_free=tumour_free,
    )


def store_evaluation(
    ws: Workspace,
    ev: Evaluation,
    *,
    fraction: float,
    seed: int,
    truth_origins: Sequence[str],
    min_tumour_voxels: int,
    started: float,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Record ``ev`` as one ``evaluate`` run: its config, its ``evaluation`` rows, the report folder and
    the summary as the run's metrics; sets ``ev.run_id``.

    Args:
        ws: the workspace.
        ev: the evaluation (its ``facts`` end up in the summary).
        fraction / seed: the held-out split's settings, for the record.
        truth_origins: the truth bases.
        min_tumour_voxels: the detection threshold.
        started: ``time.time()`` at the evaluation's start.
        config: more entries of the run's config (an external evaluation's model and sources).
    """
    ev.run_id = "run-eval-" + uuid.uuid4().hex[:16]
    ws.catalog.start_run(
        ev.run_id,
        "evaluate",
        config={
            "predictions": ev.predictions,
            "tolerance_mm": ev.tolerance_mm,
            "split": {"fraction": fraction, "seed": seed} if ev.scope == "held-out" else None,
            "truth_origins": list(truth_origins) if ev.truth == "catalog" else [],
            "truth": ev.truth,
            "min_tumour_voxels": int(min_tumour_voxels),
            "scope": ev.scope,
            **dict(config or {}),
        },
    )
    ws.catalog.add_evaluation_items(ev.run_id, ev.tolerance_mm, ev.items.to_dict("records"))
    write_report(ev, ws.reports / ev.run_id)
    ws.catalog.finish_run(
        ev.run_id, metrics=ev.summary(), timings={"seconds": round(time.time() - started, 2)}
    )


# ----------------------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table.

    Args:
        df: the table (its columns become the header).

    Returns:
        The Markdown text, floats with 3 decimals, NaN as an en dash.
    """
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_report(ev: Evaluation, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``metrics.csv``, ``detection.csv``, ``items.csv`` and ``summary.json``.

    Args:
        ev: the evaluation; its ``report_dir`` is set to ``out_dir``.
        out_dir: the report folder (created).

    Returns:
        ``out_dir`` as a path.
    """
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
