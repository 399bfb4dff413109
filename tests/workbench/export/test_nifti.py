"""The files of every export: unique, safe case names, CT voxel types, atomic NIfTI writes with their
hash, written with no catalog connection open."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from storage.catalog import Catalog
from storage.files import name_digest
from storage.workspace import Workspace
from workbench.export import ct_array, export_case_name, scan_export_name, write_nifti
from workbench.export import nifti as nifti_module
from workbench.export.nifti import case_names

#: The three export formats (the ``exporters`` fixture).
FORMATS = ("abdomenatlas", "monai", "nnunet")
#: nnU-Net v2 case identifiers become file names ``{case}_0000.nii.gz``: no spaces, no separators.
NNUNET_CASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@pytest.mark.parametrize(
    ("source", "case", "expected"),
    [
        ("kits23", "case_00001", "kits23_case_00001"),
        ("x", "../../etc", f"x_etc-{name_digest('x:../../etc')}"),
        ("chaos_ct", "1 2", f"chaos_ct_1_2-{name_digest('chaos_ct:1 2')}"),
        ("kits23", "case 1", f"kits23_case_1-{name_digest('kits23:case 1')}"),
        ("kits23", "case(1)", f"kits23_case_1-{name_digest('kits23:case(1)')}"),
    ],
)
def test_case_names_are_safe_and_unique(source: str, case: str, expected: str) -> None:
    assert export_case_name(source, case) == expected == scan_export_name(f"{source}:{case}")
    assert NNUNET_CASE.fullmatch(expected)


def test_a_case_never_takes_the_name_of_a_case_of_a_longer_source_id() -> None:
    own = export_case_name("totalsegmentator_v1", "s0001")
    assert own == "totalsegmentator_v1_s0001"
    assert export_case_name("totalsegmentator", "v1_s0001") != own


def test_case_names_refuse_a_duplicate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert case_names(["kits23:case_1", "kits23:case 1"], tmp_path) == {
        "kits23:case_1": "kits23_case_1",
        "kits23:case 1": f"kits23_case_1-{name_digest('kits23:case 1')}",
    }
    monkeypatch.setattr(nifti_module, "scan_export_name", lambda scan_id: "same")
    with pytest.raises(HarmonizeError, match="would both be exported as same"):
        case_names(["kits23:a", "kits23:b"], tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_names_export_to_as_many_cases_as_scans(
    fmt: str, hostile_ws: Workspace, exporters: dict[str, Any], hostile_cases: tuple[str, ...], tmp_path: Path
) -> None:
    out = tmp_path / fmt
    manifest = exporters[fmt](hostile_ws, out)
    names = {c["case"]: c["scan_id"] for c in manifest["cases"]}
    assert sorted(names.values()) == sorted(f"kits23:{c}" for c in hostile_cases)
    assert len(names) == 3 and all(NNUNET_CASE.fullmatch(n) for n in names)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert {c["case"]: c["scan_id"] for c in on_disk["cases"]} == names  # each name maps back to its scan
    if fmt == "abdomenatlas":
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    else:
        assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    again = exporters[fmt](hostile_ws, tmp_path / "again")
    assert {c["case"]: c["scan_id"] for c in again["cases"]} == names  # stable per scan


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_catalog_connection_is_open_while_case_files_are_written(
    fmt: str,
    hostile_ws: Workspace,
    exporters: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = {"open": 0, "opened": 0}
    open_at_write: list[int] = []
    real_connect, real_save = Catalog.connect, nifti_module.save_nifti

    @contextmanager
    def counting_connect(self: Catalog, *, read_only: bool = False) -> Iterator[Any]:
        with real_connect(self, read_only=read_only) as con:
            counts["open"] += 1
            counts["opened"] += 1
            try:
                yield con
            finally:
                counts["open"] -= 1

    def watched_save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
        open_at_write.append(counts["open"])
        real_save(array, affine, path)

    monkeypatch.setattr(Catalog, "connect", counting_connect)
    monkeypatch.setattr(nifti_module, "save_nifti", watched_save)
    monkeypatch.setattr("workbench.export.abdomenatlas.save_nifti", watched_save)
    manifest = exporters[fmt](hostile_ws, tmp_path / fmt)
    assert len(manifest["cases"]) == 3
    assert counts["opened"] > 0  # the hook saw the export's catalog reads
    assert open_at_write and set(open_at_write) == {0}


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.array([-1024, 0, 3000], np.int32), np.int16),
        (np.array([-1000.0, 40.0]), np.int16),
        (np.array([0.5, 40.0]), np.float32),
        (np.array([0, 40_000], np.int32), np.float32),
    ],
)
def test_ct_array_is_int16_where_integral(array: np.ndarray, dtype: type) -> None:
    out = ct_array(array)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, array)


def test_write_nifti_is_atomic_and_returns_the_hash(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    path = tmp_path / "labels.nii.gz"
    digest = write_nifti(np.ones((3, 4, 5), np.uint8), affine, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]  # no temporary sibling is left
    img = nib.load(path)
    assert np.allclose(img.get_qform(), affine) and np.allclose(img.get_sform(), affine)
