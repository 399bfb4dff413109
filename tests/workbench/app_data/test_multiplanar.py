"""The multiplanar viewer's data (``workbench.app_data.multiplanar``): the encodings the browser reads,
the 3D view's projections, the payload store with its preload and bound, and edits from display voxels."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.volume import Volume
from workbench import app_data, review
from workbench.app_data import multiplanar

AFFINES = {
    "RAS": np.diag([0.8, 0.9, 2.5, 1.0]),
    "LPS": np.diag([-0.8, -0.9, 2.5, 1.0]),
    "IPL": np.array([[0, 0, -0.8, 9.0], [0, -0.9, 0, 7.0], [-2.5, 0, 0, 5.0], [0, 0, 0, 1]]),
}


def _dv(code: str, shape: tuple[int, int, int] = (6, 7, 5)) -> app_data.DisplayVolume:
    rng = np.random.default_rng(0)
    return app_data.to_display(Volume(rng.integers(-1100, 3200, shape).astype(np.int16), AFFINES[code]))


def test_the_ct_is_int16_hu_x_fastest_and_clipped() -> None:
    dv = _dv("IPL")
    flat = np.frombuffer(multiplanar.encode_ct(dv), "<i2")
    nx, ny, nz = dv.array.shape
    for x, y, z in [(0, 0, 0), (nx - 1, 2, 3), (1, ny - 1, nz - 1)]:
        expected = int(np.clip(dv.array[x, y, z], -1024, 3071))
        assert flat[x + nx * (y + ny * z)] == expected
    assert flat.min() >= -1024 and flat.max() <= 3071 and flat.size == nx * ny * nz


def test_the_label_volume_paints_classes_in_paint_order() -> None:
    kidney = np.zeros((4, 4, 4), bool)
    kidney[:2] = True
    tumour = np.zeros((4, 4, 4), bool)
    tumour[1, 1, 1] = True
    vol, classes = multiplanar.label_volume({"kidney_tumor": tumour, "kidney_right": kidney}, (4, 4, 4))
    assert classes == ("kidney_right", "kidney_tumor")  # the tumour is painted over its kidney
    assert vol[1, 1, 1] == 2 and vol[0, 0, 0] == 1 and vol[3, 3, 3] == 0
    assert (vol == 1).sum() == 31


def test_the_heat_map_is_uint8_of_bits() -> None:
    assert multiplanar.encode_heat(np.array([0.0, 0.5, 1.0, 1.7, -0.2])).tolist() == [0, 128, 255, 255, 0]


def test_the_3d_view_projects_like_the_views_and_shades_by_depth() -> None:
    m = np.zeros((6, 7, 5), bool)
    m[1, 2, 3] = True  # near the front? y = 2 of 7: far from the anterior side (y high)
    m[4, 6, 1] = True  # on the anterior surface
    planes = multiplanar.depth_projections(m)
    for view, axis in (("coronal", 1), ("sagittal", 0), ("axial", 2)):
        hit = app_data.view_plane(np.repeat(m.any(axis=axis, keepdims=True), m.shape[axis], axis), view, 0)
        assert np.array_equal(planes[view] > 0, hit), view
    cor = planes["coronal"]  # rows z reversed, cols x reversed
    front, back = cor[5 - 1 - 1, 6 - 1 - 4], cor[5 - 1 - 3, 6 - 1 - 1]
    assert front == 255 and back == round(80 + 175 * (1 - 4 / 6)) - 0  # depth 6 - 1 - 2 = 4 of 6
    data = multiplanar.encode_projections(planes)
    assert len(data) == 5 * 6 + 5 * 7 + 7 * 6


@pytest.mark.parametrize("code", list(AFFINES))
def test_the_geometry_alone_maps_voxels_like_the_ct(code: str) -> None:
    dv = _dv(code)
    geo = multiplanar.display_geometry(dv.file_shape, AFFINES[code])
    assert geo.array.shape == dv.array.shape and geo.array.strides == (0, 0, 0)  # no voxels held
    assert np.allclose(geo.spacing, dv.spacing) and np.array_equal(geo.ornt, dv.ornt)
    for xyz in [(0, 0, 0), (5, 1, 4), (2, 6, 3)]:
        assert geo.to_file_index(xyz) == dv.to_file_index(xyz)
    assert multiplanar.file_spacing(dv) == pytest.approx(tuple(np.sqrt((AFFINES[code][:3, :3] ** 2).sum(0))))


@pytest.mark.parametrize("code", list(AFFINES))
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_a_stroke_in_display_voxels_is_the_brush_in_file_voxels(code: str, view: str) -> None:
    dv = _dv(code, (12, 11, 10))
    mask = np.zeros(dv.file_shape, bool)
    points = [[3, 4, 5], [6, 4, 5]] if view != "sagittal" else [[3, 4, 5], [3, 7, 5]]
    action = {"action": "brush", "view": view, "points": points, "radius_mm": 1.5, "depth": 1}
    got = multiplanar.apply_edit(dv, mask, action)
    axis = multiplanar.file_axis(dv, view)
    expected = review.brush(
        mask,
        np.asarray([dv.to_file_index(p) for p in points]),
        1.5,
        multiplanar.file_spacing(dv),
        axis,
        depth=1,
    )
    assert np.array_equal(got, expected) and got.any()
    # the painted slices are the view's: the display axis of the view holds three values (depth 1)
    painted = np.argwhere(dv.mask(got))
    assert sorted(set(painted[:, app_data.VIEW_AXIS[view]].tolist())) == [
        points[0][app_data.VIEW_AXIS[view]] + d for d in (-1, 0, 1)
    ]


def test_clicked_edits_and_bad_actions() -> None:
    dv = _dv("LPS", (10, 10, 6))
    mask = np.zeros(dv.file_shape, bool)
    mask[1:3, 1:3, 1:3] = True
    mask[6:9, 6:9, 2:4] = True
    display = dv.mask(mask)
    inside = [int(v) for v in np.argwhere(display)[0]]
    removed = multiplanar.apply_edit(
        dv, mask, {"action": "remove_component", "view": "axial", "voxel": inside}
    )
    kept = multiplanar.apply_edit(dv, mask, {"action": "keep_component", "view": "axial", "voxel": inside})
    assert removed.sum() + kept.sum() == mask.sum() and (removed & kept).sum() == 0
    for bad, match in [
        ({"action": "paint", "view": "axial"}, "not one of"),
        ({"action": "fill_hole", "view": "oblique", "voxel": inside}, "not one of"),
        ({"action": "keep_component", "view": "axial", "voxel": [10, 0, 0]}, "outside"),
    ]:
        with pytest.raises(ValueError, match=match):
            multiplanar.apply_edit(dv, mask, bad)


def test_the_start_voxel_is_the_hint_slice_at_the_mask_centre() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[2:5, 6:9, 1:4] = True
    assert multiplanar.start_voxel(m.shape, 7, m) == (3, 7, 7)
    assert multiplanar.start_voxel(m.shape, None, m) == (3, 7, 2)
    assert multiplanar.start_voxel(m.shape, None, None) == (5, 5, 5)


# ------------------------------------------------------------------------------------------- the store


class _Reads:
    """Counting readers for the store: a 6 x 7 x 5 CT, two classes, one of them damaged on request."""

    def __init__(self, damaged: str | None = None) -> None:
        self.ct_reads = 0
        self.damaged = damaged
        self.dv = _dv("LPS")

    def ct(self, source: multiplanar.ItemSource) -> app_data.DisplayVolume:
        self.ct_reads += 1
        return self.dv

    def mask(self, source: multiplanar.ItemSource, name: str) -> np.ndarray:
        if name == self.damaged:
            raise HarmonizeError("masks/x.npz", "truncated file")
        m = np.zeros(self.dv.file_shape, bool)
        m[1:4, 1:3, 1:2] = name == "liver"
        m[4:6, 4:6, 3:5] = name == "spleen"
        return m

    def entropy(self, source: multiplanar.ItemSource, dv: app_data.DisplayVolume) -> np.ndarray | None:
        return np.full(dv.array.shape, 0.5, np.float16) if source.run_id else None


def _source(mask_key: str = "ls-1", run_id: str | None = "run-1") -> multiplanar.ItemSource:
    return multiplanar.ItemSource(
        "/ws", "btcv:1", "/data/ct.nii.gz", mask_key, ("liver", "spleen"), "liver", run_id
    )


def test_a_payload_is_built_once_and_holds_what_the_browser_reads(tmp_path: Path) -> None:
    store = multiplanar.PayloadStore(folder=tmp_path)
    reads = _Reads()
    p = store.prepare(_source(), reads.ct, reads.mask, reads.entropy)
    assert store.prepare(_source(), reads.ct, reads.mask, reads.entropy) == p and reads.ct_reads == 1
    dv = reads.dv
    item = np.frombuffer(gzip.decompress((tmp_path / p.item).read_bytes()), np.uint8)
    assert np.array_equal(item, multiplanar.flat(dv.mask(reads.mask(_source(), "liver"))).astype(np.uint8))
    labels = np.frombuffer(gzip.decompress((tmp_path / p.labels).read_bytes()), np.uint8)
    assert p.classes == ("spleen",) and labels.sum() == 2 * 2 * 2  # the item's own class is drawn apart
    assert p.heat is not None and set(gzip.decompress((tmp_path / p.heat).read_bytes())) == {128}
    assert (tmp_path / p.ct).stat().st_size == 2 * int(np.prod(dv.array.shape))
    assert p.start[2] in range(dv.array.shape[2]) and p.problems == ()
    args = multiplanar.component_item(p, "../data/", "liver", "btcv:1 · liver")
    assert args["urls"]["ct"] == "../data/" + p.ct and args["classes"][0]["name"] == "spleen"
    # a revised label set is another payload, but the same CT file
    q = store.prepare(_source("ls-2"), reads.ct, reads.mask, reads.entropy)
    assert (
        q.ct == p.ct
        and q.item != p.item
        and multiplanar.prefetch_item(store, _source("ls-2"), "")["urls"]["item"] == q.item
    )


def test_the_description_file_lets_the_browser_draw_the_next_item_as_the_page_would(tmp_path: Path) -> None:
    store = multiplanar.PayloadStore(folder=tmp_path)
    reads = _Reads()
    target = {"scan_id": "btcv:1", "class_name": "liver", "label_set_id": "ls-n"}
    before = multiplanar.prefetch_item(store, _source("ls-n"), "../data/", "btcv:1 · liver · v2", target)
    p = store.prepare(_source("ls-n"), reads.ct, reads.mask, reads.entropy)
    after = multiplanar.prefetch_item(store, _source("ls-n"), "../data/", "btcv:1 · liver · v2", target)
    # the description's name is known before the preload built it, and it is the file written
    assert before["urls"]["meta"] == after["urls"]["meta"] == "../data/" + p.meta
    assert before["urls"]["heat"] is None and after["urls"]["heat"] == "../data/" + str(p.heat)
    assert (after["base"], after["title"], after["target"]) == ("../data/", "btcv:1 · liver · v2", target)
    assert after["view_key"] == multiplanar.view_key("btcv:1", "liver")
    # the browser joins the description's names to ``base``: then it is the page's item for the payload
    described = json.loads((tmp_path / p.meta).read_text())
    urls = {k: None if v is None else after["base"] + v for k, v in described.pop("urls").items()}
    page = multiplanar.component_item(p, "../data/", "liver", "")
    assert urls == page.pop("urls") and described == page and described["id"] == p.labels


def test_a_damaged_mask_is_one_line_and_the_rest_still_shows(tmp_path: Path) -> None:
    store = multiplanar.PayloadStore(folder=tmp_path)
    reads = _Reads(damaged="spleen")
    p = store.prepare(_source(run_id=None), reads.ct, reads.mask, reads.entropy)
    assert p.problems == (("masks/x.npz", "truncated file"),) and p.classes == () and p.heat is None


def test_the_preload_builds_in_the_background_and_the_folder_stays_bounded(tmp_path: Path) -> None:
    reads = _Reads()
    ct_bytes = 2 * int(np.prod(reads.dv.array.shape))
    store = multiplanar.PayloadStore(max_bytes=ct_bytes + 100, folder=tmp_path)
    gate = threading.Event()

    def slow_ct(source: multiplanar.ItemSource) -> app_data.DisplayVolume:
        gate.wait(10)
        return reads.ct(source)

    store.preload(_source("ls-a"), slow_ct, reads.mask, reads.entropy)
    assert store.built(_source("ls-a")) is None  # still under way
    gate.set()
    a = store.prepare(_source("ls-a"), slow_ct, reads.mask, reads.entropy)  # waits for the preload
    assert reads.ct_reads == 1 and store.built(_source("ls-a")) == a
    b = store.prepare(_source("ls-b"), reads.ct, reads.mask, reads.entropy)
    files = {f.name for f in tmp_path.iterdir()}
    assert set(filter(None, [b.ct, b.labels, b.item, b.heat, b.mip, b.meta])) <= files
    assert a.item not in files and a.meta not in files  # evicted: the bound holds the newest item only
    assert store.size() <= ct_bytes + 100 or len(files) == 6


def test_every_key_is_one_key_and_explained() -> None:
    keys = list(multiplanar.KEYS.values())
    assert len(set(keys)) == len(keys)  # one action per key
    assert set(multiplanar.KEY_HELP) == set(multiplanar.KEYS)
    for action in ("accept", "reject", "needs_correction", "skip", "next_item", "previous_item", "undo"):
        assert action in multiplanar.KEYS
    assert {k.removeprefix("preset_") for k in multiplanar.KEYS if k.startswith("preset_")} == set(
        app_data.WL_PRESETS
    )
