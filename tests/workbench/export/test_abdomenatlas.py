"""AbdomenAtlas export: layout, alignment, known-state files only, manifest hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.export import export_abdomenatlas
from workbench.ingest import ingest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("export")
    native = {}
    for source, seed in (("kits23", 11), ("lits", 12)):
        phantom = make_phantom(
            seed, shape=(64, 56, 40), missing=("kidney_left",) if source == "kits23" else ()
        )
        native[source] = write_native(phantom, get_protocol(source), tmp / source, "case01")
    ws = Workspace.open(tmp / "ws")
    for source in native:
        ingest(ws, source, tmp / source, progress=False)
    return ws, native


def test_layout_alignment_and_states(workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws, native = workspace
    manifest = export_abdomenatlas(ws, tmp_path / "out", progress=False)
    assert [c["case"] for c in manifest["cases"]] == ["kits23_case01", "lits_case01"]
    kits = tmp_path / "out" / "kits23_case01"
    ct = nib.load(kits / "ct.nii.gz")
    files = sorted(p.name for p in (kits / "segmentations").iterdir())
    # KiTS annotates 4 classes: every one gets a file, absent ones (left kidney removed) are all zero
    assert files == ["kidney_cyst.nii.gz", "kidney_left.nii.gz", "kidney_right.nii.gz", "kidney_tumor.nii.gz"]
    truth = native["kits23"].expected  # type: ignore[attr-defined]
    for f in files:
        seg = nib.load(kits / "segmentations" / f)
        assert seg.shape == ct.shape and np.allclose(seg.affine, ct.affine)
        data = np.asanyarray(seg.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        np.testing.assert_array_equal(data.astype(bool), truth[f[: -len(".nii.gz")]])
    assert manifest["cases"][0]["states"]["kidney_left"] == "annotated_absent"
    assert manifest["cases"][0]["states"]["liver"] == "not_annotated"


def test_manifest_hashes_match_the_files(workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws, _ = workspace
    export_abdomenatlas(
        ws, tmp_path / "out", sources=["lits"], classes=["liver", "liver_tumor", "spleen"], progress=False
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (case,) = manifest["cases"]
    assert set(case["sha256"]) == {
        "ct.nii.gz",
        "segmentations/liver.nii.gz",
        "segmentations/liver_tumor.nii.gz",
    }
    for rel, digest in case["sha256"].items():
        assert hashlib.sha256((tmp_path / "out" / case["case"] / rel).read_bytes()).hexdigest() == digest
    ls = ws.catalog.latest_original("lits:case01")
    assert case["bases"] == case["origins"] == {"liver": "original", "liver_tumor": "original"}
    assert case["label_sets"] == {"liver": ls["id"], "liver_tumor": ls["id"]} and ls["version"] == 1
