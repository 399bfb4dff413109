"""The files of every export: safe case names, CT voxel types, atomic NIfTI writes with their hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from workbench.export import ct_array, export_case_name, write_nifti


@pytest.mark.parametrize(
    ("source", "case", "expected"),
    [
        ("kits23", "case_00001", "kits23_case_00001"),
        ("x", "../../etc", "x_.._.._etc"),
        ("chaos_ct", "1 2", "chaos_ct_1_2"),
    ],
)
def test_case_names_are_safe(source: str, case: str, expected: str) -> None:
    assert export_case_name(source, case) == expected
    assert "/" not in export_case_name(source, case)


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
