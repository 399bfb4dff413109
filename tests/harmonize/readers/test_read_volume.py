"""read_volume: dispatch by suffix or folder, and the shared image/label contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from harmonize.readers._arrays import finish_array, smallest_int_dtype, squeeze_to_3d
from harmonize.volume import Volume


@pytest.mark.parametrize(
    ("relpath", "kind", "fmt", "shape"),
    [
        ("totalsegmentator/example_ct.nii.gz", "image", "nifti", (122, 101, 112)),
        ("amos/amos_0013_label.nii.gz", "label", "nifti", (512, 512, 82)),
        ("dicom_ct/liver_seg.nrrd", "label", "nrrd", (512, 512, 3)),
        ("dicom_ct/ct-3slice", "image", "dicom", (512, 512, 3)),
    ],
)
def test_dispatch_on_real_files(
    shared_fixtures: Path, relpath: str, kind: str, fmt: str, shape: tuple
) -> None:
    volume = read_volume(shared_fixtures / relpath, kind=kind)  # type: ignore[arg-type]
    assert isinstance(volume, Volume)
    assert volume.meta["format"] == fmt
    assert volume.shape == shape
    if kind == "label":
        assert np.issubdtype(volume.array.dtype, np.integer)


@pytest.mark.parametrize("suffix", [".nii", ".NII.GZ", ".nii.gz"])
def test_nifti_suffixes(tmp_path: Path, suffix: str) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"x{suffix}"
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"x{suffix.lower()}")
    if suffix != suffix.lower():
        (tmp_path / f"x{suffix.lower()}").rename(path)
    np.testing.assert_array_equal(read_volume(path, kind="label").array, data)


def test_single_dicom_file_needs_an_explicit_series_read(shared_fixtures: Path) -> None:
    with pytest.raises(HarmonizeError, match="read_dicom_series"):
        read_volume(shared_fixtures / "dicom_ct/ct-3slice/01.dcm")


@pytest.mark.parametrize("name", ["scan.mha", "scan.png", "scan.nii.zip"])
def test_unsupported_types(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(HarmonizeError, match="unsupported file type") as err:
        read_volume(tmp_path / name)
    assert name in str(err.value)


def test_missing_path_and_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(HarmonizeError, match="not found"):
        read_volume(tmp_path / "nothing.nii.gz")
    with pytest.raises(ValueError, match="kind"):
        read_volume(tmp_path, kind="mask")  # type: ignore[arg-type]


def test_dicom_folder_with_two_series_is_refused(shared_fixtures: Path, tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "series"
    shutil.copytree(shared_fixtures / "dicom_ct/ct-3slice", folder)
    ds = pydicom.dcmread(folder / "03.dcm")
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(folder / "04.dcm")
    with pytest.raises(HarmonizeError, match="series_uid="):
        read_volume(folder)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 255], np.uint8),
        ([0, 256], np.uint16),
        ([0, 65536], np.uint32),
        ([-1, 127], np.int8),
        ([-129, 0], np.int16),
        ([-40000, 0], np.int32),
        ([0, 2**33], np.int64),
        ([], np.uint8),
    ],
)
def test_smallest_int_dtype(values: list[int], dtype: type) -> None:
    assert smallest_int_dtype(np.array(values, dtype=np.float64)) == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16])
@pytest.mark.parametrize("kind", ["image", "label"])
def test_integer_arrays_pass_unchanged(dtype: type, kind: str) -> None:
    array: np.ndarray = np.arange(24).astype(dtype).reshape(2, 3, 4)
    assert finish_array(array, kind, "f") is array  # type: ignore[arg-type]


def test_bool_becomes_uint8_and_complex_is_refused() -> None:
    out = finish_array(np.ones((2, 2, 2), bool), "label", "f")
    assert out.dtype == np.uint8 and int(out.sum()) == 8
    with pytest.raises(HarmonizeError, match="unsupported voxel type"):
        finish_array(np.ones((2, 2, 2), np.complex64), "image", "f")


@pytest.mark.parametrize(
    ("shape", "result"),
    [((2, 3, 4), (2, 3, 4)), ((2, 3, 4, 1), (2, 3, 4)), ((2, 3, 4, 1, 1), (2, 3, 4)), ((2, 3, 1), (2, 3, 1))],
)
def test_squeeze_to_3d_drops_only_trailing_singletons(shape: tuple, result: tuple) -> None:
    assert squeeze_to_3d(np.zeros(shape), "f").shape == result


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 2), (1, 2, 3, 4)])
def test_squeeze_to_3d_refuses_other_shapes(shape: tuple) -> None:
    with pytest.raises(HarmonizeError, match="3D volume"):
        squeeze_to_3d(np.zeros(shape), "f")
