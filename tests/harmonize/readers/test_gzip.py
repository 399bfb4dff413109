"""The fast gzip path: VoxelStream (isal or zlib) and the NIfTI fast path against nibabel, bit for bit."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.readers import GZIP_ENGINE, _gzip, gzip_compress, read_nifti, read_volume, read_volumes
from harmonize.readers._gzip import VoxelStream


def _read_all(path: Path, step: int) -> bytes:
    out = bytearray()
    with VoxelStream(path) as s:
        while chunk := s.read(step):
            out += chunk
        s.drain()
    return bytes(out)


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_multi_member_files_and_zero_padding_read_like_gzip(tmp_path: Path, step: int) -> None:
    a, b = np.arange(50_000, dtype=np.int32).tobytes(), b"second member" * 999
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(a) + gzip.compress(b) + b"\x00" * 512)
    assert _read_all(path, step) == a + b


def test_plain_files_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(b"plain bytes" * 100)
    with VoxelStream(path) as s:
        assert not s.compressed
        assert s.read(5) == b"plain"
        buf = bytearray(2000)
        assert s.read_into(memoryview(buf)) == 1095


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_truncated_member_raises(tmp_path: Path, keep: float) -> None:
    data = gzip.compress(np.random.default_rng(0).integers(0, 9, 200_000, dtype=np.uint8).tobytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises((EOFError, zlib.error, Exception)):
        _read_all(path, 1 << 16)


def test_a_wrong_crc_is_caught_by_drain(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"voxels" * 10_000))
    data[-8] ^= 0xFF  # the CRC-32 in the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"(?i)crc|check"):
        _read_all(path, 1 << 20)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_gzip_compress_round_trips_through_the_standard_reader(level: int) -> None:
    payload = np.arange(100_000, dtype=np.int16).tobytes()
    assert gzip.decompress(gzip_compress(payload, level)) == payload
    with pytest.raises(ValueError, match="0-9"):
        gzip_compress(payload, 10)


def test_zlib_fallback_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.gz"
    payload = np.arange(300_000, dtype=np.float32).tobytes()
    path.write_bytes(gzip.compress(payload))
    fast = _read_all(path, 1 << 18)
    monkeypatch.setattr(_gzip, "_engine", zlib)
    assert _read_all(path, 1 << 18) == fast == payload
    assert GZIP_ENGINE in ("isal", "zlib")


def _save(
    path: Path,
    array: np.ndarray,
    *,
    two: bool = False,
    slope: float | None = None,
    inter: float = 0.0,
    extension: bool = False,
) -> Path:
    affine = np.array([[-0.8, 0, 0, 100.0], [0, 0.8, 0, -50.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    img = (nib.Nifti2Image if two else nib.Nifti1Image)(array, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    if extension:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment that is long enough" * 40))
    nib.save(img, path)
    return path


CASES = [
    ("int16.nii.gz", np.arange(-500, 700, dtype=np.int16).reshape(10, 12, 10), {}),
    ("uint8.nii", np.arange(240, dtype=np.uint8).reshape(6, 8, 5), {}),
    ("float32.nii.gz", np.linspace(-1000, 1000, 600, dtype=np.float32).reshape(6, 10, 10), {}),
    ("nifti2.nii.gz", np.arange(600, dtype=np.int32).reshape(6, 10, 10), {"two": True}),
    ("scaled.nii.gz", np.arange(600, dtype=np.int16).reshape(6, 10, 10), {"slope": 0.5, "inter": -1024.0}),
    (
        "uint16_scaled.nii.gz",
        np.arange(600, dtype=np.uint16).reshape(6, 10, 10),
        {"slope": 1.0, "inter": -1024.0},
    ),
    ("extension.nii.gz", np.arange(600, dtype=np.int16).reshape(6, 10, 10), {"extension": True}),
    ("4d_singleton.nii.gz", np.arange(600, dtype=np.int16).reshape(6, 10, 10, 1), {}),
    ("big_endian.nii.gz", np.arange(600, dtype=">i2").reshape(6, 10, 10), {}),
]


#: Every case as an image and as a label, except a fractional slope as a label (refused, see test_nifti.py).
READS = [
    (*case, kind)
    for case in CASES
    for kind in ("image", "label")
    if (case[0], kind) != ("scaled.nii.gz", "label")
]


@pytest.mark.parametrize(("name", "array", "opts", "kind"), READS, ids=[f"{r[0]}-{r[3]}" for r in READS])
def test_the_fast_path_matches_nibabel_bit_for_bit(
    tmp_path: Path, name: str, array: np.ndarray, opts: dict, kind: str
) -> None:
    if kind == "label" and array.dtype.kind == "f":
        array = np.rint(array)
    path = _save(tmp_path / name, array, **opts)
    img = nib.load(path)
    if kind == "image" and opts.get("slope") is not None:
        expected = np.asarray(img.dataobj, dtype=np.float32)
    else:
        expected = np.asanyarray(img.dataobj)
    expected = expected.reshape(expected.shape[:3])
    volume = read_nifti(path, kind)  # type: ignore[arg-type]
    if kind == "label" and expected.dtype.kind == "f":
        np.testing.assert_array_equal(volume.array, expected)
    else:
        assert volume.array.dtype == expected.dtype
        assert volume.array.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(volume.affine, img.affine)
    assert volume.array.flags.writeable
    assert volume.meta["disk_dtype"] == str(img.get_data_dtype())


def test_read_volumes_reads_in_order_and_raises_the_first_error(tmp_path: Path) -> None:
    image = _save(tmp_path / "ct.nii.gz", np.arange(600, dtype=np.int16).reshape(6, 10, 10))
    label = _save(tmp_path / "seg.nii.gz", (np.arange(600) % 3).astype(np.uint8).reshape(6, 10, 10))
    ct, seg = read_volumes([(image, "image"), (label, "label")])
    np.testing.assert_array_equal(ct.array, read_volume(image).array)
    np.testing.assert_array_equal(seg.array, read_volume(label, kind="label").array)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(image.read_bytes()[:100])
    with pytest.raises(HarmonizeError) as err:
        read_volumes([(label, "label"), (broken, "image"), (tmp_path / "missing.nii.gz", "label")])
    assert err.value.path == str(broken)
