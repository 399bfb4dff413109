"""The dashboards: the Overview page's counts and attention list, ingest issues, the long-tail, coverage,
co-occurrence and volume tables with their plotly figures, clickable volume outliers, and the catalog
facts the Review page's pickers list (scans, label sets of a scan, present classes).

Every table comes from a named :class:`storage.catalog.Catalog` query; classes are in model order. Plotly
renders a subset of HTML (links, images by style, tags) in trace names, tick labels and hover texts, so
every catalog string in a figure goes through ``escape(..., markdown=False)``; the raw ids stay in
``customdata`` for the click.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench import review
from workbench.review import double_reading, escape

# --------------------------------------------------------------------------------------------- overview


def overview(ws: Workspace) -> dict[str, Any]:
    """What the Overview page shows: ``counts`` (table -> rows), ``sources`` (per source: scans, label
    sets by origin), ``origins`` (label sets per origin), ``runs`` (newest first), ``attention`` (list of
    one-line strings: what needs a person's look), ``demo`` (True for the synthetic demo workspace)."""
    with ws.catalog.session():
        counts = ws.catalog.counts()
        sources = ws.catalog.source_summary()
        origins = ws.catalog.label_sets_per_origin()
        runs = ws.catalog.recent_runs(20)
        known = review.learnt_classes(ws)
        queue = ws.catalog.queue_status_counts(known.held_back)
        held = sum(ws.catalog.held_back_counts(known.held_back).values())
        unlabeled = ws.catalog.unlabeled_scan_count()
        demo = ws.catalog.is_demo()
    issues = counts["ingest_issue"]
    attention = []
    pending, needs = queue["pending"], queue["needs_correction"]
    if pending:
        attention.append(f"{pending} pseudo-label items wait for review (Review page)")
    if held:
        attention.append(
            f"{held} pseudo-label items of classes their model never learnt are held back (Review page: "
            "show them)"
        )
    if needs:
        attention.append(f"{needs} items are marked 'needs correction'")
    if queue["adjudication"]:
        attention.append(f"{queue['adjudication']} double-read items wait for adjudication (Review page)")
    if issues:
        attention.append(f"{issues} files were skipped by ingest (see ingest issues)")
    if unlabeled:
        attention.append(f"{unlabeled} scans have no label set")
    if counts["scan"] and not counts["run"]:
        attention.append("no model run yet: the review queue fills once pseudo-labels exist")
    return {
        "counts": counts,
        "sources": sources,
        "origins": origins,
        "runs": runs,
        "attention": attention,
        "demo": demo,
    }


def ingest_issues(ws: Workspace, limit: int = 200) -> pd.DataFrame:
    """The newest skipped files (source_id, path, problem, seen_at), at most ``limit``, newest first."""
    return ws.catalog.ingest_issues(limit)


# -------------------------------------------------------------------------------------------- long tail


def _html(value: object) -> str:
    """A catalog string as plotly text: HTML shown as text (:func:`workbench.review.escape`)."""
    return escape(value, markdown=False)


def _ordered(df: pd.DataFrame, col: str = "class_name") -> pd.DataFrame:
    order = {n: i for i, n in enumerate(class_names())}
    return df.assign(_o=df[col].map(order)).sort_values(["_o"]).drop(columns="_o")


def annotated_by_source_figure(by_source: pd.DataFrame, log: bool = False) -> go.Figure:
    """Stacked bars: scans that annotate each class, stacked by source (``long_tail(by_source=True)``)."""
    fig = go.Figure()
    classes = class_names()
    for source, g in by_source.groupby("source_id", sort=True):
        g = g.set_index("class_name").reindex(classes)
        fig.add_bar(name=_html(source), x=classes, y=g["annotated"].fillna(0).tolist())
    fig.update_layout(
        barmode="stack",
        title="Annotated scans per class, by source",
        xaxis_title="class",
        yaxis_title="annotated scans",
        height=420,
        margin={"t": 40, "b": 10},
    )
    if log:
        fig.update_yaxes(type="log")
    return fig


def coverage_state_figure(long_tail: pd.DataFrame, log: bool = False) -> go.Figure:
    """Stacked bars per class: annotated present / annotated absent / not annotated scans."""
    df = _ordered(long_tail)
    fig = go.Figure()
    for col, label, color in (
        ("present", "annotated, present", "#2a9d8f"),
        ("absent", "annotated, absent", "#e9c46a"),
        ("not_annotated", "not annotated", "#bbbbbb"),
    ):
        fig.add_bar(name=label, x=df["class_name"].tolist(), y=df[col].tolist(), marker_color=color)
    fig.update_layout(barmode="stack", title="Coverage per class", height=420, margin={"t": 40, "b": 10})
    if log:
        fig.update_yaxes(type="log")
    return fig


def coverage_matrix(by_source: pd.DataFrame) -> pd.DataFrame:
    """source x class fraction of scans that annotate the class (0..1), classes in model order."""
    if by_source.empty:
        return pd.DataFrame(columns=class_names())
    total = by_source.assign(n=by_source[["annotated", "not_annotated"]].sum(axis=1))
    frac = total.assign(f=total["annotated"] / total["n"].where(total["n"] > 0))
    m = frac.pivot_table(index="source_id", columns="class_name", values="f", aggfunc="sum", fill_value=0.0)
    return m.reindex(columns=class_names(), fill_value=0.0)


def heatmap_figure(matrix: pd.DataFrame, title: str, colorbar: str) -> go.Figure:
    """A heat map of a DataFrame (rows x columns)."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(dtype=float),
            x=[_html(c) for c in matrix.columns],
            y=[_html(i) for i in matrix.index],
            colorscale="Viridis",
            colorbar={"title": colorbar},
        )
    )
    fig.update_layout(title=title, height=max(300, 22 * len(matrix.index) + 160), margin={"t": 40})
    return fig


def cooccurrence(ws: Workspace) -> pd.DataFrame:
    """class x class number of scans whose current original labels have BOTH classes present (the
    diagonal is the present count), classes in model order, all 32 x 32."""
    df = ws.catalog.cooccurrence_counts()
    names = class_names()
    m = df.pivot_table(index="a", columns="b", values="n", aggfunc="sum", fill_value=0)
    return m.reindex(index=names, columns=names, fill_value=0).astype(np.int64)


def volume_summary(ws: Workspace, outliers_per_class: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class volume distribution of the current original labels, computed in SQL (no per-scan rows
    leave the database except outliers).

    Returns:
        ``(summary, outliers)``: summary has one row per class with ``n``, ``q1``, ``median``, ``q3``,
        ``lo``/``hi`` (Tukey fences clipped to the data) in mL; outliers lists, per class, up to
        ``outliers_per_class`` scans beyond the fences furthest from the median (``scan_id``,
        ``class_name``, ``volume_ml``, ``label_set_id``).
    """
    summary, outliers = ws.catalog.volume_distribution(outliers_per_class)
    return _ordered(summary).reset_index(drop=True), _ordered(outliers).reset_index(drop=True)


def volume_figure(summary: pd.DataFrame, outliers: pd.DataFrame, log: bool = True) -> go.Figure:
    """Box plot per class from precomputed quartiles, with the outlier scans as points whose
    ``customdata`` is ``[scan_id, class_name]`` (:func:`outlier_from_selection` decodes a click) and whose
    hover shows the scan id as text."""
    fig = go.Figure()
    if not summary.empty:
        fig.add_trace(
            go.Box(
                name="volume",
                x=summary["class_name"].tolist(),
                q1=summary["q1"].tolist(),
                median=summary["median"].tolist(),
                q3=summary["q3"].tolist(),
                lowerfence=summary["lo"].tolist(),
                upperfence=summary["hi"].tolist(),
                boxpoints=False,
                showlegend=False,
            )
        )
    if not outliers.empty:
        fig.add_trace(
            go.Scatter(
                x=outliers["class_name"].tolist(),
                y=outliers["volume_ml"].tolist(),
                mode="markers",
                name="outliers",
                customdata=outliers[["scan_id", "class_name"]].astype(str).values.tolist(),
                text=[_html(s) for s in outliers["scan_id"]],
                hovertemplate="%{text}: %{y:.1f} mL (click to open)",
                marker={"color": "#d62828", "size": 7},
            )
        )
    fig.update_layout(title="Volume per class (mL)", height=420, margin={"t": 40, "b": 10})
    if log:
        fig.update_yaxes(type="log")
    return fig


def outlier_from_selection(event: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The (scan_id, class_name) of the first clicked outlier point in a Streamlit plotly selection event
    (``st.plotly_chart(..., on_select="rerun")``: ``{"selection": {"points": [{"customdata": [scan_id,
    class_name], ...}], "point_indices": [...], "box": [], "lasso": []}}``), or None when no selected
    point carries such customdata (no selection, a click on a box, malformed data)."""
    if not isinstance(event, Mapping):
        return None
    selection = event.get("selection")
    points = selection.get("points") if isinstance(selection, Mapping) else None
    for point in points if isinstance(points, list) else []:
        data = point.get("customdata") if isinstance(point, Mapping) else None
        if (
            isinstance(data, (list, tuple))
            and len(data) == 2
            and all(isinstance(v, str) and v for v in data)
            and data[1] in class_names()
        ):
            return str(data[0]), str(data[1])
    return None


# ------------------------------------------------------------------------------------------ review data


def scan_choices(ws: Workspace, limit: int = 5000) -> list[str]:
    """Scan ids for the viewer's scan picker (sorted, at most ``limit``)."""
    return ws.catalog.scan_ids(limit)


def label_sets_of(ws: Workspace, scan_id: str) -> pd.DataFrame:
    """Label sets of one scan (id, version, origin, author, created_at, notes), newest first."""
    columns = ["id", "version", "origin", "author", "run_id", "parent_id", "created_at", "notes", "mask_key"]
    return ws.catalog.label_sets(scan_id)[columns].iloc[::-1].reset_index(drop=True)


def present_classes(ws: Workspace, label_set_id: str) -> list[str]:
    """Classes with state ``annotated_present`` in a label set, in model order."""
    cov = ws.catalog.coverage(label_set_id)
    return [n for n in class_names() if cov.get(n) == "annotated_present"]


# ------------------------------------------------------------------------------- double reading (#13)


def agreement_table(ws: Workspace) -> pd.DataFrame:
    """Inter-reviewer agreement per class (``workbench.review.double_reading.agreement``), classes in model
    order and the ``all`` row last; empty while no item was read twice."""
    df = double_reading.agreement(ws)
    if df.empty:
        return df
    return pd.concat(
        [_ordered(df[df["class_name"] != "all"]), df[df["class_name"] == "all"]], ignore_index=True
    )


def agreement_figure(table: pd.DataFrame) -> go.Figure:
    """Bars per class: the readers' agreement share on their decisions and, where both corrected, the mean
    inter-reader Dice of their masks (0..1).

    Args:
        table: :func:`agreement_table` without its ``all`` row, or with it (left out here).
    """
    per_class = table[table["class_name"] != "all"]
    names = [_html(n) for n in per_class["class_name"]]
    fig = go.Figure()
    fig.add_bar(x=names, y=per_class["agreement"], name="decision agreement")
    fig.add_bar(x=names, y=per_class["inter_reader_dice"], name="inter-reader Dice (corrections)")
    fig.update_layout(
        title="Double reading: inter-reviewer agreement per class",
        barmode="group",
        yaxis={"range": [0, 1], "title": "agreement / Dice"},
        height=360,
    )
    return fig


def reading_detail(ws: Workspace, label_set_id: str, class_name: str) -> tuple[str, set[str]] | None:
    """Both readings of a double-read item whose readers disagree, for its adjudicator.

    Returns:
        ``("Dr A: accept · Dr B: corrected (inter-reader Dice 0.71)", {"Dr A", "Dr B"})``: the readings and
        the two readers; None for any other item.
    """
    df = double_reading.items(ws, class_name)
    row = df[(df["label_set_id"] == label_set_id) & (df["state"] == "disagreed")]
    if row.empty:
        return None
    r = row.iloc[0]
    dice = "" if pd.isna(r["reading_dice"]) else f" (inter-reader Dice {float(r['reading_dice']):.2f})"
    text = f"{r['reader_a']}: {r['decision_a']} · {r['reader_b']}: {r['decision_b']}{dice}"
    return text, {str(r["reader_a"]), str(r["reader_b"])}
