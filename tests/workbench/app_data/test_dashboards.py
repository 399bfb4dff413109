"""The dashboards: overview counts and attention, long-tail / coverage / co-occurrence / volume tables
and figures, clickable outliers."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench import app_data


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


# ------------------------------------------------------------------------------------- tables, figures


def test_overview_counts_and_attention(ws: Workspace) -> None:
    data = app_data.overview(ws)
    assert data["counts"]["scan"] == 9 and data["demo"] is True
    assert data["sources"]["scans"].sum() == 9
    assert data["origins"].set_index("origin")["label_sets"].to_dict() == {"original": 9}
    assert any("no model run" in line for line in data["attention"])


def test_long_tail_figures_carry_the_catalog_counts(ws: Workspace) -> None:
    by_source = ws.catalog.long_tail(by_source=True)
    fig = app_data.annotated_by_source_figure(by_source, log=True)
    assert fig.layout.yaxis.type == "log"
    assert {t.name for t in fig.data} == set(by_source["source_id"])
    stacked = np.sum([np.nan_to_num(np.array(t.y, float)) for t in fig.data], axis=0)
    expected = by_source.groupby("class_name")["annotated"].sum().reindex(class_names(), fill_value=0)
    assert stacked.tolist() == expected.astype(float).tolist()
    states = app_data.coverage_state_figure(ws.catalog.long_tail())
    assert [t.name for t in states.data] == ["annotated, present", "annotated, absent", "not annotated"]
    m = app_data.coverage_matrix(by_source)
    assert m.loc["kits23", "kidney_tumor"] == 1.0 and m.loc["kits23", "liver"] == 0.0


def test_cooccurrence_diagonal_is_the_present_count(ws: Workspace) -> None:
    co = app_data.cooccurrence(ws)
    present = ws.catalog.long_tail().set_index("class_name")["present"].reindex(class_names(), fill_value=0)
    assert np.diag(co.to_numpy()).tolist() == present.tolist()
    assert (co.to_numpy() == co.to_numpy().T).all()
    assert co.loc["kidney_left", "kidney_tumor"] >= 1  # the KiTS phantom has both


def test_volume_summary_matches_pandas_quantiles(ws: Workspace) -> None:
    summary, outliers = app_data.volume_summary(ws)
    raw = ws.catalog.query("SELECT class_name, volume_ml FROM class_stats")
    for row in summary.itertuples():
        v = raw[raw["class_name"] == row.class_name]["volume_ml"]
        assert row.n == len(v)
        assert row.median == pytest.approx(v.median())
        assert row.q1 == pytest.approx(v.quantile(0.25)) and row.q3 == pytest.approx(v.quantile(0.75))
    assert set(outliers.columns) >= {"scan_id", "class_name", "volume_ml"}
    fig = app_data.volume_figure(summary, outliers)
    assert fig.data[0].type == "box"


def test_safe_name() -> None:
    assert app_data.safe_name("kits23:00001") == "kits23_00001"
    assert app_data.safe_name("../..") == "case"


# ---------------------------------------------------------------------------------- clickable outliers


def _event(points: list[dict[str, object]]) -> dict[str, object]:
    """A selection event shaped like Streamlit's ``PlotlyState`` for a click."""
    return {
        "selection": {
            "points": points,
            "point_indices": [p.get("point_index", 0) for p in points],
            "box": [],
            "lasso": [],
        }
    }


POINT = {"curve_number": 1, "point_number": 2, "point_index": 2, "x": "liver", "y": 3200.0}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_event([{**POINT, "customdata": ["lits:demo000", "liver"]}]), ("lits:demo000", "liver")),
        # a click on the box trace first (no customdata), then an outlier
        (
            _event([{"curve_number": 0, "x": "liver"}, {**POINT, "customdata": ["a:1", "spleen"]}]),
            ("a:1", "spleen"),
        ),
        (_event([]), None),
        (_event([{"curve_number": 0, "point_index": 0, "x": "liver", "y": 1.0}]), None),
        (_event([{**POINT, "customdata": ["a:1", "not_a_class"]}]), None),
        (_event([{**POINT, "customdata": ["a:1"]}]), None),
        (_event([{**POINT, "customdata": 7}]), None),
        ({"selection": {}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_outlier_from_selection(event: dict[str, object] | None, expected: tuple[str, str] | None) -> None:
    assert app_data.outlier_from_selection(event) == expected


def test_outlier_from_a_streamlit_plotly_state() -> None:
    import json

    from streamlit.elements.plotly_chart import PlotlyChartSelectionSerde

    state = PlotlyChartSelectionSerde().deserialize(
        json.dumps(_event([{**POINT, "customdata": ["kits23:demo000", "kidney_left"]}]))
    )
    assert app_data.outlier_from_selection(state) == ("kits23:demo000", "kidney_left")
    assert app_data.outlier_from_selection(PlotlyChartSelectionSerde().deserialize(None)) is None


def test_volume_figure_points_carry_scan_and_class() -> None:
    import pandas as pd

    summary = pd.DataFrame(
        {
            "class_name": ["liver"],
            "n": [5],
            "q1": [1.0],
            "median": [2.0],
            "q3": [3.0],
            "lo": [1.0],
            "hi": [6.0],
        }
    )
    outliers = pd.DataFrame(
        {"scan_id": ["a:1", "b:2"], "class_name": ["liver", "liver"], "volume_ml": [90.0, 0.1]}
    )
    fig = app_data.volume_figure(summary, outliers)
    points = fig.data[1]
    assert [list(c) for c in points.customdata] == [["a:1", "liver"], ["b:2", "liver"]]
    click = _event([{"curve_number": 1, "point_index": 1, "customdata": list(points.customdata[1])}])
    assert app_data.outlier_from_selection(click) == ("b:2", "liver")
