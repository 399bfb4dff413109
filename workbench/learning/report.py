"""The paper's tables recomputed on the user's catalog, as one self-contained HTML file.

``workbench report MODEL [--against MODEL ...] OUT.html`` reads back the ``evaluate`` runs of each model
(held-out ones: ``workbench evaluate RUN`` of a pseudo-label run of that model; external ones:
``workbench evaluate MODEL --external SOURCE``) and writes:

* **Dice per class and source**: each evaluation's per-source and pooled (``all``) per-class Dice / NSD,
  with n (scored scan x class items) and the Dice over scans whose truth has the class;
* **tumour detection**: patient-level sensitivity (detected / tumour scans) and specificity (true
  negatives / tumour-free scans; CHAOS and Pancreas-CT patients count as tumour-free in external
  evaluations, ``Protocol.tumour_free``);
* **external sets**: the pooled per-class Dice of each external evaluation, with its sources;
* **efficiency**: GFLOPs per 96^3 window (``workbench.model.flops``) and seconds per CT against the mean
  Dice, a table and two plotly scatters;
* **fine-tuned against from scratch**: evaluations of checkpoints this catalog trained, by whether their
  training run's config names an ``init`` checkpoint.

Every number is the one the evaluation stored (the run's summary, which ``evaluate`` prints), formatted as
``evaluate`` prints it (3 decimals); every number has its n. plotly.js is embedded once, inline; the page
loads nothing from the network (no ``<script src>``, no stylesheet link, no font).

Example:
    >>> write_report(Workspace.open("ws"), "release-unet", "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harmonize.errors import HarmonizeError
from storage.files import atomic_write_text, file_sha256
from storage.workspace import Workspace
from workbench.learning.metrics import ALL_SOURCES

#: Table ids of the report, in page order (the tests and the browser test look for them).
TABLES = ("models", "dice", "detection", "external", "efficiency", "transfer")


@dataclass(frozen=True)
class ReportModel:
    """A model of the report: its name, identity and file (None when the file is not at hand)."""

    name: str
    sha256: str
    kind: str
    backbone: str
    file: Path | None


@dataclass
class StoredEvaluation:
    """One finished ``evaluate`` run, read back.

    Args:
        run_id: the run.
        started_at: when it ran.
        scope: ``held-out`` or ``external``.
        model_sha256: the evaluated model's sha256 ('' when unknown).
        summary: the stored summary (``Evaluation.summary()``).
        config: the stored config.
        seconds_per_scan / timed_scans: seconds per CT and how many CTs were timed (None / 0: unknown).
    """

    run_id: str
    started_at: str
    scope: str
    model_sha256: str
    summary: dict[str, Any]
    config: dict[str, Any]
    seconds_per_scan: float | None = None
    timed_scans: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int:
        """Classes the mean Dice averages over."""
        return len(self.summary.get("by_class", {}))


def resolve_report_model(ws: Workspace, ref: str) -> ReportModel:
    """A registered model (name or sha256) or a model file, as a :class:`ReportModel`.

    Raises:
        HarmonizeError: neither (the registered names are listed).
    """
    row = ws.catalog.model(ref)
    if row is not None:
        file = ws.root / str(row["file"])
        return ReportModel(str(row["name"]), str(row["sha256"]), str(row["kind"]), str(row["backbone"]), file)
    path = Path(ref)
    if not path.is_file():
        names = ws.catalog.models()["name"].tolist()
        raise HarmonizeError(
            path,
            "no registered model of that name and no such file (registered: "
            f"{', '.join(names) or 'none; see `workbench import-model`'})",
        )
    return ReportModel(path.name, file_sha256(path), "file", "", path)


def _json(text: Any) -> dict[str, Any]:
    return dict(json.loads(text)) if isinstance(text, str) and text else {}


def stored_evaluations(ws: Workspace) -> list[StoredEvaluation]:
    """Every finished evaluation of the catalog with the model it evaluated, newest first.

    A held-out evaluation's model is the checkpoint of the pseudo-label run it scored (its seconds per CT
    that run's mean); an external one names its model and timed its scans itself.
    """
    out = []
    for r in ws.catalog.evaluation_runs().to_dict("records"):
        config, summary = _json(r["config"]), _json(r["metrics"])
        scope = str(config.get("scope", "held-out"))
        ev = StoredEvaluation(str(r["id"]), str(r["started_at"]), scope, "", summary, config)
        if scope == "external":
            ev.model_sha256 = str((config.get("model") or {}).get("sha256", ""))
            ev.seconds_per_scan = summary.get("seconds_per_scan")
            ev.timed_scans = int(summary.get("timed_scans") or 0)
            ev.sources = [str(s) for s in config.get("external_sources", [])]
        else:
            run = ws.catalog.run_row(str(config.get("predictions", "")))
            if run is not None:
                ev.model_sha256 = str(run.get("checkpoint_sha256") or "")
                timings, metrics = _json(run.get("timings")), _json(run.get("metrics"))
                ev.seconds_per_scan = timings.get("mean_scan_s")
                ev.timed_scans = int(metrics.get("done") or 0)
            ev.sources = sorted(summary.get("by_source", {}))
        out.append(ev)
    return out[::-1]


# --------------------------------------------------------------------------------------- tables


def fmt(value: Any) -> str:
    """A number as ``evaluate`` prints it: floats with 3 decimals, NaN / None as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _label(ev: StoredEvaluation) -> str:
    return f"{ev.run_id} ({ev.scope}{': ' + ', '.join(ev.sources) if ev.scope == 'external' else ''})"


def dice_table(model: ReportModel, evaluations: Sequence[StoredEvaluation]) -> pd.DataFrame:
    """Per evaluation, per source (``all`` pooled first) and class: n, Dice, NSD, Dice over present."""
    rows = []
    for ev in evaluations:
        groups = [(ALL_SOURCES, ev.summary.get("by_class", {}))]
        groups += sorted(ev.summary.get("by_source", {}).items())
        for source, by_class in groups:
            for name, m in by_class.items():
                rows.append(
                    {
                        "model": model.name,
                        "evaluation": _label(ev),
                        "source": source,
                        "class": name,
                        "n": m.get("n"),
                        "Dice": fmt(m.get("dice")),
                        "NSD": fmt(m.get("nsd")),
                        "n present": m.get("n_present"),
                        "Dice present": fmt(m.get("dice_present")),
                    }
                )
    return pd.DataFrame(rows)


def detection_rows(model: ReportModel, evaluations: Sequence[StoredEvaluation]) -> pd.DataFrame:
    """Per evaluation, source and tumour class: sensitivity and specificity with their counts."""
    rows = []
    for ev in evaluations:
        for d in ev.summary.get("detection", {}).values():
            tumour_free, fp = int(d["tumour_free"]), int(d["false_positives"])
            rows.append(
                {
                    "model": model.name,
                    "evaluation": _label(ev),
                    "source": d["source_id"],
                    "class": d["class_name"],
                    "sensitivity": fmt(d.get("sensitivity")),
                    "detected / tumour scans": f"{int(d['detected'])}/{int(d['tumour_scans'])}",
                    "specificity": fmt(d.get("specificity")),
                    "true negatives / tumour-free": f"{tumour_free - fp}/{tumour_free}",
                    "excluded scans": int(d["excluded"]),
                }
            )
    return pd.DataFrame(rows)


def external_table(model: ReportModel, evaluations: Sequence[StoredEvaluation]) -> pd.DataFrame:
    """Per external evaluation, the pooled per-class Dice / NSD over its sources, and the mean."""
    rows = []
    for ev in evaluations:
        if ev.scope != "external":
            continue
        base = {"model": model.name, "evaluation": ev.run_id, "sources": ", ".join(ev.sources)}
        for name, m in ev.summary.get("by_class", {}).items():
            rows.append(
                {**base, "class": name, "n": m.get("n"), "Dice": fmt(m.get("dice")), "NSD": fmt(m.get("nsd"))}
            )
        rows.append(
            {
                **base,
                "class": "mean over classes",
                "n": f"{ev.classes} classes",
                "Dice": fmt(ev.summary.get("mean_dice")),
                "NSD": fmt(ev.summary.get("mean_nsd")),
            }
        )
    return pd.DataFrame(rows)


def efficiency_table(
    model: ReportModel, evaluations: Sequence[StoredEvaluation], flops: int | None
) -> pd.DataFrame:
    """Per evaluation: GFLOPs per 96^3 window, seconds per CT (n timed CTs), mean Dice (n classes, items)."""
    rows = []
    for ev in evaluations:
        counted = ev.summary.get("flops_per_window", flops)
        rows.append(
            {
                "model": model.name,
                "evaluation": _label(ev),
                "GFLOPs per 96^3 window": "–" if counted is None else f"{float(counted) / 1e9:.1f}",
                "seconds per CT": "–" if ev.seconds_per_scan is None else f"{float(ev.seconds_per_scan):.2f}",
                "CTs timed": ev.timed_scans,
                "mean Dice": fmt(ev.summary.get("mean_dice")),
                "classes": ev.classes,
                "items": ev.summary.get("items"),
            }
        )
    return pd.DataFrame(rows)


def transfer_table(ws: Workspace, evaluations: Sequence[StoredEvaluation]) -> pd.DataFrame:
    """Evaluations of checkpoints this catalog trained, with how their training started (``init``)."""
    rows = []
    for ev in evaluations:
        run = ws.catalog.training_run_of(ev.model_sha256) if ev.model_sha256 else None
        if run is None:
            continue
        init = str(_json(run.get("config")).get("init") or "")
        rows.append(
            {
                "checkpoint": ev.model_sha256[:12],
                "training run": str(run["id"]),
                "start": f"fine-tuned from {init[:12]}" if init else "from scratch",
                "evaluation": _label(ev),
                "mean Dice": fmt(ev.summary.get("mean_dice")),
                "classes": ev.classes,
                "scans": ev.summary.get("evaluated_scans"),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- page


def model_flops(model: ReportModel) -> int | None:
    """FLOPs per 96^3 window of the model's file (None when the file is not at hand)."""
    if model.file is None or not model.file.is_file():
        return None
    from workbench.model.flops import window_flops
    from workbench.model.registry import read_model_file

    backbone = model.backbone if model.kind == "release" else None
    return window_flops(read_model_file(model.file, backbone=backbone).model)


@dataclass
class ReportData:
    """The report's tables (:data:`TABLES`) and the points of its scatters."""

    models: list[ReportModel]
    tables: dict[str, pd.DataFrame]
    points: pd.DataFrame

    def lines(self, path: Path) -> list[str]:
        """The CLI's summary of the written report: the file and the rows of each table."""
        counts = ", ".join(f"{t} {len(df)}" for t, df in self.tables.items())
        return [f"report: {path} (rows: {counts})"]


def collect(ws: Workspace, model: str, against: Sequence[str] = ()) -> ReportData:
    """Read every evaluation of the models back and build the report's tables.

    Args:
        ws: the workspace.
        model: the report's model (registered name / sha256, or a file).
        against: models to compare with.

    Returns:
        :class:`ReportData`.

    Raises:
        HarmonizeError: a model that is neither registered nor a file.
    """
    models = [resolve_report_model(ws, m) for m in dict.fromkeys([model, *against])]
    evaluations = stored_evaluations(ws)
    parts: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES if t not in ("models", "transfer")}
    summary, points = [], []
    for m in models:
        mine = [e for e in evaluations if e.model_sha256 == m.sha256]
        flops = None if all("flops_per_window" in e.summary for e in mine) and mine else model_flops(m)
        parts["dice"].append(dice_table(m, mine))
        parts["detection"].append(detection_rows(m, mine))
        parts["external"].append(external_table(m, mine))
        eff = efficiency_table(m, mine, flops)
        parts["efficiency"].append(eff)
        summary.append(
            {
                "model": m.name,
                "kind": m.kind,
                "backbone": m.backbone or "–",
                "sha256": m.sha256[:12],
                "evaluations": len(mine),
                "held-out": sum(e.scope == "held-out" for e in mine),
                "external": sum(e.scope == "external" for e in mine),
            }
        )
        for ev, row in zip(mine, eff.to_dict("records")):
            points.append(
                {
                    "model": m.name,
                    "evaluation": ev.run_id,
                    "gflops": _number(row["GFLOPs per 96^3 window"]),
                    "seconds": _number(row["seconds per CT"]),
                    "mean_dice": _number(row["mean Dice"]),
                }
            )
    tables = {"models": pd.DataFrame(summary)}
    tables.update({k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in parts.items()})
    tables["transfer"] = transfer_table(ws, evaluations)
    return ReportData(models, {t: tables[t] for t in TABLES}, pd.DataFrame(points))


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f2f2f2; }
p.note { color: #555; max-width: 60em; }
"""

_NOTES = {
    "models": "The models of this report; evaluations are the catalog's finished evaluate runs of each.",
    "dice": "Per evaluation, per source (all = pooled) and class: n scored scan x class items, Dice and NSD "
    "(truth absent and nothing predicted = 1, exactly one empty = 0), and Dice over the n present items.",
    "detection": "Patient level: a tumour scan is detected when any voxel of the class is predicted; "
    "specificity counts tumour-free scans (annotated absent, or a patient of a tumour-free cohort: CHAOS, "
    "Pancreas-CT in external evaluations) without any predicted voxel.",
    "external": "Whole sources the model was never trained on (its training record refuses the others), "
    "pooled per class; the last row of each is the macro mean over its classes.",
    "efficiency": "FLOPs of one 96^3 window (torch's counter, a multiply-add is 2 FLOPs) and seconds per CT "
    "(read, inference and post-processing) against the evaluation's mean Dice over classes.",
    "transfer": "Checkpoints this catalog trained, by how their training run started: fine-tuned from a "
    "checkpoint (its config names init) or from scratch.",
}

_TITLES = {
    "models": "Models",
    "dice": "Dice per class and source",
    "detection": "Tumour detection (patient level)",
    "external": "External sets",
    "efficiency": "Efficiency: FLOPs and time against Dice",
    "transfer": "Fine-tuned against from scratch",
}


def _table_html(name: str, df: pd.DataFrame) -> str:
    if df.empty:
        return f'<p class="empty" id="{name}-empty">No evaluation in this catalog fills this table yet.</p>'
    return df.to_html(index=False, border=0, table_id=name, escape=True, na_rep="–")


def _transfer_note(df: pd.DataFrame) -> str:
    if df.empty:
        return ""
    kinds = {str(s).startswith("fine-tuned") for s in df["start"]}
    if len(kinds) == 2:
        return ""
    which = "fine-tuned" if True in kinds else "from-scratch"
    return f'<p class="note">Only {which} checkpoints are evaluated in this catalog: no pair to compare.</p>'


def _figures(points: pd.DataFrame) -> list[str]:
    """Two scatters (GFLOPs and seconds per CT against mean Dice), plotly.js inline in the first only."""
    import plotly.graph_objects as go
    import plotly.io as pio

    out = []
    for i, (column, title) in enumerate(
        (("gflops", "GFLOPs per 96^3 window"), ("seconds", "seconds per CT"))
    ):
        fig = go.Figure()
        for model, g in points.groupby("model", sort=False) if len(points) else []:
            fig.add_trace(
                go.Scatter(
                    x=g[column], y=g["mean_dice"], mode="markers", name=str(model), text=g["evaluation"],
                    marker={"size": 11},
                )
            )  # fmt: skip
        fig.update_layout(
            title=f"{title} against mean Dice", xaxis_title=title, yaxis_title="mean Dice", height=420
        )
        out.append(
            pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=i == 0,  # the library once, inline
                div_id=f"scatter-{column}",
                config={"displaylogo": False},
            )
        )
    return out


def render(data: ReportData, title: str) -> str:
    """The report's HTML page (self-contained).

    Raises:
        HarmonizeError: plotly is not installed.
    """
    try:
        figures = _figures(data.points)
    except ImportError as e:
        raise HarmonizeError("plotly", "the report needs plotly (pip install 'workbench[app]')") from e
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.append(
        f'<p class="note">Written {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} from the catalog\'s '
        "evaluate runs; every number is the one its evaluation stored and printed.</p>"
    )
    for name in TABLES:
        body.append(f'<h2 id="{name}-title">{_TITLES[name]}</h2>')
        body.append(f'<p class="note">{html.escape(_NOTES[name])}</p>')
        body.append(_table_html(name, data.tables[name]))
        if name == "efficiency":
            body += [f'<div class="figure">{f}</div>' for f in figures]
        if name == "transfer":
            body.append(_transfer_note(data.tables[name]))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def save_report(data: ReportData, out: str | Path) -> Path:
    """Render ``data`` and write it to ``out`` atomically (its folder is created).

    Raises:
        HarmonizeError: plotly missing.
    """
    names = ", ".join(m.name for m in data.models)
    page = render(data, f"Universal Model report: {names}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path


def write_report(ws: Workspace, model: str, out: str | Path, against: Sequence[str] = ()) -> Path:
    """Write the HTML report of ``model`` (and ``against``) to ``out``: :func:`collect`, then
    :func:`save_report`.

    Args:
        ws: the workspace.
        model: a registered model's name / sha256, or a model file.
        out: the HTML file.
        against: models to compare with.

    Returns:
        ``out`` as a path.

    Raises:
        HarmonizeError: an unknown model, plotly missing.
    """
    return save_report(collect(ws, model, against), out)


#: Where the demo writes its report, under the workspace's ``reports/``.
DEMO_REPORT = "demo_report.html"


def report_line(ws: Workspace, model: str | Path, against: Sequence[str | Path] = ()) -> str:
    """Write the report of ``model`` against ``against`` to ``<workspace>/reports/demo_report.html`` and
    say so in one line (the demo's last line); without plotly, the line says what is missing instead.

    Args:
        ws: the workspace.
        model / against: registered model names or model files (the demo's round checkpoints).

    Returns:
        ``report: <path> (rows: ...)``, or ``report not written: ...``.
    """
    try:
        data = collect(ws, str(model), [str(a) for a in against])
        path = save_report(data, ws.reports / DEMO_REPORT)
    except HarmonizeError as e:
        return f"report not written: {e}"
    return data.lines(path)[0] + f"; `workbench report {model} OUT.html` writes it again"
