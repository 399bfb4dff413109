"""The app's pure data functions: orientation of slices, windowing, overlays, tables and figures."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from harmonize.volume import Volume
from storage.workspace import Workspace
from workbench import app_data


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


# ----------------------------------------------------------------------------------------- orientation

# (x, y, z) sizes of the world grid; each affine stores it in a different file voxel order.
NX, NY, NZ = 8, 6, 4
AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LPS": np.array([[-1.0, 0, 0, NX - 1], [0, -1.0, 0, NY - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]]),
    # file axes (i, j, k) = (z down, y down, x down): kits19-like 'IPL'
    "IPL": np.array([[0, 0, -1.0, NX - 1], [0, -1.0, 0, NY - 1], [-1.0, 0, 0, NZ - 1], [0, 0, 0, 1]]),
}


def _volume(code: str) -> tuple[Volume, dict[str, tuple[int, int, int]]]:
    """A volume whose voxels hold world x*100 + y*10 + z, stored in the voxel order of ``code``."""
    affine = AFFINES[code]
    inv = np.linalg.inv(affine)
    shape = np.abs(inv[:3, :3] @ np.array([NX, NY, NZ])).round().astype(int)
    arr = np.zeros(tuple(shape), np.float32)
    for i, j, k in np.ndindex(*arr.shape):
        x, y, z, _ = affine @ np.array([i, j, k, 1.0])
        arr[i, j, k] = round(x) * 100 + round(y) * 10 + round(z)
    return Volume(arr, affine), {}


@pytest.mark.parametrize("code", list(AFFINES))
def test_display_volume_is_ras_whatever_the_file_order(code: str) -> None:
    vol, _ = _volume(code)
    dv = app_data.to_display(vol)
    assert dv.array.shape == (NX, NY, NZ)
    x, y, z = np.meshgrid(np.arange(NX), np.arange(NY), np.arange(NZ), indexing="ij")
    assert np.array_equal(dv.array, x * 100 + y * 10 + z)
    for xyz in [(0, 0, 0), (7, 5, 3), (2, 4, 1)]:
        ijk = dv.to_file_index(xyz)
        assert vol.array[ijk] == xyz[0] * 100 + xyz[1] * 10 + xyz[2]


@pytest.mark.parametrize("code", list(AFFINES))
@pytest.mark.parametrize(
    ("view", "index", "top_left", "bottom_right"),
    [
        # axial: patient Right (max x) on the image's left, Anterior (max y) at the top
        ("axial", 2, (7, 5, 2), (0, 0, 2)),
        # coronal: Right on the left, Superior (max z) at the top
        ("coronal", 3, (7, 3, 3), (0, 3, 0)),
        # sagittal: Anterior on the left, Superior at the top
        ("sagittal", 4, (4, 5, 3), (4, 0, 0)),
    ],
)
def test_planes_follow_the_radiological_convention(
    code: str, view: str, index: int, top_left: tuple[int, int, int], bottom_right: tuple[int, int, int]
) -> None:
    dv = app_data.to_display(_volume(code)[0])
    plane = app_data._plane(dv.array, view, index)
    assert plane[0, 0] == top_left[0] * 100 + top_left[1] * 10 + top_left[2]
    assert plane[-1, -1] == bottom_right[0] * 100 + bottom_right[1] * 10 + bottom_right[2]
    row, col = 1, 2
    assert dv.array[app_data.plane_to_display(dv, view, index, row, col)] == plane[row, col]


@pytest.mark.parametrize(
    ("view", "edges"),
    [("axial", "RLAP"), ("coronal", "RLSI"), ("sagittal", "APSI")],
)
def test_view_labels(view: str, edges: str) -> None:
    labels = app_data.view_labels(view)
    assert "".join(labels[e] for e in ("left", "right", "top", "bottom")) == edges


@pytest.mark.parametrize(
    ("hu", "width", "level", "expected"),
    [
        (-1000, 400, 40, 0),
        (40, 400, 40, 127),
        (240, 400, 40, 255),
        (1000, 400, 40, 255),
        (-600, 1500, -600, 127),
    ],
)
def test_apply_window(hu: float, width: float, level: float, expected: int) -> None:
    assert int(app_data.apply_window(np.array([hu]), width, level)[0]) == expected


def test_slice_image_scales_to_physical_aspect_and_colours_overlays() -> None:
    arr = np.full((10, 20, 5), 40.0, np.float32)  # x 10 vox at 2 mm, y 20 vox at 1 mm
    dv = app_data.to_display(Volume(arr, np.diag([2.0, 1.0, 5.0, 1.0])))
    mask = np.zeros((10, 20, 5), bool)
    mask[:, :, 2] = True
    rgb = app_data.slice_image(dv, "axial", 2, 400, 40, {"liver": mask}, opacity=1.0)
    assert rgb.shape[0] == rgb.shape[1]  # 20 mm x 20 mm
    assert min(rgb.shape[:2]) >= app_data.MIN_DISPLAY_PX
    assert tuple(rgb[5, 5]) == app_data.class_color("liver")
    grey = app_data.slice_image(dv, "axial", 1, 400, 40, {"liver": mask}, opacity=1.0)
    assert tuple(grey[5, 5]) == (127, 127, 127)
    coronal = app_data.slice_image(dv, "coronal", 0, 400, 40)
    assert coronal.shape[0] / coronal.shape[1] == pytest.approx(25 / 20, rel=0.02)  # 5x5 mm by 10x2 mm


@pytest.mark.parametrize(("view", "expected"), [("axial", 3), ("coronal", 1), ("sagittal", 6)])
def test_best_slice(view: str, expected: int) -> None:
    m = np.zeros((8, 8, 8), bool)
    m[6, 1, 0:5] = True
    m[0:2, 1, 3] = True
    assert app_data.best_slice(m, view) == expected
    assert app_data.best_slice(np.zeros((4, 4, 4), bool), view) is None


def test_class_colours_are_distinct() -> None:
    colours = {app_data.class_color(n) for n in class_names()}
    assert len(colours) == 32


def test_annotate_edges_draws_letters() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    out = app_data.annotate_edges(rgb, app_data.view_labels("axial"))
    assert out[:, :20].any() and out[:, 80:].any() and not out[30:70, 30:70].any()


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


# ------------------------------------------------------------------------------------ uncertainty map


def _file_order(code: str, world: np.ndarray) -> np.ndarray:
    """``world`` ((x, y, z) on the NX x NY x NZ grid) stored in the file voxel order of ``code``."""
    vol, _ = _volume(code)
    out = np.zeros(vol.array.shape, world.dtype)
    for i, j, k in np.ndindex(*out.shape):
        x, y, z, _ = AFFINES[code] @ np.array([i, j, k, 1.0])
        out[i, j, k] = world[round(x), round(y), round(z)]
    return out


def _entropy_world() -> tuple[np.ndarray, np.ndarray]:
    """An entropy map and a class region in world (x, y, z) order: inside the region two uncertain voxels,
    (5, 3, 2) at 1 bit and (4, 2, 1) at 0.6 bit; far outside it a 2 x 2 x 1 block at 1 bit at x 0..1,
    y 0..1, z 0, which wins every view when the whole map counts."""
    entropy = np.zeros((NX, NY, NZ), np.float32)
    entropy[5, 3, 2] = 1.0
    entropy[4, 2, 1] = 0.6
    entropy[0:2, 0:2, 0] = 1.0
    region = np.zeros((NX, NY, NZ), bool)
    region[4:7, 2:4, 1:3] = True
    return entropy, region


@pytest.mark.parametrize("code", list(AFFINES))
@pytest.mark.parametrize(
    ("view", "in_region", "whole_map"),
    [("axial", 2, 0), ("coronal", 3, 0), ("sagittal", 5, 0)],
)
def test_most_uncertain_slice_in_display_order(code: str, view: str, in_region: int, whole_map: int) -> None:
    vol, _ = _volume(code)
    dv = app_data.to_display(vol)
    entropy_w, region_w = _entropy_world()
    entropy = app_data.display_entropy(dv, _file_order(code, entropy_w))
    region = dv.mask(_file_order(code, region_w))
    assert entropy.shape == (NX, NY, NZ) and entropy.dtype == np.float16
    assert np.array_equal(entropy, entropy_w.astype(np.float16))  # display index = world coordinate here
    assert app_data.most_uncertain_slice(entropy, view, region) == in_region
    assert app_data.most_uncertain_slice(entropy, view) == whole_map
    assert app_data.most_uncertain_slice(entropy, view, np.zeros_like(region)) == whole_map
    assert app_data.uncertainty_slice_hint(entropy, view, region) == in_region
    assert app_data.uncertainty_slice_hint(None, view, region) is None
    assert app_data.most_uncertain_slice(np.zeros_like(entropy), view) is None


@pytest.mark.parametrize("view", app_data.VIEWS)
def test_the_region_border_counts_but_not_beyond(view: str) -> None:
    region = np.zeros((9, 9, 9), bool)
    region[4, 4, 4] = True
    entropy = np.zeros((9, 9, 9), np.float32)
    entropy[4, 4, 5] = 0.5  # face neighbour: the one-voxel border
    entropy[4, 5, 5] = 0.9  # edge neighbour: outside the 6-connected border
    entropy[4, 4, 7] = 1.0  # two voxels away
    expected = {"axial": 5, "coronal": 4, "sagittal": 4}[view]
    assert app_data.most_uncertain_slice(entropy, view, region) == expected


def test_display_entropy_refuses_another_grid() -> None:
    dv = app_data.to_display(_volume("RAS")[0])
    with pytest.raises(ValueError, match="does not match"):
        app_data.display_entropy(dv, np.zeros((NX, NY, NZ + 1), np.float16))


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        (0.0, (110, 0, 0)),  # below the floor: the end colour (never drawn, see the overlay)
        (app_data.ENTROPY_FLOOR, (110, 0, 0)),
        (0.4, (220, 40, 0)),
        (0.55, (237.5, 100, 0)),  # halfway between the 0.4 and 0.7 stops
        (1.0, (255, 255, 210)),
    ],
)
def test_entropy_colors_follow_the_stops(bits: float, expected: tuple[float, float, float]) -> None:
    assert app_data.entropy_colors(np.array([bits]))[0].tolist() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("opacity", [0.0, 0.5, 1.0])
def test_uncertainty_overlay_blends_above_the_floor(opacity: float) -> None:
    rgb = np.full((1, 3, 3), 100, np.uint8)
    plane = np.array([[0.05, 0.4, 1.0]], np.float32)
    out = app_data.uncertainty_overlay(rgb, plane, opacity)
    assert out[0, 0].tolist() == [100, 100, 100]
    for col, colour in ((1, (220, 40, 0)), (2, (255, 255, 210))):
        expected = [(1 - opacity) * 100 + opacity * c for c in colour]
        assert out[0, col].tolist() == pytest.approx(expected)
    assert rgb[0, 1].tolist() == [100, 100, 100]  # the input is not changed


def test_slice_image_draws_the_heat_overlay_on_top() -> None:
    arr = np.full((10, 10, 5), 40.0, np.float32)
    dv = app_data.to_display(Volume(arr, np.eye(4)))
    mask = np.ones((10, 10, 5), bool)
    entropy = np.zeros((10, 10, 5), np.float16)
    entropy[:, :, 2] = 1.0
    hot = app_data.slice_image(dv, "axial", 2, 400, 40, {"liver": mask}, 1.0, entropy, 1.0)
    assert tuple(hot[5, 5]) == (255, 255, 210)
    cold = app_data.slice_image(dv, "axial", 1, 400, 40, {"liver": mask}, 1.0, entropy, 1.0)
    assert tuple(cold[5, 5]) == app_data.class_color("liver")


def test_entropy_legend_runs_from_the_floor_to_one_bit() -> None:
    bar = app_data.entropy_legend(width=50, height=4)
    assert bar.shape == (4, 50, 3) and bar.dtype == np.uint8
    assert tuple(bar[0, 0]) == (110, 0, 0) and tuple(bar[3, -1]) == (255, 255, 210)


def test_uncertainty_unavailable_says_why(ws: Workspace) -> None:
    from storage.maps import write_uncertainty_map

    scan_id = "btcv:demo000"
    assert "pseudo-labelling run" in str(app_data.uncertainty_unavailable(ws, None, scan_id))
    assert "run-x wrote none" in str(app_data.uncertainty_unavailable(ws, "run-x", scan_id))
    write_uncertainty_map(ws, "run-x", scan_id, np.zeros((2, 2, 2)), np.eye(4), ["liver"])
    assert app_data.uncertainty_unavailable(ws, "run-x", scan_id) is None


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
