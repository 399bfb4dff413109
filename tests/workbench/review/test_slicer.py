"""The 3D Slicer / ITK-SNAP case export and its round trip (``workbench.review.slicer``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

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
