"""The viewer's geometry: CTs, masks and entropy maps in radiological display order whatever the file
order, slice planes, edge labels, window/level, the best slice of a mask."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.volume import Volume
from workbench import app_data

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
    plane = app_data.view_plane(dv.array, view, index)
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


@pytest.mark.parametrize(("view", "expected"), [("axial", 3), ("coronal", 1), ("sagittal", 6)])
def test_best_slice(view: str, expected: int) -> None:
    m = np.zeros((8, 8, 8), bool)
    m[6, 1, 0:5] = True
    m[0:2, 1, 3] = True
    assert app_data.best_slice(m, view) == expected
    assert app_data.best_slice(np.zeros((4, 4, 4), bool), view) is None


def test_annotate_edges_draws_letters() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    out = app_data.annotate_edges(rgb, app_data.view_labels("axial"))
    assert out[:, :20].any() and out[:, 80:].any() and not out[30:70, 30:70].any()


# ---------------------------------------------------------------------------- entropy maps, display order


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


def test_display_entropy_refuses_another_grid() -> None:
    dv = app_data.to_display(_volume("RAS")[0])
    with pytest.raises(ValueError, match="does not match"):
        app_data.display_entropy(dv, np.zeros((NX, NY, NZ + 1), np.float16))
