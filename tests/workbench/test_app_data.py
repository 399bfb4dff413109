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
