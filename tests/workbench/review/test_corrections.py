"""Corrections, quick fixes and edited NIfTI imports (``workbench.review.corrections``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.stats import class_stats
from storage.workspace import Workspace
from workbench import review
from workbench.review.validation import scan_affine
from workbench.training_set import assemble_training_set

SCAN = "btcv:demo000"


def test_correcting_a_pseudo_label_makes_a_revised_set_without_promoting_other_guesses(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    pseudo = add_pseudo(
        ws, SCAN, {"liver": blob(shape, (10, 10, 10), 8), "colon": blob(shape, (30, 30, 30), 5)}
    )
    fixed = blob(shape, (11, 11, 11), 6)
    corr = review.correct(ws, SCAN, "liver", fixed, "Dr Ada", "trimmed", pseudo)
    ls = ws.catalog.label_sets(SCAN).set_index("id").loc[corr.label_set_id]
    assert (ls["origin"], ls["parent_id"], ls["author"]) == ("revised", pseudo, "Dr Ada")
    cov = ws.catalog.coverage(corr.label_set_id)
    assert cov["liver"] == "annotated_present"
    assert cov["colon"] == "not_annotated"  # the unreviewed pseudo colon is not promoted
    assert np.array_equal(ws.masks.read(corr.label_set_id, "liver"), fixed)
    stats = ws.catalog.query("SELECT * FROM class_stats WHERE label_set_id = ?", [corr.label_set_id])
    assert stats.set_index("class_name").loc["liver", "voxels"] == 6**3
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [corr.review_id]).iloc[0]
    assert (row["decision"], row["label_set_id"], row["result_label_set_id"]) == (
        "corrected",
        pseudo,
        corr.label_set_id,
    )
    entry = assemble_training_set(ws, scan_ids=[SCAN])[0]
    assert entry.origins["liver"] == "revised" and entry.origins["colon"] == "pseudo"
    assert entry.origins["kidney_left"] == "original"


def test_correcting_an_original_label_copies_the_other_classes(
    ws: Workspace, original_mask: Callable[..., np.ndarray]
) -> None:
    orig = ws.catalog.latest_original(SCAN)
    assert orig is not None
    kidney = original_mask(ws, SCAN, "kidney_left")
    fixed = review.keep_largest(kidney) & ~np.roll(kidney, 2, axis=0)
    corr = review.correct(ws, SCAN, "kidney_left", fixed, "Dr Ada")  # base defaults to the current label
    assert ws.catalog.label_sets(SCAN).set_index("id").loc[corr.label_set_id, "parent_id"] == orig["id"]
    old_cov, new_cov = ws.catalog.coverage(orig["id"]), ws.catalog.coverage(corr.label_set_id)
    assert {n: s for n, s in new_cov.items() if n != "kidney_left"} == {
        n: s for n, s in old_cov.items() if n != "kidney_left"
    }
    for cls in ws.masks.names(orig["mask_key"]):
        if cls != "kidney_left" and old_cov[cls] == "annotated_present":
            assert np.array_equal(ws.masks.read(corr.label_set_id, cls), original_mask(ws, SCAN, cls))
    assert review.current_label_set(ws, SCAN, "kidney_left") == corr.label_set_id


def test_a_correction_stores_the_statistics_of_the_whole_mask(
    ws: Workspace, original_mask: Callable[..., np.ndarray]
) -> None:
    """The cropped path (masks and statistics computed on the bounding box) stores what
    ``class_stats`` of the full mask and the full CT gives, for the changed class and the copied ones."""
    scan = review.scan_row(ws, SCAN)
    kidney = original_mask(ws, SCAN, "kidney_left")
    fixed = kidney.copy()
    fixed[tuple(slice(0, 3) for _ in range(3))] = True  # a second component far from the kidney
    image = np.random.default_rng(0).normal(40, 20, fixed.shape).astype(np.float32)
    corr = review.correct(ws, SCAN, "kidney_left", fixed, "Dr Ada", image=image)
    stored = ws.catalog.query(
        "SELECT * FROM class_stats WHERE label_set_id = ?", [corr.label_set_id]
    ).set_index("class_name")
    expected = class_stats("kidney_left", fixed, scan_affine(scan), image).as_dict()
    row = stored.loc["kidney_left"]
    assert int(row["voxels"]) == expected["voxels"] == int(fixed.sum())
    assert int(row["components"]) == expected["components"] == 2
    assert list(row["bbox"]) == list(expected["bbox"])
    assert list(row["centroid_mm"]) == pytest.approx(list(expected["centroid_mm"]), rel=1e-12)
    for key in ("volume_ml", "hu_mean", "hu_std"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-9)
    assert np.array_equal(ws.masks.read(corr.label_set_id, "kidney_left"), fixed)
    assert ws.masks.index(corr.label_set_id).classes["kidney_left"].bbox == (
        (0, int(np.nonzero(fixed)[0].max()) + 1),
        (0, int(np.nonzero(fixed)[1].max()) + 1),
        (0, int(np.nonzero(fixed)[2].max()) + 1),
    )


def test_a_correction_may_leave_the_long_tail_to_its_writers_later_upkeep(ws: Workspace) -> None:
    """``keep_long_tail=False`` (the Review page answers the viewer first): the long tail read after the
    deferred upkeep counts the correction, one scan fewer with the class present and one more absent."""
    before = ws.catalog.long_tail().set_index("class_name").loc["kidney_left"]
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    review.correct(ws, SCAN, "kidney_left", np.zeros(shape, bool), "Dr Ada", keep_long_tail=False)
    ws.catalog.keep_long_tail()
    after = ws.catalog.long_tail().set_index("class_name").loc["kidney_left"]
    assert (int(after["present"]), int(after["absent"])) == (
        int(before["present"]) - 1,
        int(before["absent"]) + 1,
    )
    assert int(after["annotated"]) == int(before["annotated"])


def test_an_empty_correction_records_the_class_as_absent(ws: Workspace) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    corr = review.correct(ws, SCAN, "kidney_tumor", np.zeros(shape, np.uint8), "Dr Ada")
    assert ws.catalog.coverage(corr.label_set_id)["kidney_tumor"] == "annotated_absent"


@pytest.mark.parametrize("bad", ["shape", "values"])
def test_bad_corrected_masks_are_refused(ws: Workspace, bad: str) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    mask = np.zeros((4, 4, 4), bool) if bad == "shape" else np.full(shape, 2, np.uint8)
    before = ws.catalog.counts()["label_set"], len(ws.masks.keys())
    with pytest.raises(HarmonizeError, match="mask"):
        review.correct(ws, SCAN, "liver", mask, "Dr Ada")
    assert (ws.catalog.counts()["label_set"], len(ws.masks.keys())) == before


# -------------------------------------------------------------------------------------- quick fixes


@pytest.mark.parametrize(
    ("sizes", "remove_at", "expected"),
    [
        ((3, 2), (1, 1, 1), 2**3),  # remove the 27-voxel cube, keep the 8-voxel one
        ((3, 2), (12, 12, 12), 3**3),
        ((4, 1), (12, 12, 12), 4**3),
    ],
)
def test_remove_component(
    blob: Callable[..., np.ndarray], sizes: tuple[int, int], remove_at: tuple[int, int, int], expected: int
) -> None:
    m = blob((16, 16, 16), (0, 0, 0), sizes[0]) | blob((16, 16, 16), (12, 12, 12), sizes[1])
    out = review.remove_component(m, remove_at)
    assert int(out.sum()) == expected and m.sum() == sizes[0] ** 3 + sizes[1] ** 3  # input untouched


@pytest.mark.parametrize("voxel", [(15, 15, 15), (99, 0, 0), (-1, 0, 0)])
def test_remove_component_needs_a_voxel_of_the_mask(
    blob: Callable[..., np.ndarray], voxel: tuple[int, int, int]
) -> None:
    with pytest.raises(ValueError, match="voxel"):
        review.remove_component(blob((16, 16, 16), (0, 0, 0), 3), voxel)


@pytest.mark.parametrize(("a", "b", "expected"), [(3, 2, 27), (2, 4, 64), (1, 1, 1), (0, 0, 0)])
def test_keep_largest(blob: Callable[..., np.ndarray], a: int, b: int, expected: int) -> None:
    m = blob((16, 16, 16), (0, 0, 0), a) | blob((16, 16, 16), (10, 10, 10), b)
    assert int(review.keep_largest(m).sum()) == expected


def test_diagonal_voxels_are_one_component() -> None:
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # 26-connected
    assert int(review.keep_largest(m).sum()) == 2


# ------------------------------------------------------------------- edited NIfTI files and uploads


def _write_label(
    tmp_path: Path,
    ws: Workspace,
    *,
    shape_delta: int = 0,
    shift_mm: float = 0.0,
    values: tuple[int, ...] = (0, 1),
    name: str = "fix.nii.gz",
) -> Path:
    scan = review.scan_row(ws, SCAN)
    shape = tuple(int(s) for s in scan["shape"])
    shape = (shape[0] + shape_delta, shape[1], shape[2])
    data = np.zeros(shape, np.uint8)
    for n, v in enumerate(values):
        data[n, 0, 0] = v
    affine = review.scan_affine(scan).copy()
    affine[0, 3] += shift_mm
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape_delta": 1}, "shape"),
        ({"shift_mm": 0.5}, "affine differs"),
        ({"values": (0, 1, 40)}, "label values"),
    ],
)
def test_import_refuses_wrong_geometry_and_values(
    ws: Workspace, tmp_path: Path, kwargs: dict, match: str
) -> None:
    path = _write_label(tmp_path, ws, **kwargs)
    n = ws.catalog.counts()["label_set"]
    with pytest.raises(HarmonizeError, match=match) as err:
        review.import_correction(ws, SCAN, "liver", path, "Dr Ada")
    assert err.value.path == str(path)
    assert ws.catalog.counts()["label_set"] == n


def test_import_accepts_a_shift_within_tolerance_and_a_value_map(ws: Workspace, tmp_path: Path) -> None:
    path = _write_label(tmp_path, ws, shift_mm=0.005, values=(0, 7, 9))
    corr = review.import_correction(ws, SCAN, "liver", path, "Dr Ada", value_map={0: 0, 7: 1, 9: 0})
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 1


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("../../etc/evil.nii.gz", None),
        ("sub/dir.nii.gz", None),
        ("C:\\x\\y.nii", None),
        (".hidden.nii.gz", None),
        ("notes.txt", None),
        ("fake.nii.gz", b"this is not a NIfTI file at all" * 20),
        ("fake.nii", b"\x00" * 400),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_written(
    ws: Workspace, tmp_path: Path, name: str, data: bytes | None
) -> None:
    payload = data if data is not None else _write_label(tmp_path, ws).read_bytes()
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    n = ws.catalog.counts()["label_set"]
    with pytest.raises(HarmonizeError) as err:
        review.import_correction_upload(ws, SCAN, "liver", name, payload, "Dr Ada")
    assert "NIfTI" in err.value.problem
    after = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*") if p.name != "imports")
    assert after == [p for p in before if p.name != "imports"]
    assert ws.catalog.counts()["label_set"] == n
    assert not (tmp_path.parent / "etc").exists()


def test_a_good_upload_is_imported(ws: Workspace, tmp_path: Path) -> None:
    payload = _write_label(tmp_path, ws, values=(0, 1, 1)).read_bytes()
    corr = review.import_correction_upload(ws, SCAN, "liver", "liver_fixed.nii.gz", payload, "Dr Ada")
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 2
    assert list((ws.root / "imports").iterdir()) == []


def _huge_header_upload(ws: Workspace, shape: tuple[int, int, int]) -> bytes:
    """A few hundred gzip bytes: a NIfTI header that claims ``shape`` uint8 voxels, and 64 voxels of data."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_sform(review.scan_affine(review.scan_row(ws, SCAN)), code=1)
    raw = header.binaryblock + b"\x00" * 4 + bytes(64)  # 352-byte header + extension flag, then voxels
    return gzip.compress(raw)


def test_an_upload_claiming_a_huge_volume_is_refused_from_its_header(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.review.corrections as corrections

    payload = _huge_header_upload(ws, (2048, 2048, 2048))
    assert len(payload) < 1000
    decoded: list[str] = []
    real = corrections._read_voxels
    monkeypatch.setattr(corrections, "_read_voxels", lambda p, img: decoded.append(str(p)) or real(p, img))
    n = ws.catalog.counts()["label_set"]
    with pytest.raises(HarmonizeError, match=r"shape \(2048, 2048, 2048\) differs") as err:
        review.import_correction_upload(ws, SCAN, "liver", "huge.nii.gz", payload, "Dr Ada")
    assert err.value.path == "huge.nii.gz" and decoded == []  # no voxel was decoded
    assert ws.catalog.counts()["label_set"] == n


def test_a_truncated_upload_of_the_right_shape_is_one_clear_error(ws: Workspace) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    payload = _huge_header_upload(ws, shape)  # 64 voxels of data where the header promises many more
    with pytest.raises(HarmonizeError, match="not a readable NIfTI file"):
        review.import_correction_upload(ws, SCAN, "liver", "short.nii.gz", payload, "Dr Ada")


# ------------------------------------------------------------ nesting and clear errors on import (#13)


def _nested_map() -> np.ndarray:
    """A 12^3 label map: right kidney (2) with a tumour (26) inside, a left kidney (3) with a cyst (32)
    inside, and a lone tumour that touches no kidney."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[0:5, 0:5, 0:5] = 2
    labels[1:3, 1:3, 1:3] = 26  # 8 voxels inside the right kidney
    labels[7:12, 0:5, 0:5] = 3
    labels[8:9, 1:2, 1:2] = 32  # 1 voxel inside the left kidney
    labels[9:11, 9:11, 9:11] = 26  # 8 voxels, touching nothing
    return labels


@pytest.mark.parametrize(
    ("name", "voxels"),
    [("kidney_right", 125), ("kidney_left", 125), ("kidney_tumor", 16), ("kidney_cyst", 1), ("liver", 0)],
)
def test_a_label_map_gives_each_class_with_the_children_painted_over_it(name: str, voxels: int) -> None:
    mask = review.label_values_to_mask("x.nii.gz", _nested_map(), name)
    assert int(mask.sum()) == voxels


@pytest.mark.parametrize(("label_map", "voxels"), [(False, 27), (True, 0)])
def test_zero_one_files_are_binary_masks_unless_they_are_an_exports_label_map(
    label_map: bool, voxels: int
) -> None:
    data = np.zeros((6, 6, 6), np.uint8)
    data[:3, :3, :3] = 1  # binary liver, or the spleen (index 1) of a label map
    assert int(review.label_values_to_mask("x", data, "liver", label_map=label_map).sum()) == voxels


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0, 40], r"label values \[40\] are neither 0/1"),
        (list(range(-1024, 1)),
         r"label values \[-1024, -1023, -1022, -1021, -1020, -1019, -1018, -1017, \.\.\.\] "
         r"\(1024 values, -1024 to -1\) are neither 0/1 nor universal class indices 1-32: not a label map"),
    ],
)  # fmt: skip
def test_bad_values_are_listed_briefly(values: list[int], message: str) -> None:
    data = np.resize(np.asarray(values, np.int16), (16, 16, 8))
    with pytest.raises(HarmonizeError, match=message) as err:
        review.label_values_to_mask("ct.nii.gz", data, "liver")
    assert err.value.path == "ct.nii.gz" and len(str(err.value)) < 300


def test_an_unchanged_import_writes_nothing_and_a_changed_one_a_revised_set(
    ws: Workspace, tmp_path: Path
) -> None:
    ls = ws.catalog.latest_original(SCAN)
    assert ls is not None
    liver = ws.masks.read(ls["mask_key"], "liver")
    scan = review.scan_row(ws, SCAN)
    path = tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(liver.astype(np.uint8), review.scan_affine(scan)), path)
    n = ws.catalog.counts()["label_set"]
    same = review.import_correction(ws, SCAN, "liver", path, "Dr Ada")
    assert (same.changed, same.review_id, same.label_set_id) == (False, "", ls["id"])
    assert ws.catalog.counts()["label_set"] == n and ws.catalog.reviews().empty
    trimmed = liver.copy()
    trimmed[tuple(np.argwhere(liver)[0])] = False
    nib.save(nib.Nifti1Image(trimmed.astype(np.uint8), review.scan_affine(scan)), path)
    corr = review.import_correction(ws, SCAN, "liver", path, "Dr Ada")
    assert corr.changed and ws.catalog.counts()["label_set"] == n + 1
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == int(liver.sum()) - 1


# --------------------------------------------------------------------------------- edits in the browser


def _disc_count(radius_mm: float, sa: float, sb: float) -> int:
    """Voxels whose centre lies within ``radius_mm`` of the centre voxel's, counted by brute force."""
    n = 0
    for a in range(-50, 51):
        for b in range(-50, 51):
            n += (a * sa) ** 2 + (b * sb) ** 2 <= radius_mm**2
    return n


@pytest.mark.parametrize(
    ("radius", "spacing", "axis"),
    [(2.0, (1.0, 1.0, 1.0), 2), (3.0, (0.8, 0.8, 5.0), 2), (3.0, (0.8, 0.8, 5.0), 0), (0.3, (1, 1, 1), 1)],
)
def test_a_brush_dab_is_a_disc_in_mm(radius: float, spacing: tuple[float, ...], axis: int) -> None:
    m = np.zeros((40, 40, 40), bool)
    out = review.brush(m, [[20, 20, 20]], radius, spacing, axis)
    sa, sb = (spacing[a] for a in range(3) if a != axis)
    assert out.sum() == max(_disc_count(radius, sa, sb), 1)
    assert np.unique(np.nonzero(out)[axis]).tolist() == [20]  # one slice: the stroke's
    assert not m.any()  # the input is not changed


def test_a_stroke_covers_the_line_between_its_points_and_the_range_of_slices() -> None:
    m = np.zeros((30, 30, 9), bool)
    out = review.brush(m, [[5, 10, 4], [25, 10, 4]], 1.0, (1.0, 1.0, 3.0), 2, depth=2)
    # radius 1 mm on 1 mm voxels: the centre and its 4 neighbours along the whole line x 5..25, y = 10
    plane = np.zeros((30, 30), bool)
    plane[5:26, 9:12] = True
    plane[4, 10] = plane[26, 10] = True
    for k in range(9):
        assert np.array_equal(out[:, :, k], plane if 2 <= k <= 6 else np.zeros_like(plane)), k


def test_the_eraser_removes_and_clips_at_the_volume_edge() -> None:
    m = np.ones((10, 10, 3), bool)
    out = review.brush(m, [[0, 0, 1]], 2.0, (1.0, 1.0, 1.0), 2, erase=True)
    # the quarter disc inside the volume: (a, b) >= 0 with a^2 + b^2 <= 4
    assert (~out).sum() == sum(a * a + b * b <= 4 for a in range(3) for b in range(3))
    assert out[:, :, 0].all() and out[:, :, 2].all()


@pytest.mark.parametrize("bad", ["outside", "no point", "radius", "depth"])
def test_bad_brush_strokes_are_refused(bad: str) -> None:
    m = np.zeros((8, 8, 8), bool)
    points, radius, depth = [[4, 4, 4]], 1.0, 0
    if bad == "outside":
        points = [[4, 4, 8]]
    elif bad == "no point":
        points = []
    elif bad == "radius":
        radius = 0.0
    else:
        depth = -1
    with pytest.raises(ValueError):
        review.brush(m, np.asarray(points).reshape(-1, 3), radius, (1, 1, 1), 2, depth=depth)


def test_keep_component_keeps_only_the_clicked_one(blob: Callable[..., np.ndarray]) -> None:
    shape = (40, 40, 40)
    m = blob(shape, (8, 8, 8), 5) | blob(shape, (28, 28, 28), 7)
    kept = review.keep_component(m, (9, 9, 9))
    assert kept.sum() == 5**3 and kept[9, 9, 9] and not kept[30, 30, 30]
    with pytest.raises(ValueError, match="not in the mask"):
        review.keep_component(m, (0, 0, 0))


def test_fill_hole_fills_the_enclosed_region_on_the_slices_asked() -> None:
    m = np.zeros((12, 12, 5), bool)
    m[2:10, 2:10, :] = True
    m[4:7, 4:7, :] = False  # a 3 x 3 hole on every slice
    m[0:12, 5, 4] = False  # slice 4: the hole opens to the edge, so it is no hole there
    one = review.fill_hole(m, (5, 5, 2), 2)
    assert (one ^ m).sum() == 9 and (one ^ m)[:, :, 2].sum() == 9
    three = review.fill_hole(m, (5, 5, 2), 2, depth=2)
    assert [(three ^ m)[:, :, k].sum() for k in range(5)] == [9, 9, 9, 9, 0]
    with pytest.raises(ValueError, match="not in a hole"):
        review.fill_hole(m, (5, 5, 4), 2)
    with pytest.raises(ValueError, match="in the mask"):
        review.fill_hole(m, (3, 3, 2), 2)
