"""The 3D Slicer / ITK-SNAP case export and its round trip (``workbench.review.slicer``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_by_name
from storage.workspace import Workspace
from workbench import review
from workbench.review.slicer import slicer_case_dir

SCAN = "btcv:demo000"
KITS = "kits23:demo000"


def test_slicer_export_writes_a_label_map_with_tumours_on_top(
    ws: Workspace, tmp_path: Path, original_mask: Callable[..., np.ndarray]
) -> None:
    files = review.export_case_for_slicer(ws, KITS, tmp_path / "case")
    assert set(files) == {"ct.nii.gz", "labels.nii.gz", "labels.ctbl", "itksnap_labels.txt", "labels.json"}
    ct, lab = nib.load(files["ct.nii.gz"]), nib.load(files["labels.nii.gz"])
    scan = review.scan_row(ws, KITS)
    assert ct.shape == lab.shape == tuple(scan["shape"])
    assert np.allclose(lab.affine, review.scan_affine(scan), atol=1e-4)
    data = np.asarray(lab.dataobj)
    present = [
        n
        for n, s in ws.catalog.coverage(ws.catalog.latest_original(KITS)["id"]).items()  # type: ignore[index]
        if s == "annotated_present"
    ]
    assert set(np.unique(data)) - {0} == {class_by_name(n).index for n in present}
    tumour = original_mask(ws, KITS, "kidney_tumor")
    assert (data[tumour] == class_by_name("kidney_tumor").index).all()  # painted over the kidney
    ctbl = files["labels.ctbl"].read_text().splitlines()
    assert f"{class_by_name('kidney_tumor').index} kidney_tumor" in "\n".join(ctbl)
    assert json.loads(files["labels.json"].read_text())["values"][
        str(class_by_name("kidney_left").index)
    ] == ("kidney_left")


def test_slicer_round_trip_imports_the_edited_class(
    ws: Workspace, tmp_path: Path, original_mask: Callable[..., np.ndarray]
) -> None:
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "case")
    img = nib.load(files["labels.nii.gz"])
    data = np.asarray(img.dataobj).copy()
    liver = class_by_name("liver").index
    data[data == liver] = 0
    data[5:9, 5:9, 5:9] = liver  # the "edited" liver
    edited = tmp_path / "edited.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), edited)
    corr = review.import_correction(ws, SCAN, "liver", edited, "Dr Ada", "redrawn in Slicer")
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 4**3
    # the other classes of the original came along unchanged
    assert np.array_equal(ws.masks.read(corr.label_set_id, "spleen"), original_mask(ws, SCAN, "spleen"))


def test_slicer_folders_are_unique_per_scan_and_name_their_scan(ws: Workspace) -> None:
    dirs = {slicer_case_dir(ws, f"kits23:{case}") for case in ("case 1", "case_1", "case(1)")}
    assert len(dirs) == 3 and all(d.parent == ws.slicer and " " not in d.name for d in dirs)
    files = review.export_case_for_slicer(ws, KITS)  # the default folder
    assert files["ct.nii.gz"].parent == slicer_case_dir(ws, KITS) == ws.slicer / "kits23_demo000"
    assert json.loads(files["labels.json"].read_text())["scan_id"] == KITS


# ------------------------------------------------------------------- lossless round trips (#13 item 3)


def _current_masks(ws: Workspace, scan_id: str) -> dict[str, np.ndarray]:
    """Every present class of the scan's current labels (the assembly rule), read back independently."""
    rows = ws.catalog.query(
        "SELECT class_name, mask_key FROM current_label WHERE scan_id = ? AND state = 'annotated_present'",
        [scan_id],
    )
    return {
        str(r["class_name"]): ws.masks.read(str(r["mask_key"]), str(r["class_name"]))
        for _, r in rows.iterrows()
    }


def _layer_of(files: dict[str, Path], name: str) -> Path:
    layers = json.loads(files["labels.json"].read_text())["layers"]
    return next(files[f] for f, classes in layers.items() if name in classes)


def test_a_no_op_round_trip_is_bit_identical_for_every_class_of_every_demo_scan(
    ws: Workspace, tmp_path: Path
) -> None:
    """Every demo scan (LPS BTCV, IPL KiTS, LAS AMOS22, LPI CHAOS, ...): export, import each class's layer
    file unchanged -> the same mask voxel for voxel, and no new label set."""
    scans = ws.catalog.query("SELECT id, axcodes FROM scan ORDER BY id")
    assert {"LPS", "LAS", "IPL"} <= set(scans["axcodes"])
    before = len(ws.catalog.label_sets())
    checked = 0
    for scan_id in scans["id"]:
        truth = _current_masks(ws, scan_id)
        files = review.export_case_for_slicer(ws, scan_id, tmp_path / scan_id.replace(":", "_"))
        for name, mask in truth.items():
            layer = _layer_of(files, name)
            data = np.asarray(nib.load(layer).dataobj)
            got = review.label_values_to_mask(layer, data, name, label_map=True)
            assert np.array_equal(got, mask), f"{scan_id} {name}: {int(got.sum())} != {int(mask.sum())}"
            corr = review.import_correction(ws, scan_id, name, layer, "Dr Ada", "no change")
            assert not corr.changed and corr.review_id == ""
            checked += 1
    assert checked >= 40
    assert len(ws.catalog.label_sets()) == before
    assert ws.catalog.reviews().empty


def test_tumour_voxels_painted_over_the_kidney_stay_kidney(ws: Workspace, tmp_path: Path) -> None:
    truth = _current_masks(ws, KITS)
    kidney = (
        "kidney_right" if (truth["kidney_tumor"] & truth.get("kidney_right", False)).any() else "kidney_left"
    )
    nested = truth["kidney_tumor"] | truth.get("kidney_cyst", np.zeros_like(truth[kidney]))
    hidden = int((nested & truth[kidney]).sum())
    assert hidden > 0  # the phantom's tumour (and cyst) lie inside the kidney
    files = review.export_case_for_slicer(ws, KITS, tmp_path / "kits")
    data = np.asarray(nib.load(files["labels.nii.gz"]).dataobj)
    assert int((data == class_by_name(kidney).index).sum()) == int(truth[kidney].sum()) - hidden
    got = review.label_values_to_mask(files["labels.nii.gz"], data, kidney)
    assert int(got.sum()) == int(truth[kidney].sum())
    assert (truth["kidney_tumor"] & ~got).sum() == 0  # the tumour stays inside its organ


def test_an_edit_of_one_voxel_changes_exactly_that_voxel(ws: Workspace, tmp_path: Path) -> None:
    truth = _current_masks(ws, KITS)
    files = review.export_case_for_slicer(ws, KITS, tmp_path / "kits")
    img = nib.load(files["labels.nii.gz"])
    data = np.asarray(img.dataobj).copy()
    kidney = class_by_name("kidney_right").index
    edge = tuple(int(v) for v in np.argwhere(data == kidney)[0])
    data[edge] = 0  # erase one kidney voxel
    edited = tmp_path / "kits" / "edited.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), edited)
    corr = review.import_correction(ws, KITS, "kidney_right", edited, "Dr Ada", "one voxel")
    assert corr.changed
    new = ws.masks.read(corr.label_set_id, "kidney_right")
    assert int(truth["kidney_right"].sum()) - int(new.sum()) == 1 and not new[edge]
    restored = new.copy()
    restored[edge] = True
    assert np.array_equal(restored, truth["kidney_right"])


def test_overlapping_pseudo_labels_get_a_second_layer_and_still_round_trip(
    ws: Workspace, tmp_path: Path, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    """BTCV annotates neither colon nor its tumour nor the bladder: a pseudo-label where colon and bladder
    overlap (two organs) and the colon tumour reaches outside the colon needs layers."""
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    assert not any(m[:16, :16, :16].any() for m in _current_masks(ws, SCAN).values())  # air in the corner
    colon = blob(shape, (0, 0, 0), 12)
    bladder = blob(shape, (10, 10, 10), 6)  # overlaps the colon's corner by 2^3 voxels
    tumour = blob(shape, (10, 0, 0), 4)  # half in the colon, half outside
    add_pseudo(ws, SCAN, {"colon": colon, "bladder": bladder, "colon_tumor": tumour})
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "btcv")
    layers = json.loads(files["labels.json"].read_text())["layers"]
    assert set(layers) == {"labels.nii.gz", "labels_layer2.nii.gz"}
    assert {"bladder", "colon_tumor"} <= set(layers["labels_layer2.nii.gz"])
    assert "colon" in layers["labels.nii.gz"]
    before = len(ws.catalog.label_sets())
    for name, mask in {"colon": colon, "bladder": bladder, "colon_tumor": tumour}.items():
        layer = _layer_of(files, name)
        assert np.array_equal(
            review.label_values_to_mask(layer, np.asarray(nib.load(layer).dataobj), name), mask
        )
        assert not review.import_correction(ws, SCAN, name, layer, "Dr Ada").changed
    assert len(ws.catalog.label_sets()) == before
    # a re-export without the overlap removes the stale second layer
    add_pseudo(
        ws,
        SCAN,
        {"colon": colon, "bladder": blob(shape, (13, 13, 13), 3), "colon_tumor": colon & tumour},
        run_id="run-2",
    )
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "btcv")
    assert "labels_layer2.nii.gz" not in files and not (tmp_path / "btcv" / "labels_layer2.nii.gz").exists()


def test_a_class_read_from_the_wrong_layer_is_refused(
    ws: Workspace, tmp_path: Path, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    add_pseudo(ws, SCAN, {"colon": blob(shape, (0, 0, 0), 12), "bladder": blob(shape, (10, 10, 10), 6)})
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "btcv")
    with pytest.raises(HarmonizeError, match=r"labels\.nii\.gz: bladder is in labels_layer2\.nii\.gz"):
        review.import_correction(ws, SCAN, "bladder", files["labels.nii.gz"], "Dr Ada")


def test_a_file_saved_in_another_voxel_order_is_turned_back(ws: Workspace, tmp_path: Path) -> None:
    """An LPS scan's label map saved as RAS (nibabel's closest canonical, as some scripts do)."""
    assert review.scan_row(ws, SCAN)["axcodes"] == "LPS"
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "btcv")
    ras = nib.as_closest_canonical(nib.load(files["labels.nii.gz"]))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    saved = tmp_path / "ras.nii.gz"
    nib.save(ras, saved)
    liver = _current_masks(ws, SCAN)["liver"]
    assert not review.import_correction(ws, SCAN, "liver", saved, "Dr Ada").changed
    data = np.asarray(ras.dataobj).copy()
    data[data == class_by_name("liver").index] = 0
    nib.save(nib.Nifti1Image(data, ras.affine), saved)
    corr = review.import_correction(ws, SCAN, "liver", saved, "Dr Ada")
    assert corr.changed and liver.any()
    assert ws.catalog.coverage(corr.label_set_id)["liver"] == "annotated_absent"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("shift", r"affine differs from scan btcv:demo000's by up to 3 mm \(tolerance 0\.01 mm\)"),
        ("crop", r"shape \(95, 96, 64\) differs from scan btcv:demo000's shape \(96, 96, 64\)"),
        ("value", r"label values \[40\] are neither 0/1 nor universal class indices 1-32"),
        ("ct", r"ct\.nii\.gz: label values \[-1\d+, .*\.\.\.\] \(\d+ values, -1\d+ to \d+\) are neither"),
        ("float", r"label values are not integers: not a label map"),
    ],
)
def test_bad_edited_files_are_one_clear_error_naming_the_file(
    ws: Workspace, tmp_path: Path, edit: str, message: str
) -> None:
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "btcv")
    img = nib.load(files["labels.nii.gz"])
    data, affine = np.asarray(img.dataobj).copy(), img.affine.copy()
    path = tmp_path / f"{edit}.nii.gz"
    if edit == "shift":
        affine[:3, 3] += np.asarray(affine[:3, :3]) @ [0.0, 0.0, 1.0]
        nib.save(nib.Nifti1Image(data, affine), path)
    elif edit == "crop":
        nib.save(nib.Nifti1Image(data[1:], affine), path)
    elif edit == "value":
        data[0, 0, 0] = 40
        nib.save(nib.Nifti1Image(data, affine), path)
    elif edit == "ct":
        path = files["ct.nii.gz"]
    else:
        nib.save(nib.Nifti1Image(data.astype(np.float32) + 0.5, affine), path)
    before = len(ws.catalog.label_sets())
    with pytest.raises(HarmonizeError, match=message) as err:
        review.import_correction(ws, SCAN, "liver", path, "Dr Ada")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert len(ws.catalog.label_sets()) == before


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def _round_trip_every_class(ws: Workspace, scan_id: str, out: Path) -> dict[str, int]:
    """Export, then import every class's layer file unchanged; returns class -> voxels, asserting each
    decodes bit for bit and nothing new is written."""
    truth = _current_masks(ws, scan_id)
    files = review.export_case_for_slicer(ws, scan_id, out)
    before = len(ws.catalog.label_sets())
    for name, mask in truth.items():
        layer = _layer_of(files, name)
        got = review.label_values_to_mask(layer, np.asarray(nib.load(layer).dataobj), name, label_map=True)
        assert np.array_equal(got, mask), f"{scan_id} {name}: {int(got.sum())} != {int(mask.sum())}"
        assert not review.import_correction(ws, scan_id, name, layer, "Dr Ada").changed
    assert len(ws.catalog.label_sets()) == before
    return {n: int(m.sum()) for n, m in truth.items()}


@pytest.mark.parametrize(
    ("source", "ct", "seg"),
    [
        ("totalsegmentator_v2", "example_ct_sm.nii.gz", "example_seg.nii.gz"),
        ("totalsegmentator_v1", "example_ct.nii.gz", "example_seg_v1.nii.gz"),
    ],
)
def test_real_totalsegmentator_outputs_round_trip_bit_for_bit(
    shared_fixtures: Path, tmp_path: Path, source: str, ct: str, seg: str
) -> None:
    from workbench.ingest import ingest

    folder = shared_fixtures / "totalsegmentator"
    _link(folder / ct, tmp_path / "data" / "example" / "ct.nii.gz")
    _link(folder / seg, tmp_path / "data" / "example" / "segmentations.nii.gz")
    ws = Workspace.open(tmp_path / "ws")
    assert ingest(ws, source, tmp_path / "data", progress=False).skipped == []
    voxels = _round_trip_every_class(ws, f"{source}:example", tmp_path / "out")
    raw = np.asarray(nib.load(folder / seg).dataobj)
    liver = 5  # the liver's id in both tool versions
    assert voxels["liver"] == int((raw == liver).sum()) > 0
    assert len(voxels) >= 15


def test_the_real_amos_label_map_round_trips_on_its_las_grid(shared_fixtures: Path, tmp_path: Path) -> None:
    """AMOS22's CT is not among the fixtures: a blank CT on the label map's own (LAS) grid stands in."""
    from workbench.ingest import ingest

    label = shared_fixtures / "amos" / "amos_0013_label.nii.gz"
    img = nib.load(label)
    ct = tmp_path / "data" / "imagesTr" / "amos_0013.nii.gz"
    ct.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.full(img.shape, -1000, np.int16), img.affine), ct)
    _link(label, tmp_path / "data" / "labelsTr" / "amos_0013.nii.gz")
    ws = Workspace.open(tmp_path / "ws")
    assert ingest(ws, "amos22", tmp_path / "data", progress=False).skipped == []
    assert review.scan_row(ws, "amos22:0013")["axcodes"] == "LAS"
    voxels = _round_trip_every_class(ws, "amos22:0013", tmp_path / "out")
    raw = np.asarray(img.dataobj)
    assert voxels["kidney_right"] == int((raw == 2).sum()) and voxels["liver"] == int((raw == 6).sum())
    assert len(voxels) == 14


def test_an_upload_named_like_a_layer_is_read_with_the_exports_manifest(
    ws: Workspace, add_pseudo: Callable[..., str], blob: Callable[..., np.ndarray]
) -> None:
    """The app stages uploads elsewhere; a file named like a layer of the scan's export is still checked
    against that export's ``labels.json``, and an unchanged one writes nothing."""
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    add_pseudo(ws, SCAN, {"colon": blob(shape, (0, 0, 0), 12), "bladder": blob(shape, (10, 10, 10), 6)})
    files = review.export_case_for_slicer(ws, SCAN)
    first, second = files["labels.nii.gz"].read_bytes(), files["labels_layer2.nii.gz"].read_bytes()
    with pytest.raises(HarmonizeError, match=r"^labels\.nii\.gz: bladder is in labels_layer2\.nii\.gz"):
        review.import_correction_upload(ws, SCAN, "bladder", "labels.nii.gz", first, "Dr Ada")
    corr = review.import_correction_upload(ws, SCAN, "bladder", "labels_layer2.nii.gz", second, "Dr Ada")
    assert not corr.changed and not any(ws.imports.iterdir())
