"""nnU-Net v2 export: dataset.json, images and label maps aligned with the catalog, revised labels win,
manifest hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from storage.workspace import Workspace
from workbench import review
from workbench.export import export_nnunet, label_values, patch_intensity_properties, verify_manifest
from workbench.export.intensity import PROPERTIES_KEY
from workbench.training_set import assemble_training_set


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def test_nnunet_export_matches_the_catalog(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "Dataset501_Test"
    classes = ["spleen", "kidney_right", "kidney_left", "liver", "kidney_tumor"]
    manifest = export_nnunet(ws, out, classes=classes, progress=False)
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == label_values(classes)
    assert dataset["numTraining"] == len(manifest["cases"]) == len(list((out / "labelsTr").glob("*.nii.gz")))
    entries = {e.scan_id: e for e in assemble_training_set(ws, origins=("revised", "original", "accepted"))}
    for case in manifest["cases"]:
        image, aff_i = _read(out / case["image"])
        label, aff_l = _read(out / case["label"])
        assert case["image"] == f"imagesTr/{case['case']}_0000.nii.gz"
        assert image.shape == label.shape and np.allclose(aff_i, aff_l)
        e = entries[case["scan_id"]]
        known = [c for c in classes if c in e.annotated]
        assert case["annotated"] == known
        values = dataset["labels"]
        for c in known:
            if c in e.present and c != "kidney_tumor":
                m = e.masks[c]
                # the class keeps its value except where a tumour was painted over it
                assert (label[m] == values[c]).mean() > 0.5
        background = label[
            ~np.any([e.masks[c] for c in e.present if c in known] or [np.zeros(label.shape, bool)], axis=0)
        ]
        # complete: true background only; partial: ignore only where an unknown class may be, and the
        # air outside the body stays background (0 of 6.4 M voxels used to be background)
        assert set(np.unique(background)) == ({0} if case["complete"] else {0, values["ignore"]})
        assert (label == values["ignore"]).sum() == case["ignore_voxels"]
        assert (label == 0).sum() == case["background_voxels"] > 0
    assert verify_manifest(out) == []
    first = manifest["cases"][0]["label"]
    (out / first).write_bytes(b"tampered")
    assert verify_manifest(out) == [first]
    assert not list(out.rglob(".partial-*"))


def test_export_uses_revised_over_original(ws: Workspace, tmp_path: Path) -> None:
    scan = "btcv:demo000"
    shape = tuple(int(s) for s in review.scan_row(ws, scan)["shape"])
    fixed = np.zeros(shape, bool)
    fixed[10:14, 10:14, 10:14] = True
    review.correct(ws, scan, "liver", fixed, "Dr Ada")
    manifest = export_nnunet(ws, tmp_path / "d", classes=["liver"], sources=["btcv"], progress=False)
    (case,) = manifest["cases"]
    assert case["origins"] == {"liver": "revised"}
    label, _ = _read(tmp_path / "d" / case["label"])
    assert (label == 1).sum() == 4**3


def test_an_export_of_two_partially_labelled_sources_passes_nnunets_integrity_check(
    mixed_ws: Any, tmp_path: Path
) -> None:
    """nnU-Net's own ``verify_dataset_integrity`` (labels consecutive, ignore highest, geometry, files)
    accepts an export of kits23 (kidneys) + lits (liver) with the spleen unknown everywhere."""
    verify = pytest.importorskip(
        "nnunetv2.experiment_planning.verify_dataset_integrity",
        reason="nnunetv2 is not installed (optional extra: pip install .[nnunet])",
    )
    out = tmp_path / "Dataset777_Mixed"
    manifest = export_nnunet(mixed_ws.ws, out, classes=mixed_ws.classes, progress=False)
    assert {c["source"] for c in manifest["cases"]} == {"kits23", "lits"}
    assert not any(c["complete"] for c in manifest["cases"])
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"]["ignore"] == max(dataset["labels"].values()) == 5
    assert dataset["file_ending"] == ".nii.gz" and dataset["numTraining"] == 4
    verify.verify_dataset_integrity(str(out), num_processes=1)  # raises on any problem


def test_intensity_properties_replace_nnunets_in_a_fingerprint(mixed_ws: Any, tmp_path: Path) -> None:
    out = tmp_path / "d"
    manifest = export_nnunet(mixed_ws.ws, out, classes=mixed_ws.classes, progress=False)
    fingerprint = tmp_path / "dataset_fingerprint.json"
    # what nnU-Net's fingerprint holds: statistics over label > 0, ignore voxels included
    fingerprint.write_text(json.dumps({"spacings": [], PROPERTIES_KEY: {"0": {"mean": -400.0}}}))
    written = patch_intensity_properties(fingerprint, out / "manifest.json")
    doc = json.loads(fingerprint.read_text())
    assert doc[PROPERTIES_KEY] == written == manifest[PROPERTIES_KEY] and doc["spacings"] == []
    with pytest.raises(ValueError, match="not an nnU-Net fingerprint"):
        patch_intensity_properties(out / "dataset.json", out / "manifest.json")
