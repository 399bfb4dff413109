"""read_nifti on the real TotalSegmentator and AMOS files, and on damaged or unusual files in tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.readers import read_nifti

REAL_FILES = [
    ("totalsegmentator/example_ct.nii.gz", "image"),
    ("totalsegmentator/example_ct_sm.nii.gz", "image"),
    ("totalsegmentator/example_seg.nii.gz", "label"),
    ("totalsegmentator/example_seg_fast_force_split.nii.gz", "label"),
    ("totalsegmentator/example_seg_v1.nii.gz", "label"),
    ("amos/amos_0013_label.nii.gz", "label"),
]


@pytest.mark.parametrize(("relpath", "kind"), REAL_FILES)
def test_real_file_matches_nibabel(shared_fixtures: Path, relpath: str, kind: str) -> None:
    path = shared_fixtures / relpath
    expected: Any = nib.load(path)
    volume = read_nifti(path, kind)  # type: ignore[arg-type]
    np.testing.assert_array_equal(volume.affine, expected.affine)
    raw = np.asanyarray(expected.dataobj)
    assert volume.array.dtype == raw.dtype  # unscaled files keep their on-disk dtype
    np.testing.assert_array_equal(volume.array, raw)
    assert volume.meta["format"] == "nifti"
    assert volume.meta["dtype"] == str(raw.dtype)
    if kind == "label":
        assert np.issubdtype(volume.array.dtype, np.integer)


def test_amos_label_geometry(shared_fixtures: Path) -> None:
    volume = read_nifti(shared_fixtures / "amos/amos_0013_label.nii.gz", "label")
    assert volume.shape == (512, 512, 82)
    assert volume.axcodes == ("L", "A", "S") == nib.aff2axcodes(volume.affine)
    assert volume.array.dtype == np.uint16
    assert set(np.unique(volume.array).tolist()) == set(range(16))  # background + 15 AMOS classes


def test_totalsegmentator_ct_is_ras_at_3mm(shared_fixtures: Path) -> None:
    volume = read_nifti(shared_fixtures / "totalsegmentator/example_ct.nii.gz")
    assert volume.shape == (122, 101, 112)
    assert volume.axcodes == ("R", "A", "S")
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    # Hounsfield units: outside air near -1000 (resampling undershoots a little), bone above +500.
    assert volume.array.min() > -1500 and np.percentile(volume.array, 1) < -900 and volume.array.max() > 500


def _save(array: np.ndarray, path: Path, slope: float | None = None, inter: float | None = None) -> Path:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(array, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def _cut(source: Path, target: Path, keep: int | float) -> Path:
    data = source.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    target.write_bytes(data[:n])
    return target


@pytest.mark.parametrize(
    ("keep", "suffix"),
    [(0.5, ".nii.gz"), (0.9, ".nii.gz"), (200, ".nii.gz"), (40, ".nii.gz"), (0.5, ".nii"), (200, ".nii")],
)
def test_truncated_real_file_raises_naming_it(
    shared_fixtures: Path, tmp_path: Path, keep, suffix: str
) -> None:
    source = shared_fixtures / "totalsegmentator/example_seg.nii.gz"
    if suffix == ".nii":
        plain = tmp_path / "plain.nii"
        plain.write_bytes(gzip.decompress(source.read_bytes()))
        source = plain
    truncated = _cut(source, tmp_path / f"truncated{suffix}", keep)
    with pytest.raises(HarmonizeError) as err:
        read_nifti(truncated, "label")
    assert err.value.path == str(truncated)
    assert str(truncated) in str(err.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.nii.gz", b"this is not gzip at all" * 20),
        ("garbage.nii", b"\x00" * 400),
        ("gzipped_garbage.nii.gz", gzip.compress(b"\x07" * 1000)),
        ("empty.nii.gz", b""),
    ],
)
def test_corrupt_file_raises_naming_it(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(HarmonizeError) as err:
        read_nifti(path)
    assert str(path) in str(err.value)


def test_corrupted_gzip_payload_raises(shared_fixtures: Path, tmp_path: Path) -> None:
    data = bytearray((shared_fixtures / "totalsegmentator/example_seg.nii.gz").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # CRC / deflate stream broken in the voxel block
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(HarmonizeError, match=r"flipped\.nii\.gz"):
        read_nifti(path, "label")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HarmonizeError, match="file not found"):
        read_nifti(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize(
    ("shape", "ok"),
    [
        ((4, 5, 6), True),
        ((4, 5, 6, 1), True),
        ((4, 5, 6, 1, 1), True),
        ((4, 5, 6, 2), False),
        ((4, 5), False),
    ],
)
def test_dimensionality(tmp_path: Path, shape: tuple[int, ...], ok: bool) -> None:
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    path = _save(data, tmp_path / "d.nii.gz")
    if ok:
        volume = read_nifti(path)
        assert volume.shape == (4, 5, 6)
        np.testing.assert_array_equal(volume.array, data.reshape(4, 5, 6))
    else:
        with pytest.raises(HarmonizeError, match="3D volume") as err:
            read_nifti(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["image", "label"])
def test_non_finite_voxels_are_refused(tmp_path: Path, bad: float, kind: str) -> None:
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = bad
    path = _save(data, tmp_path / "nan.nii.gz")
    with pytest.raises(HarmonizeError, match="NaN/inf voxels") as err:
        read_nifti(path, kind)  # type: ignore[arg-type]
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0.0, 1.0, 2.0, 15.0], np.uint8),
        ([0.0, 300.0], np.uint16),
        ([-1.0, 0.0, 5.0], np.int8),
        ([0.0, 70000.0], np.uint32),
        ([-200.0, 3.0], np.int16),
    ],
)
def test_float_labels_with_whole_values_are_cast(tmp_path: Path, values: list[float], dtype: type) -> None:
    data = np.zeros((2, 3, 4), np.float32)
    data.flat[: len(values)] = values
    volume = read_nifti(_save(data, tmp_path / "f.nii.gz"), "label")
    assert volume.array.dtype == dtype
    np.testing.assert_array_equal(volume.array, data.astype(np.int64))


def test_float_labels_with_fractions_are_refused(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), np.float32)
    data[0, 0, 0] = 1.5
    with pytest.raises(HarmonizeError, match="non-integral"):
        read_nifti(_save(data, tmp_path / "frac.nii.gz"), "label")
    assert read_nifti(tmp_path / "frac.nii.gz", "image").array[0, 0, 0] == 1.5


def test_unscaled_int16_image_stays_int16(tmp_path: Path) -> None:
    data = np.arange(-500, 100, dtype=np.int16).reshape(6, 10, 10)
    volume = read_nifti(_save(data, tmp_path / "i.nii.gz", slope=1.0, inter=0.0))
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, data)


def test_scaled_int16_image_becomes_float32_hu(tmp_path: Path) -> None:
    data = np.arange(0, 600, dtype=np.int16).reshape(6, 10, 10)
    volume = read_nifti(_save(data, tmp_path / "s.nii.gz", slope=0.5, inter=-1024.0))
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, data * 0.5 - 1024.0)
    assert volume.meta["scl_slope"] == 0.5 and volume.meta["scl_inter"] == -1024.0


def test_scaled_label_with_whole_values_is_cast(tmp_path: Path) -> None:
    data = np.arange(0, 24, dtype=np.int16).reshape(2, 3, 4)
    volume = read_nifti(_save(data, tmp_path / "sl.nii.gz", slope=2.0, inter=1.0), "label")
    assert np.issubdtype(volume.array.dtype, np.integer)
    np.testing.assert_array_equal(volume.array, data * 2 + 1)


def test_kind_typo_is_refused(shared_fixtures: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        read_nifti(shared_fixtures / "amos/amos_0013_label.nii.gz", "labels")  # type: ignore[arg-type]


def test_int16_without_scaling_stays_int16(tmp_path: Path) -> None:
    """No float copy of a CT: an unscaled int16 file reads as int16 (speed is checked in benchmarks/)."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    path = _save(data, tmp_path / "ct.nii.gz")
    volume = read_nifti(path)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, data)
