"""read_png_stack: CHAOS-style PNG masks (one per DICOM file, paired by file name order) on the real
GE series, whose file names run opposite to the slice positions just like CHAOS CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from harmonize.errors import HarmonizeError
from harmonize.readers import read_dicom_series, read_nifti, read_png_stack
from harmonize.readers.png_stack import png_files


@pytest.fixture(scope="module")
def ct_dir(shared_fixtures: Path) -> Path:
    return shared_fixtures / "dicom_ct" / "ct-3slice"


@pytest.fixture(scope="module")
def ct(ct_dir: Path):
    return read_dicom_series(ct_dir)


def files_by_name(ct_dir: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(ct_dir.glob("*.dcm"))]


def slice_of_file(volume_array: np.ndarray, ds: pydicom.Dataset) -> int:
    """The volume slice holding this file's pixels, found by content (independent of the reader's meta)."""
    expected = ds.pixel_array.T.astype(np.int32) + int(ds.RescaleIntercept)
    return next(k for k in range(volume_array.shape[2]) if np.array_equal(volume_array[:, :, k], expected))


def write_pngs(folder: Path, images: list[np.ndarray], stem: str = "liver_GT_") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{stem}{i:03d}.png")
    return folder


def test_round_trip_of_a_mask_on_the_dicom_grid(tmp_path: Path, ct_dir: Path, ct) -> None:
    mask = np.zeros(ct.shape, np.uint8)  # (columns, rows, slices)
    mask[100:180, 300:340, 0] = 255  # a different, non-square, off-centre box per slice
    mask[20:30, 400:500, 1] = 255
    mask[250:260, 5:15, 2] = 255
    # CHAOS writes PNG i for the i-th DICOM file by name, as a (rows, columns) image.
    pngs = [mask[:, :, slice_of_file(ct.array, ds)].T.copy() for ds in files_by_name(ct_dir)]
    labels = read_png_stack(write_pngs(tmp_path / "Ground", pngs), reference=ct)
    assert labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, mask)
    np.testing.assert_array_equal(labels.affine, ct.affine)
    assert labels.meta == {
        "format": "png_stack",
        "dtype": "uint8",
        "slice_count": 3,
        "series_uid_sha1": ct.meta["series_uid_sha1"],
    }


@pytest.mark.parametrize("name_rank", [0, 1, 2])
@pytest.mark.parametrize(("row", "col"), [(10, 300), (480, 7), (256, 256)])
def test_png_pixel_lands_at_the_world_position_of_its_dicom_pixel(
    tmp_path: Path, ct_dir: Path, ct, name_rank: int, row: int, col: int
) -> None:
    rows, cols = 512, 512
    pngs = [np.zeros((rows, cols), np.uint8) for _ in range(3)]
    pngs[name_rank][row, col] = 255
    labels = read_png_stack(write_pngs(tmp_path / "Ground", pngs), reference=ct)
    hits = np.argwhere(labels.array == 255)
    assert len(hits) == 1
    ds = files_by_name(ct_dir)[name_rank]
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = ipp + iop[:3] * col_spacing * col + iop[3:] * row_spacing * row  # DICOM PS3.3 C.7.6.2.1.1
    np.testing.assert_allclose(labels.world(hits)[0], lps * [-1, -1, 1], atol=1e-4)
    # The first PNG belongs to the first file by name (01.dcm), the most superior slice here.
    assert hits[0][2] == 2 - name_rank


def test_png_count_must_match_slices(tmp_path: Path, ct) -> None:
    folder = write_pngs(tmp_path / "Ground", [np.zeros((512, 512), np.uint8)] * 2)
    with pytest.raises(HarmonizeError, match="2 PNG masks but the reference series has 3 slices") as err:
        read_png_stack(folder, reference=ct)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("shape", [(512, 500), (500, 512), (256, 256)])
def test_png_size_must_match_rows_and_columns(tmp_path: Path, ct, shape: tuple[int, int]) -> None:
    images = [np.zeros((512, 512), np.uint8), np.zeros(shape, np.uint8), np.zeros((512, 512), np.uint8)]
    folder = write_pngs(tmp_path / "Ground", images)
    with pytest.raises(HarmonizeError, match=r"liver_GT_001\.png") as err:
        read_png_stack(folder, reference=ct)
    assert f"{shape[0]} rows x {shape[1]} columns" in str(err.value)


def test_grey_rgb_png_accepted_and_colour_refused(tmp_path: Path, ct) -> None:
    grey = np.zeros((512, 512, 3), np.uint8)
    grey[5, 6] = 255
    folder = write_pngs(tmp_path / "rgb", [grey, grey, grey])
    assert int((read_png_stack(folder, reference=ct).array == 255).sum()) == 3
    colour = grey.copy()
    colour[5, 6] = (255, 0, 0)
    folder = write_pngs(tmp_path / "colour", [grey, colour, grey])
    with pytest.raises(HarmonizeError, match="colour PNG"):
        read_png_stack(folder, reference=ct)


def test_reference_without_file_order_is_refused(tmp_path: Path, shared_fixtures: Path) -> None:
    reference = read_nifti(shared_fixtures / "totalsegmentator/example_ct_sm.nii.gz")
    z = reference.shape[2]
    folder = write_pngs(tmp_path / "Ground", [np.zeros(reference.shape[1::-1], np.uint8)] * z)
    with pytest.raises(HarmonizeError, match="filename_rank"):
        read_png_stack(folder, reference=reference)


def test_damaged_png_and_empty_folder(tmp_path: Path, ct) -> None:
    folder = write_pngs(tmp_path / "Ground", [np.zeros((512, 512), np.uint8)] * 3)
    (folder / "liver_GT_002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(HarmonizeError, match=r"liver_GT_002\.png"):
        read_png_stack(folder, reference=ct)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarmonizeError, match=r"no \.png files"):
        read_png_stack(tmp_path / "empty", reference=ct)


def test_png_files_sort_by_number(tmp_path: Path) -> None:
    for i in (10, 2, 1, 0):
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / f"liver_GT_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in png_files(tmp_path)] == [f"liver_GT_{i}.png" for i in (0, 1, 2, 10)]
