"""Writers in each source's native layout: paths, values, orientation and truth survive a round trip.

The test reads the files back with its own small readers (nibabel, pydicom, PIL), maps every written
voxel to the phantom grid through the file's own geometry, and decodes native values with a tiny
mapping of its own, so a wrong value, flip or affine shows up as a truth mismatch.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from harmonize.phantoms import make_phantom, write_native
from harmonize.phantoms.native import native_label_map
from harmonize.protocols import Protocol, all_protocols, parse_protocol

PAIR_SIDES = {
    "kidney": ("kidney_left", "kidney_right"),
    "lung": ("lung_left", "lung_right"),
    "adrenal_gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "femur": ("femur_left", "femur_right"),
}


def _synthetic(data: dict) -> Protocol:
    base = {"name": data["id"], "protocol_version": 1}
    return parse_protocol({**base, **data}, data["id"])


# Protocols that exercise every layout kind whatever TOMLs exist yet.
SYNTHETIC = [
    _synthetic(
        {
            "id": "syn_lits_las",
            "layout": {
                "kind": "paired",
                "image": "imagesTr/lits_{case}.nii.gz",
                "label": "labelsTr/lits_{case}.nii.gz",
            },
            "labels": {"1": ["liver"], "2": ["liver", "liver_tumor"]},
            "native": {"axcodes": "LAS"},
        }
    ),
    _synthetic(
        {
            "id": "syn_exclusive_lps",
            "layout": {"kind": "paired", "image": "{split}/{case}_ct.nii", "label": "{split}/{case}_seg.nii"},
            "labels": {
                "1": ["spleen"],
                "2": ["kidney_right"],
                "3": ["kidney_left"],
                "4": ["kidney_cyst"],
                "5": ["lung"],
                "6": ["aorta"],
            },
            "native": {"axcodes": "PSL", "label_dtype": "int16", "image_dtype": "float32"},
        }
    ),
    _synthetic(
        {
            "id": "syn_atlas_files",
            "layout": {
                "kind": "per_class_files",
                "image": "{case}/ct.nii.gz",
                "label": "{case}/segmentations",
            },
            "files": {
                "liver": ["liver"],
                "lung_upper_lobe_left": ["lung_left"],
                "lung_lower_lobe_left": ["lung_left"],
                "kidneys": ["kidney"],
                "liver_tumor": ["liver_tumor"],
            },
            "native": {"axcodes": "RPI"},
        }
    ),
    _synthetic(
        {
            "id": "syn_ircadb_dicom",
            "layout": {
                "kind": "per_class_files",
                "image": "db.{case}/PATIENT_DICOM",
                "label": "db.{case}/MASKS_DICOM",
            },
            "files": {
                "liver": ["liver"],
                "leftkidney": ["kidney_left"],
                "portalvein": ["portal_vein_and_splenic_vein"],
            },
            "native": {"axcodes": "LPS"},
        }
    ),
    _synthetic(
        {
            "id": "syn_chaos",
            "layout": {"kind": "dicom_png", "image": "CT/{case}/DICOM_anon", "label": "CT/{case}/Ground"},
            "labels": {"255": ["liver"]},
            "native": {"axcodes": "LPI"},
        }
    ),
]
PROTOCOLS = list(all_protocols().values()) + SYNTHETIC
SEEDS = [0, 3]
CASE = "0042"


def _stems(protocol: Protocol) -> dict:
    """Write options: for DICOM-folder class items (slow to read back) one stem per distinct target set,
    at most four, multi-target and merged-pair stems first; every stem otherwise."""
    if protocol.layout.kind != "per_class_files" or protocol.layout.images[0].endswith((".nii", ".nii.gz")):
        return {}
    first: dict[tuple[str, ...], str] = {}
    for stem, targets in protocol.files.items():
        first.setdefault(tuple(sorted(targets)), stem)
    ranked = sorted(first.items(), key=lambda kv: (-len(kv[0]), not any(t in PAIR_SIDES for t in kv[0])))
    return {"stems": [stem for _, stem in ranked[:4]]}


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _dicom_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def _dicom_world(ds: pydicom.Dataset) -> np.ndarray:
    """(rows, cols, 3) RAS world positions of one slice's pixels, straight from its header."""
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
    lps = np.array(ds.ImagePositionPatient, float) + c[..., None] * iop[:3] * dc + r[..., None] * iop[3:] * dr
    return lps * np.array([-1.0, -1.0, 1.0])


def _samples(path: Path, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values (n,), world RAS (n, 3)) of every voxel of a written label (NIfTI, DICOM folder or PNGs)."""
    if _is_nifti(path):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        ijk = np.indices(data.shape).reshape(3, -1).T
        return data.reshape(-1), nib.affines.apply_affine(img.affine, ijk)
    if path.is_dir() and any(path.glob("*.png")):
        pngs = sorted(path.glob("*.png"))
        slices = _dicom_files(image)
        assert len(pngs) == len(slices)
        values = [np.asarray(Image.open(p)) for p in pngs]
        world = [_dicom_world(ds) for ds in slices]
        assert all(v.shape == w.shape[:2] for v, w in zip(values, world))
        return np.concatenate([v.reshape(-1) for v in values]), np.concatenate(
            [w.reshape(-1, 3) for w in world]
        )
    slices = _dicom_files(path)
    values = [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices]
    return np.concatenate([v.reshape(-1) for v in values]), np.concatenate(
        [_dicom_world(ds).reshape(-1, 3) for ds in slices]
    )


def _truth_at(phantom, world: np.ndarray) -> tuple[np.ndarray, ...]:
    ijk = nib.affines.apply_affine(np.linalg.inv(phantom.ct.affine), world)
    idx = np.rint(ijk).astype(int)
    assert np.abs(ijk - idx).max() < 1e-3, "written voxels are not on the phantom grid"
    assert (idx >= 0).all() and (idx < np.array(phantom.ct.shape)).all()
    return tuple(idx.T)


def _truth_of(phantom, idx: tuple[np.ndarray, ...], classes) -> dict[str, np.ndarray]:
    flat = np.ravel_multi_index(idx, phantom.ct.shape)
    return {
        c: (phantom.masks[c].reshape(-1)[flat] if c in phantom.masks else np.zeros(flat.size, bool))
        for c in classes
    }


def _decode(
    targets_by_value: dict[int, tuple[str, ...]],
    values: np.ndarray,
    truth: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
) -> None:
    for value, targets in targets_by_value.items():
        where = values == value
        for t in targets:
            for c in PAIR_SIDES.get(t, (t,)):
                if c in got:
                    got[c] |= where & truth[c] if t in PAIR_SIDES else where


@pytest.fixture(scope="module", params=SEEDS)
def phantom(request):
    return make_phantom(request.param)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.id)
def test_native_case(protocol: Protocol, phantom, tmp_path: Path) -> None:
    """One write per protocol and seed, checked three ways (paths+values+truth, world positions, format)."""
    case = write_native(phantom, protocol, tmp_path, CASE, **_stems(protocol))
    _check_round_trip(protocol, phantom, case, tmp_path)
    _check_world_positions(phantom, case)
    _check_axcodes_and_dtypes(protocol, phantom, case)


def _check_round_trip(protocol: Protocol, phantom, case, tmp_path: Path) -> None:
    layout = protocol.layout
    # paths: where the layout says
    rel = case.image.relative_to(tmp_path).as_posix()
    m = layout.image_regex(0).match(rel)
    assert m and m.group("case") == CASE
    assert case.label == tmp_path / layout.label_path(0, m.groupdict())
    assert case.image.exists() and case.label.exists()
    assert all(p.exists() for p in case.label_files + case.image_files)

    annotated = tuple(case.expected)
    got: dict[str, np.ndarray] = {}
    if layout.kind == "per_class_files":
        assert set(case.class_files) == set(_stems(protocol).get("stems", protocol.files))
        grid = None
        for stem, path in case.class_files.items():
            if _is_nifti(path):
                img = nib.load(str(path))
                values = np.asarray(img.dataobj).reshape(-1)
                if grid is None or not np.array_equal(grid[0], img.affine):
                    ijk = np.indices(img.shape).reshape(3, -1).T
                    grid = (img.affine, _truth_at(phantom, nib.affines.apply_affine(img.affine, ijk)))
                    truth = _truth_of(phantom, grid[1], annotated)
            else:
                values, world = _samples(path, case.image)
                truth = _truth_of(phantom, _truth_at(phantom, world), annotated)
            got = got or {c: np.zeros(len(values), bool) for c in annotated}
            mask_value = int(protocol.native.get("mask_value", 1 if _is_nifti(path) else 255))
            assert set(np.unique(values).tolist()) <= {0, mask_value}
            _decode({mask_value: protocol.files[stem]}, values, truth, got)
    else:
        values, world = _samples(case.label, case.image)
        assert set(np.unique(values).tolist()) - {0} <= set(protocol.labels)
        truth = _truth_of(phantom, _truth_at(phantom, world), annotated)
        got = {c: np.zeros(len(values), bool) for c in annotated}
        _decode(protocol.labels, values, truth, got)

    if not _stems(protocol):
        assert list(case.expected) == list(protocol.annotated)
    for c in annotated:
        lost = case.unrepresented.get(c, 0)
        assert not (got[c] & ~truth[c]).any(), c
        assert int(truth[c].sum() - got[c].sum()) == lost, c
        assert int(case.expected[c].sum()) == int(got[c].sum()), c


def _check_world_positions(phantom, case) -> None:
    assert nib.aff2axcodes(case.affine) == case.axcodes
    half_voxel = 0.5 * min(phantom.ct.spacing)
    for c, mask in case.expected.items():
        if case.unrepresented.get(c, 0) or c not in phantom.masks:
            assert c in phantom.masks or not mask.any()
            continue
        native = nib.affines.apply_affine(case.affine, np.argwhere(mask).mean(0))
        truth = phantom.ct.world(np.argwhere(phantom.masks[c]).mean(0)[None])[0]
        assert np.linalg.norm(native - truth) < half_voxel, c


def _check_axcodes_and_dtypes(protocol: Protocol, phantom, case) -> None:
    codes = tuple(protocol.native.get("axcodes", "LPS" if case.image.is_dir() else "RAS"))
    if _is_nifti(case.image):
        img = nib.load(str(case.image))
        assert nib.aff2axcodes(img.affine) == codes
        assert img.get_data_dtype() == np.dtype(protocol.native.get("image_dtype", "int16"))
        assert np.allclose(img.affine, case.affine)
        ct = np.asarray(img.dataobj)
        # the image is the CT, voxel for voxel, at the same world places
        idx = _truth_at(phantom, nib.affines.apply_affine(img.affine, np.indices(ct.shape).reshape(3, -1).T))
        assert np.array_equal(ct.reshape(-1), phantom.ct.array[idx])
    else:
        slices = _dicom_files(case.image)
        iop = np.array(slices[0].ImageOrientationPatient, float)
        to_ras = np.array([-1.0, -1.0, 1.0])
        step = np.array(slices[1].ImagePositionPatient, float) - np.array(
            slices[0].ImagePositionPatient, float
        )
        cols = np.c_[iop[:3] * to_ras, iop[3:] * to_ras, step * to_ras]
        aff = np.eye(4)
        aff[:3, :3] = cols
        assert nib.aff2axcodes(aff) == codes
        values = slices[0].pixel_array * float(slices[0].RescaleSlope) + float(slices[0].RescaleIntercept)
        idx = _truth_at(phantom, _dicom_world(slices[0]).reshape(-1, 3))
        assert np.array_equal(values.reshape(-1), phantom.ct.array[idx].clip(-1024))
    if protocol.layout.kind == "paired" and _is_nifti(case.label):
        assert nib.load(str(case.label)).get_data_dtype() == np.dtype(
            protocol.native.get("label_dtype", "uint8")
        )


KITS_LIKE = _synthetic(
    {
        "id": "syn_kits",
        "layout": {
            "kind": "paired",
            "image": ["{case}/imaging.nii.gz"],
            "label": ["{case}/segmentation.nii.gz"],
        },
        "labels": {"1": ["kidney"], "2": ["kidney", "kidney_tumor"], "3": ["kidney", "kidney_cyst"]},
        "native": {"axcodes": "IPL", "image_dtype": "float32"},
    }
)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_most_specific_value_wins_and_merged_pair_shares_a_value(seed: int) -> None:
    p = make_phantom(seed)
    values = native_label_map(p.masks, KITS_LIKE.labels, p.ct.shape)
    assert (values[p.masks["kidney_tumor"]] == 2).all()
    assert (values[p.masks["kidney_cyst"]] == 3).all()
    plain = (
        (p.masks["kidney_left"] | p.masks["kidney_right"])
        & ~p.masks["kidney_tumor"]
        & ~p.masks["kidney_cyst"]
    )
    assert (values[plain] == 1).all()
    assert values[p.masks["kidney_left"] & plain].size and (values[p.masks["kidney_left"] & plain] == 1).all()
    assert (values[~(p.masks["kidney_left"] | p.masks["kidney_right"])] == 0).all()


def test_exclusive_protocol_reports_what_it_cannot_carry(tmp_path: Path) -> None:
    p = make_phantom(0)
    case = write_native(p, SYNTHETIC[1], tmp_path, CASE)  # cyst drawn on its own value, kidney excluded
    side = "kidney_left" if (p.masks["kidney_cyst"] & p.masks["kidney_left"]).any() else "kidney_right"
    assert case.unrepresented[side] == int((p.masks["kidney_cyst"] & p.masks[side]).sum()) > 0
    assert case.unrepresented["kidney_cyst"] == 0


def test_lobes_split_into_disjoint_parts_that_rebuild_the_lung(tmp_path: Path) -> None:
    p = make_phantom(2)
    case = write_native(p, SYNTHETIC[2], tmp_path, CASE)
    upper = np.asarray(nib.load(str(case.class_files["lung_upper_lobe_left"])).dataobj) > 0
    lower = np.asarray(nib.load(str(case.class_files["lung_lower_lobe_left"])).dataobj) > 0
    assert upper.any() and lower.any() and not (upper & lower).any()
    assert int((upper | lower).sum()) == int(p.masks["lung_left"].sum())


def test_dicom_series_has_rescale_and_synthetic_uids(tmp_path: Path) -> None:
    case = write_native(make_phantom(1), SYNTHETIC[4], tmp_path, CASE)
    slices = _dicom_files(case.image)
    assert len(slices) == 64 == len(case.label_files)
    assert {str(ds.SeriesInstanceUID) for ds in slices} == {str(slices[0].SeriesInstanceUID)}
    assert str(slices[0].SOPInstanceUID).startswith("2.25.")
    assert float(slices[0].RescaleIntercept) == -1024 and float(slices[0].RescaleSlope) == 1
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    assert z == sorted(z, reverse=True)  # native axcodes LPI: file names run inferior


@pytest.mark.parametrize("protocol", [KITS_LIKE, SYNTHETIC[2], SYNTHETIC[4]], ids=lambda p: p.id)
@pytest.mark.parametrize(
    "corrupt", ["truncate", "shape_mismatch", "affine_mismatch", "unknown_value", "nan", "empty_label"]
)
def test_fault_injection(protocol: Protocol, corrupt: str, tmp_path: Path) -> None:
    p = make_phantom(0)
    dicom = protocol.layout.kind == "dicom_png"
    if dicom and corrupt in ("nan", "affine_mismatch"):
        with pytest.raises(ValueError, match=corrupt):
            write_native(p, protocol, tmp_path, CASE, corrupt=corrupt)
        return
    case = write_native(p, protocol, tmp_path, CASE, corrupt=corrupt)
    first = case.label_files[0]
    if corrupt == "truncate":
        with pytest.raises((OSError, EOFError, ValueError, gzip.BadGzipFile)):
            if dicom:
                np.asarray(Image.open(first))
            else:
                np.asarray(nib.load(str(first)).dataobj)
        return
    if dicom:
        arrays = [np.asarray(Image.open(f)) for f in case.label_files]
        if corrupt == "shape_mismatch":
            assert len(arrays) == len(case.image_files) - 1
        elif corrupt == "unknown_value":
            assert case.unknown_value not in protocol.labels
            assert any((a == case.unknown_value).any() for a in arrays)
        elif corrupt == "empty_label":
            assert all(not a.any() for a in arrays)
            assert not any(m.any() for m in case.expected.values())
        return
    img = nib.load(str(case.image))
    lab = nib.load(str(first))
    data = np.asarray(lab.dataobj)
    if corrupt == "shape_mismatch":
        assert lab.shape != img.shape
    elif corrupt == "affine_mismatch":
        assert lab.shape == img.shape and not np.allclose(lab.affine, img.affine, atol=1e-3)
    elif corrupt == "unknown_value":
        assert case.unknown_value is not None and (data == case.unknown_value).any()
        known = set(protocol.labels) if protocol.labels else {1}
        assert case.unknown_value not in known
    elif corrupt == "nan":
        ct = np.asarray(img.dataobj)
        assert ct.dtype == np.float32 and np.isnan(ct).any()
    elif corrupt == "empty_label":
        assert not data.any() and not any(m.any() for m in case.expected.values())


def test_other_placeholders_and_template_index(tmp_path: Path) -> None:
    case = write_native(make_phantom(0), SYNTHETIC[1], tmp_path, CASE, fields={"split": "imagesVal"})
    assert case.image == tmp_path / "imagesVal" / f"{CASE}_ct.nii"
    default = write_native(make_phantom(0), SYNTHETIC[1], tmp_path / "d", CASE)
    assert default.image == tmp_path / "d" / "split" / f"{CASE}_ct.nii"


def test_image_option_replaces_the_ct(tmp_path: Path) -> None:
    p = make_phantom(0)
    other = np.zeros(p.ct.shape, np.int16)
    other[3, 4, 5] = 7
    case = write_native(p, KITS_LIKE, tmp_path, CASE, image=other)
    data = np.asarray(nib.load(str(case.image)).dataobj)
    assert data.sum() == 7


@pytest.mark.parametrize(
    ("opts", "message"), [({"corrupt": "melt"}, "corrupt"), ({"colour": 1}, "unknown options")]
)
def test_bad_options(opts: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        write_native(make_phantom(0), KITS_LIKE, tmp_path, CASE, **opts)
