"""read_nrrd on the real dcmqi label maps (checked against the DICOM series they were drawn on) and on
NRRD files written to tmp_path in every anatomical space."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest

from harmonize.errors import HarmonizeError
from harmonize.readers import read_dicom_series, read_nrrd, read_volume

LABEL_MAPS = ["liver_seg.nrrd", "liver_spine_seg.nrrd"]


@pytest.fixture(scope="module")
def dicom_ct(shared_fixtures: Path) -> Path:
    return shared_fixtures / "dicom_ct"


def dicom_world_of(ct_dir: Path, ijk: np.ndarray) -> np.ndarray:
    """RAS+ mm of (column, row, slice) voxels, from the DICOM headers alone (slice = rank by position)."""
    slices = sorted(
        (pydicom.dcmread(f, stop_before_pixels=True) for f in ct_dir.glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),  # axial series: the normal is +z
    )
    out = np.empty((len(ijk), 3))
    for n, (col, row, k) in enumerate(ijk):
        ds = slices[int(k)]
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        lps = ipp + iop[:3] * col_spacing * col + iop[3:] * row_spacing * row
        out[n] = lps * [-1.0, -1.0, 1.0]
    return out


@pytest.mark.parametrize("name", LABEL_MAPS)
def test_label_map_lies_on_the_dicom_grid(dicom_ct: Path, name: str) -> None:
    labels = read_nrrd(dicom_ct / name, "label")
    ct = read_dicom_series(dicom_ct / "ct-3slice")
    # Same axis order as the series ((column, row, slice), dcmqi writes the LPS grid of the DICOM):
    assert labels.shape == ct.shape == (512, 512, 3)
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-3)
    assert labels.axcodes == ("L", "P", "S")
    ijk = np.argwhere(labels.array > 0)
    assert len(ijk) > 100_000
    sample = ijk[:: max(1, len(ijk) // 500)]
    np.testing.assert_allclose(
        labels.world(sample), dicom_world_of(dicom_ct / "ct-3slice", sample), atol=1e-3
    )


@pytest.mark.parametrize(
    ("name", "value", "low", "high"),
    [
        ("liver_seg.nrrd", 1, 0.0, 100.0),  # unenhanced liver parenchyma (transposed: about -130)
        ("liver_spine_seg.nrrd", 1, 0.0, 100.0),
        ("liver_spine_seg.nrrd", 2, 200.0, 600.0),  # vertebral bone (transposed: about -40)
    ],
)
def test_label_voxels_sit_on_the_right_tissue(
    dicom_ct: Path, name: str, value: int, low: float, high: float
) -> None:
    labels = read_nrrd(dicom_ct / name, "label")
    ct = read_dicom_series(dicom_ct / "ct-3slice")
    mean_hu = float(ct.array[labels.array == value].mean())
    assert low < mean_hu < high


def test_real_label_values_and_meta(dicom_ct: Path) -> None:
    labels = read_volume(dicom_ct / "liver_spine_seg.nrrd", kind="label")
    assert labels.array.dtype == np.int16
    assert set(np.unique(labels.array).tolist()) == {0, 1, 2}
    assert labels.meta == {"format": "nrrd", "dtype": "int16", "space": "left-posterior-superior"}


# One physical grid: voxel (i, j, k) at RAS+ (10 - 0.7 i, 20 + 0.9 j, -30 + 2.5 k) (an LAS-ordered array).
RAS_ORIGIN = np.array([10.0, 20.0, -30.0])
RAS_AXES = np.array([[-0.7, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 2.5]])  # rows: axis i, j, k
SPACE_SIGNS = {
    "right-anterior-superior": [1, 1, 1],
    "RAS": [1, 1, 1],
    "left-anterior-superior": [-1, 1, 1],
    "left-posterior-superior": [-1, -1, 1],
    "LPS": [-1, -1, 1],
}


def _write(path: Path, data: np.ndarray, space: str | None, **extra) -> Path:
    header: dict = dict(extra)
    if space is not None:
        signs = np.array(SPACE_SIGNS.get(space, [1, 1, 1]), dtype=float)
        header["space"] = space
        header["space directions"] = RAS_AXES * signs
        header["space origin"] = RAS_ORIGIN * signs
    nrrd.write(str(path), data, header)
    return path


@pytest.mark.parametrize("space", list(SPACE_SIGNS))
def test_every_anatomical_space_gives_the_same_ras_grid(tmp_path: Path, space: str) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = read_nrrd(_write(tmp_path / "v.nrrd", data, space))
    np.testing.assert_array_equal(volume.array, data)
    ijk = np.array([[0, 0, 0], [3, 0, 0], [0, 4, 0], [0, 0, 5], [3, 4, 5]])
    expected = np.array([RAS_ORIGIN + np.array([-0.7 * i, 0.9 * j, 2.5 * k]) for i, j, k in ijk])
    np.testing.assert_allclose(volume.world(ijk), expected)
    assert volume.axcodes == ("L", "A", "S")


def test_detached_header(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / "v.nhdr"
    signs = np.array([-1.0, -1.0, 1.0])
    header = {
        "space": "left-posterior-superior",
        "space directions": RAS_AXES * signs,
        "space origin": RAS_ORIGIN * signs,
    }
    nrrd.write(str(path), data, header, detached_header=True)
    volume = read_volume(path, kind="label")
    np.testing.assert_array_equal(volume.array, data)
    np.testing.assert_allclose(
        volume.world(np.array([[2, 3, 4]])), [RAS_ORIGIN + np.array([-1.4, 2.7, 10.0])]
    )


def _segmentation_layers(path: Path, layers: int) -> Path:
    """A 3D Slicer style .seg.nrrd: a 'list' axis first (no space direction), Segment keys."""
    data = np.zeros((layers, 4, 5, 6), np.uint8)
    data[0, 1:3, 1:4, 2:5] = 1
    signs = np.array([-1.0, -1.0, 1.0])
    directions = np.vstack([np.full(3, np.nan), RAS_AXES * signs])
    header = {
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": directions,
        "space origin": RAS_ORIGIN * signs,
        "Segment0_ID": "Segment_1",
        "Segment0_Name": "liver",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
    }
    nrrd.write(str(path), data, header)
    return path


def test_single_layer_segmentation_is_squeezed(tmp_path: Path) -> None:
    volume = read_nrrd(_segmentation_layers(tmp_path / "seg.seg.nrrd", 1), "label")
    assert volume.shape == (4, 5, 6)
    assert int(volume.array.sum()) == 2 * 3 * 3
    np.testing.assert_allclose(volume.world(np.array([[1, 1, 1]])), [RAS_ORIGIN + np.array([-0.7, 0.9, 2.5])])


def test_overlapping_layers_are_refused(tmp_path: Path) -> None:
    path = _segmentation_layers(tmp_path / "seg.seg.nrrd", 2)
    with pytest.raises(HarmonizeError, match="2 layers") as err:
        read_nrrd(path, "label")
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("space", "extra", "match"),
    [
        (None, {"spacings": [1.0, 1.0, 1.0]}, "not an anatomical 3D space"),
        ("scanner-xyz", {}, "not an anatomical 3D space"),
        ("3D-right-handed", {}, "not an anatomical 3D space"),
    ],
)
def test_non_anatomical_geometry_is_refused(
    tmp_path: Path, space: str | None, extra: dict, match: str
) -> None:
    path = _write(tmp_path / "v.nrrd", np.zeros((2, 3, 4), np.uint8), space, **extra)
    with pytest.raises(HarmonizeError, match=match):
        read_nrrd(path)


def test_missing_space_directions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), np.zeros((2, 3, 4), np.uint8), {"space": "left-posterior-superior"})
    with pytest.raises(HarmonizeError, match="space directions"):
        read_nrrd(path)


@pytest.mark.parametrize("keep", [0.5, 0.95, 60])
def test_truncated_real_file_raises_naming_it(dicom_ct: Path, tmp_path: Path, keep: float | int) -> None:
    data = (dicom_ct / "liver_seg.nrrd").read_bytes()
    path = tmp_path / "cut.nrrd"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(HarmonizeError) as err:
        read_nrrd(path, "label")
    assert str(path) in str(err.value)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "garbage.nrrd"
    path.write_bytes(b"\x89PNG not an nrrd\n" * 10)
    with pytest.raises(HarmonizeError, match=r"garbage\.nrrd"):
        read_nrrd(path)
    with pytest.raises(HarmonizeError, match="file not found"):
        read_nrrd(tmp_path / "missing.nrrd")


def test_float_labels_cast_and_nan_images_refused(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), np.float32)
    data[1, 1, 1] = 2.0
    volume = read_nrrd(_write(tmp_path / "f.nrrd", data, "RAS"), "label")
    assert volume.array.dtype == np.uint8 and volume.array[1, 1, 1] == 2
    data[0, 0, 0] = np.nan
    with pytest.raises(HarmonizeError, match="NaN/inf voxels"):
        read_nrrd(_write(tmp_path / "n.nrrd", data, "RAS"))
    data[0, 0, 0] = 0.25
    with pytest.raises(HarmonizeError, match="non-integral"):
        read_nrrd(_write(tmp_path / "q.nrrd", data, "RAS"), "label")
