"""What is drawn over a slice: class colours, the uncertainty heat map (colours, legend, blending), the
composed slice image, the most uncertain slice near a class, and why a map is missing."""

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


# ----------------------------------------------------------------------------------------- slice images


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


def test_class_colours_are_distinct() -> None:
    colours = {app_data.class_color(n) for n in class_names()}
    assert len(colours) == 32


# ------------------------------------------------------------------------------------ uncertainty map


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
