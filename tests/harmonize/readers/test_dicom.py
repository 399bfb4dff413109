"""read_dicom_series on the real GE CT slices and on edited copies of them written to tmp_path.

Expected values come from the DICOM standard's per-slice formula (PS3.3 C.7.6.2.1.1), applied to each
file on its own, never from the reader's sorted stack.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from harmonize.errors import HarmonizeError
from harmonize.readers import read_dicom_series, series_uid_sha1
from harmonize.readers.dicom import natural_key, redact

# Keywords whose values identify a patient, a study, a visit or an institution, or are raw UIDs.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAge",
    "OtherPatientIDs",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ProtocolName",
)


@pytest.fixture(scope="module")
def ct_dir(shared_fixtures: Path) -> Path:
    return shared_fixtures / "dicom_ct" / "ct-3slice"


@pytest.fixture(scope="module")
def slices(ct_dir: Path) -> list[Dataset]:
    """The real slices in file name order (01, 02, 03)."""
    return [pydicom.dcmread(f) for f in sorted(ct_dir.glob("*.dcm"))]


def ras_of_pixel(ds: Dataset, row: int, col: int) -> np.ndarray:
    """RAS+ mm of pixel (row, col) of one slice, straight from its own header (DICOM PS3.3 C.7.6.2.1.1)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = ipp + iop[:3] * col_spacing * col + iop[3:] * row_spacing * row
    return lps * np.array([-1.0, -1.0, 1.0])


def slice_index_of(volume_array: np.ndarray, ds: Dataset) -> int:
    """k such that the volume's slice k holds this file's rescaled pixels (found by content)."""
    expected = (ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).T
    matches = [k for k in range(volume_array.shape[2]) if np.array_equal(volume_array[:, :, k], expected)]
    assert len(matches) == 1, f"slice of {ds.filename} found {len(matches)} times"
    return matches[0]


def write_series(folder: Path, datasets: list[Dataset], names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / (names[i] if names else f"{i:02d}.dcm"))
    return folder


def copies(slices: list[Dataset]) -> list[Dataset]:
    return [pydicom.dcmread(ds.filename) for ds in slices]


def test_real_series_shape_dtype_and_meta(ct_dir: Path, slices: list[Dataset]) -> None:
    volume = read_dicom_series(ct_dir)
    assert volume.shape == (int(slices[0].Columns), int(slices[0].Rows), 3) == (512, 512, 3)
    assert volume.array.dtype == np.int16  # intercept -1024 is integral and HU fit int16
    assert volume.meta["format"] == "dicom"
    assert volume.meta["modality"] == "CT"
    assert volume.meta["slice_count"] == 3
    assert volume.meta["rescale_intercept"] == -1024.0
    assert volume.meta["slice_spacing_mm"] == pytest.approx(1.0, abs=1e-4)
    assert volume.axcodes == ("L", "P", "S")
    assert volume.spacing == pytest.approx((0.810547, 0.810547, 1.0), abs=1e-5)


@pytest.mark.parametrize("name_rank", [0, 1, 2])
@pytest.mark.parametrize(("row", "col"), [(0, 0), (0, 511), (511, 0), (100, 400), (333, 17)])
def test_each_pixel_lands_at_its_dicom_world_position(
    ct_dir: Path, slices: list[Dataset], name_rank: int, row: int, col: int
) -> None:
    volume = read_dicom_series(ct_dir)
    ds = slices[name_rank]
    k = slice_index_of(volume.array, ds)
    np.testing.assert_allclose(
        volume.world(np.array([[col, row, k]]))[0], ras_of_pixel(ds, row, col), atol=1e-4
    )
    hu = int(ds.pixel_array[row, col]) + int(ds.RescaleIntercept)
    assert volume.array[col, row, k] == hu


def test_slices_sorted_by_position_and_filename_rank_recorded(ct_dir: Path, slices: list[Dataset]) -> None:
    volume = read_dicom_series(ct_dir)
    # 01.dcm is the most superior (z -126.69), so ascending position puts it last.
    z_by_name = [float(ds.ImagePositionPatient[2]) for ds in slices]
    assert z_by_name == sorted(z_by_name, reverse=True)
    assert volume.meta["filename_rank"] == [2, 1, 0]
    assert [slice_index_of(volume.array, ds) for ds in slices] == [2, 1, 0]
    z_world = volume.world(np.array([[0, 0, k] for k in range(3)]))[:, 2]
    assert np.all(np.diff(z_world) > 0)


def test_single_file_path_reads_its_whole_series(ct_dir: Path) -> None:
    whole = read_dicom_series(ct_dir)
    via_file = read_dicom_series(ct_dir / "02.dcm")
    np.testing.assert_array_equal(via_file.array, whole.array)
    np.testing.assert_array_equal(via_file.affine, whole.affine)


def test_meta_holds_no_identifying_value(ct_dir: Path, slices: list[Dataset]) -> None:
    volume = read_dicom_series(ct_dir)
    flat = repr(volume.meta)
    leaked = []
    for ds in slices:
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 2 and value in flat:
                leaked.append((keyword, value))
    assert leaked == []
    # The real file does carry identifying values, so the check above had something to find.
    assert str(slices[0].PatientName) and str(slices[0].AccessionNumber)
    uid = str(slices[0].SeriesInstanceUID)
    assert volume.meta["series_uid_sha1"] == hashlib.sha1(uid.encode()).hexdigest() == series_uid_sha1(uid)
    assert not any("patient" in key.lower() or key.lower().endswith("uid") for key in volume.meta)


def _compress(ds: Dataset, syntax: str) -> Dataset:
    if syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    else:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_series_decodes_to_identical_pixels(
    tmp_path: Path, ct_dir: Path, slices: list[Dataset], syntax: str
) -> None:
    if syntax == JPEG2000Lossless:
        from pydicom.pixels import get_encoder

        if not get_encoder(JPEG2000Lossless).is_available:
            pytest.skip("the installed openjpeg cannot encode JPEG 2000")
    folder = write_series(tmp_path / "c", [_compress(ds, syntax) for ds in copies(slices)])
    assert str(pydicom.dcmread(folder / "00.dcm").file_meta.TransferSyntaxUID) == syntax
    plain = read_dicom_series(ct_dir)
    packed = read_dicom_series(folder)
    assert packed.array.dtype == plain.array.dtype
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_array_equal(packed.affine, plain.affine)
    assert packed.meta["transfer_syntax"] == pydicom.uid.UID(syntax).name


def test_non_square_slices_map_rows_and_columns(tmp_path: Path, slices: list[Dataset]) -> None:
    edited = copies(slices)
    for ds in edited:
        crop = ds.pixel_array[50:250, 100:400].copy()  # 200 rows x 300 columns
        ds.Rows, ds.Columns = crop.shape
        ds.PixelData = crop.tobytes()
    volume = read_dicom_series(write_series(tmp_path / "crop", edited))
    assert volume.shape == (300, 200, 3)
    for ds in edited:
        k = slice_index_of(volume.array, ds)
        for row, col in [(0, 299), (199, 0), (120, 250)]:
            assert volume.array[col, row, k] == int(ds.pixel_array[row, col]) - 1024
            np.testing.assert_allclose(volume.world(np.array([[col, row, k]]))[0], ras_of_pixel(ds, row, col))


@pytest.mark.parametrize(
    ("slope", "intercept", "dtype"),
    [
        (1.0, -1024.0, np.int16),
        (1.0, -32000.0, np.int32),
        (0.5, -1024.0, np.float32),
        (1.0, -1024.5, np.float32),
    ],
)
def test_rescale_applied_with_fitting_dtype(
    tmp_path: Path, slices: list[Dataset], slope: float, intercept: float, dtype: type
) -> None:
    edited = copies(slices)
    for ds in edited:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    volume = read_dicom_series(write_series(tmp_path / "r", edited))
    assert volume.array.dtype == dtype
    for ds in edited:
        k = slice_index_of(volume.array, ds)
        np.testing.assert_allclose(volume.array[:, :, k], ds.pixel_array.T * slope + intercept)


def _stack_of(slices: list[Dataset], zs: list[float]) -> list[Dataset]:
    """Copies of the first real slice at the given z positions, each a distinct instance."""
    out: list[Dataset] = []
    for z in zs:
        ds = pydicom.dcmread(slices[0].filename)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
        ds.SOPInstanceUID = generate_uid()
        out.append(ds)
    return out


def test_gantry_tilt_gives_sheared_affine(tmp_path: Path, slices: list[Dataset]) -> None:
    stack = _stack_of(slices, [0.0, 2.0, 4.0, 6.0])
    for i, ds in enumerate(stack):
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), -200.0 + 0.5 * i, 2.0 * i]
    volume = read_dicom_series(write_series(tmp_path / "tilt", stack))
    # Voxel (0, 0, k) sits at slice k's IPP, LPS y negated: -(-200 + 0.5 k).
    np.testing.assert_allclose(volume.world(np.array([[0, 0, 3]]))[0][1:], [200.0 - 1.5, 6.0])


@pytest.mark.parametrize(
    ("zs", "match"),
    [
        ([0.0, 2.5, 2.5, 5.0], "duplicate slice position"),
        ([0.0, 2.5, 7.5, 10.0], "irregular slice spacing"),
        ([0.0, 2.5, 5.0, 6.0], "irregular slice spacing"),
    ],
)
def test_duplicates_and_gaps_are_refused(
    tmp_path: Path, slices: list[Dataset], zs: list[float], match: str
) -> None:
    folder = write_series(tmp_path / "bad", _stack_of(slices, zs))
    with pytest.raises(HarmonizeError, match=match) as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value)


def test_several_series_need_a_choice(tmp_path: Path, slices: list[Dataset]) -> None:
    edited = copies(slices)
    other_uid = generate_uid()
    intruder = _stack_of(slices, [50.0])[0]
    intruder.SeriesInstanceUID = other_uid
    folder = write_series(tmp_path / "two", [*edited, intruder], ["01.dcm", "02.dcm", "03.dcm", "04.dcm"])
    with pytest.raises(HarmonizeError, match="2 series") as err:
        read_dicom_series(folder)
    # the message names each series by its SHA-1 prefix, never by the UID (it reaches ingest_issue)
    assert other_uid not in str(err.value) and str(slices[0].SeriesInstanceUID) not in str(err.value)
    prefix = series_uid_sha1(other_uid)[:12]
    assert prefix in str(err.value) and str(folder) in str(err.value)
    assert read_dicom_series(folder, series_uid=prefix).shape == (512, 512, 1)
    chosen = read_dicom_series(folder, series_uid=str(slices[0].SeriesInstanceUID))
    assert chosen.shape == (512, 512, 3)
    single = read_dicom_series(folder, series_uid=other_uid)
    assert single.shape == (512, 512, 1)
    assert single.meta["series_uid_sha1"] == series_uid_sha1(other_uid)
    with pytest.raises(HarmonizeError, match="no slice of series") as err:
        read_dicom_series(folder, series_uid="1.2.3.4.5")
    assert "1.2.3.4.5" not in str(err.value)
    assert read_dicom_series(folder / "04.dcm").shape == (512, 512, 1)


def _drop_position(ds: Dataset) -> None:
    del ds.ImagePositionPatient


def _rotate_orientation(ds: Dataset) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def _resize(ds: Dataset) -> None:
    ds.PixelSpacing = [0.5, 0.5]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop_position, "lacks ImagePositionPatient"),
        (_rotate_orientation, "different ImageOrientationPatient"),
        (_resize, "differ in PixelSpacing"),
    ],
)
def test_inconsistent_slices_are_refused(tmp_path: Path, slices: list[Dataset], edit, match: str) -> None:
    edited = copies(slices)
    edit(edited[1])
    folder = write_series(tmp_path / "inconsistent", edited)
    with pytest.raises(HarmonizeError, match=match):
        read_dicom_series(folder)


def test_truncated_pixel_data_names_the_file(tmp_path: Path, ct_dir: Path) -> None:
    folder = tmp_path / "trunc"
    shutil.copytree(ct_dir, folder)
    victim = folder / "02.dcm"
    victim.write_bytes(victim.read_bytes()[:-100_000])
    with pytest.raises(HarmonizeError) as err:
        read_dicom_series(folder)
    assert "02.dcm" in str(err.value)


def test_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a slice")
    with pytest.raises(HarmonizeError, match="no DICOM image slices"):
        read_dicom_series(tmp_path)
    with pytest.raises(HarmonizeError, match="not found"):
        read_dicom_series(tmp_path / "missing")


def test_non_dicom_files_beside_the_slices_are_ignored(tmp_path: Path, ct_dir: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(ct_dir, folder)
    (folder / "README.txt").write_text("exported by a viewer")
    assert read_dicom_series(folder).shape == (512, 512, 3)


def test_label_kind_gives_integers(ct_dir: Path) -> None:
    assert np.issubdtype(read_dicom_series(ct_dir, kind="label").array.dtype, np.integer)


@pytest.mark.parametrize(
    ("names", "ordered"),
    [
        (["i10.dcm", "i2.dcm", "i1.dcm"], ["i1.dcm", "i2.dcm", "i10.dcm"]),
        (["i0010,0000b.dcm", "i0002,0000b.dcm"], ["i0002,0000b.dcm", "i0010,0000b.dcm"]),
        (["IMG-0004-00010.dcm", "IMG-0004-00009.dcm"], ["IMG-0004-00009.dcm", "IMG-0004-00010.dcm"]),
    ],
)
def test_natural_key_orders_numbers_by_value(names: list[str], ordered: list[str]) -> None:
    assert sorted(names, key=natural_key) == ordered


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("bad value 1.2.840.113619.2.55.3 in tag", "bad value uid-", "1.2.840.113619"),
        ("Invalid DA value '20030417'", "Invalid DA value '<number>'", "20030417"),
        ("expected 3 bytes, read 2", "expected 3 bytes, read 2", None),
    ],
)
def test_redact_removes_uids_and_long_numbers(text: str, kept: str, gone: str | None) -> None:
    out = redact(text)
    assert kept in out and (gone is None or gone not in out)


def test_slice_files_named_by_uid_are_named_by_hash(tmp_path: Path, slices: list[Dataset]) -> None:
    uid = str(slices[0].SOPInstanceUID)
    folder = write_series(tmp_path / "uidnames", copies(slices), [f"{uid}.dcm", "02.dcm", "03.dcm"])
    victim = folder / f"{uid}.dcm"
    victim.write_bytes(victim.read_bytes()[:-100_000])
    with pytest.raises(HarmonizeError) as err:
        read_dicom_series(folder)
    assert uid not in str(err.value) and "uid-" in err.value.path


def test_unfetched_slices_are_named_as_broken_links(tmp_path: Path) -> None:
    folder = tmp_path / "annexed"
    folder.mkdir()
    (folder / "01.dcm").symlink_to(tmp_path / "annex" / "missing-object")
    with pytest.raises(HarmonizeError, match="broken link") as err:
        read_dicom_series(folder)
    assert "datalad get" in str(err.value) and "01.dcm" in err.value.path
