"""Tests for storage/masks.py: round trips, bounding boxes, atomic writes, bad input, concurrency, gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import storage.masks as masks_mod
from harmonize.errors import HarmonizeError
from storage.masks import LabelSetExistsError, MaskStore

REPO = Path(__file__).resolve().parents[2]

SHAPES = [(1, 1, 1), (7, 9, 13), (8, 16, 24), (17, 3, 65), (33, 31, 9), (5, 40, 1)]


def _random_blob(shape: tuple[int, int, int], rng: np.random.Generator, density: float) -> np.ndarray:
    return rng.random(shape) < density


def _expected_bbox(m: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    nz = np.nonzero(m)
    if nz[0].size == 0:
        return None
    return tuple((int(a.min()), int(a.max()) + 1) for a in nz)


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(".tmp."))


@pytest.fixture
def store(tmp_path: Path) -> MaskStore:
    return MaskStore(tmp_path / "masks")


# ---------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_round_trip_random_masks(store: MaskStore, shape: tuple[int, int, int], density: float) -> None:
    rng = np.random.default_rng(sum(shape) + int(density * 100))
    masks = {
        "noise": _random_blob(shape, rng, density),
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
    }
    n = store.write_label_set("ls-000001", masks, shape)
    assert n == store.path("ls-000001").stat().st_size
    got = store.read_many("ls-000001")
    assert list(got) == ["noise", "empty", "full"]
    for name, m in masks.items():
        assert got[name].dtype == np.bool_ and got[name].shape == shape
        np.testing.assert_array_equal(got[name], m)
        np.testing.assert_array_equal(store.read("ls-000001", name), m)
    assert store.names("ls-000001") == ["noise", "empty", "full"]


@pytest.mark.parametrize("shape", [(10, 11, 12), (9, 8, 17)])
def test_overlapping_classes_stay_independent(store: MaskStore, shape: tuple[int, int, int]) -> None:
    organ = np.zeros(shape, bool)
    organ[2:8, 1:7, 3:11] = True
    tumour = np.zeros(shape, bool)
    tumour[4:6, 3:5, 5:7] = True  # entirely inside the organ
    store.write_label_set("ls-1", {"liver": organ, "liver_tumor": tumour}, shape)
    np.testing.assert_array_equal(store.read("ls-1", "liver"), organ)
    np.testing.assert_array_equal(store.read("ls-1", "liver_tumor"), tumour)
    idx = store.index("ls-1")
    assert idx.classes["liver"].voxels == 6 * 6 * 8
    assert idx.classes["liver_tumor"].voxels == 8
    assert idx.classes["liver_tumor"].bbox == ((4, 6), (3, 5), (5, 7))


@pytest.mark.parametrize("n_classes", [1, 12, 32, 40])
def test_many_classes_and_subset_reads(store: MaskStore, n_classes: int) -> None:
    shape = (21, 19, 23)
    rng = np.random.default_rng(n_classes)
    masks = {f"class_{i:02d}": _random_blob(shape, rng, rng.uniform(0, 0.3)) for i in range(n_classes)}
    store.write_label_set("ls-many", masks, shape)
    want = list(masks)[::-3]  # a subset, in a different order
    got = store.read_many("ls-many", want)
    assert list(got) == want
    for name in want:
        np.testing.assert_array_equal(got[name], masks[name])
    assert store.names("ls-many") == list(masks)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64])
def test_integer_zero_one_masks_are_accepted(store: MaskStore, dtype: type) -> None:
    shape = (6, 7, 9)
    m: np.ndarray = (np.random.default_rng(3).random(shape) < 0.3).astype(dtype)
    store.write_label_set("ls-int", {"spleen": m}, shape)
    got = store.read("ls-int", "spleen")
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, m == 1)


def test_non_contiguous_and_fortran_masks(store: MaskStore) -> None:
    base = np.random.default_rng(4).random((20, 18, 30)) < 0.2
    strided = base[::2, ::2, ::3]  # (10, 9, 10), not contiguous
    fortran = np.asfortranarray(base[:10, :9, :10])
    store.write_label_set("ls-views", {"a": strided, "b": fortran}, (10, 9, 10))
    np.testing.assert_array_equal(store.read("ls-views", "a"), strided)
    np.testing.assert_array_equal(store.read("ls-views", "b"), fortran)


def test_label_set_without_classes(store: MaskStore) -> None:
    store.write_label_set("ls-none", {}, (4, 4, 4))
    assert store.names("ls-none") == []
    assert store.read_many("ls-none") == {}
    assert store.index("ls-none").shape == (4, 4, 4)


# ----------------------------------------------------------------------------------- bbox at borders

# (9, 10, 16) has whole-word slabs (10 * 16 % 8 == 0), the store's fast path; (9, 10, 17) does not.
BORDER_SHAPES = [(9, 10, 17), (9, 10, 16)]
CORNERS = [
    ("lo", "lo", "lo"),
    ("hi", "hi", "hi"),
    ("lo", "hi", "lo"),
    ("hi", "lo", "hi"),
    ("mid", "lo", "mid"),
    ("lo", "mid", "hi"),
    ("hi", "hi", "lo"),
]


@pytest.mark.parametrize("shape", BORDER_SHAPES)
@pytest.mark.parametrize("corner", CORNERS)
def test_single_voxel_bbox_at_borders(
    store: MaskStore, shape: tuple[int, int, int], corner: tuple[str, str, str]
) -> None:
    voxel = tuple({"lo": 0, "hi": n - 1, "mid": n // 2}[c] for c, n in zip(corner, shape))
    m = np.zeros(shape, bool)
    m[voxel] = True
    store.write_label_set("ls-corner", {"dot": m}, shape)
    entry = store.index("ls-corner").classes["dot"]
    assert entry.bbox == tuple((v, v + 1) for v in voxel)
    assert entry.voxels == 1
    crop, bbox = store.read_crop("ls-corner", "dot")
    assert crop.shape == (1, 1, 1) and bool(crop[0, 0, 0]) and bbox == entry.bbox
    np.testing.assert_array_equal(store.read("ls-corner", "dot"), m)


@pytest.mark.parametrize("shape", BORDER_SHAPES)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("side", ["low", "high", "both"])
def test_slab_touching_faces(store: MaskStore, shape: tuple[int, int, int], axis: int, side: str) -> None:
    m = np.zeros(shape, bool)
    n = shape[axis]
    index: list[slice] = [slice(2, 5)] * 3
    index[axis] = {"low": slice(0, 3), "high": slice(n - 3, n), "both": slice(0, n)}[side]
    m[tuple(index)] = True
    store.write_label_set("ls-slab", {"slab": m}, shape)
    entry = store.index("ls-slab").classes["slab"]
    assert entry.bbox == _expected_bbox(m)
    assert entry.voxels == int(m.sum())
    crop, bbox = store.read_crop("ls-slab", "slab")
    assert bbox is not None
    np.testing.assert_array_equal(crop, m[tuple(slice(a, b) for a, b in bbox)])
    np.testing.assert_array_equal(store.read("ls-slab", "slab"), m)


@pytest.mark.parametrize("seed", range(6))
def test_bbox_matches_nonzero_for_random_blobs(store: MaskStore, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 30, size=3))
    shape = (shape[0], shape[1], shape[2] - shape[2] % 8 + 8) if seed % 2 else shape  # whole-word slabs
    m = np.zeros(shape, bool)
    lo = [int(rng.integers(0, s)) for s in shape]
    hi = [int(rng.integers(a, s)) + 1 for a, s in zip(lo, shape)]
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = rng.random([b - a for a, b in zip(lo, hi)]) < 0.5
    store.write_label_set("ls-r", {"x": m}, shape)  # type: ignore[arg-type]
    assert store.index("ls-r").classes["x"].bbox == _expected_bbox(m)
    np.testing.assert_array_equal(store.read("ls-r", "x"), m)


def test_empty_class_has_no_bbox(store: MaskStore) -> None:
    store.write_label_set("ls-e", {"none": np.zeros((3, 4, 5), bool)}, (3, 4, 5))
    entry = store.index("ls-e").classes["none"]
    assert entry.bbox is None and entry.voxels == 0 and entry.nbytes == 0
    crop, bbox = store.read_crop("ls-e", "none")
    assert crop.shape == (0, 0, 0) and bbox is None


def test_reading_one_class_decodes_only_that_class(store: MaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (12, 12, 12)
    rng = np.random.default_rng(7)
    masks = {f"c{i}": _random_blob(shape, rng, 0.3) for i in range(8)}
    store.write_label_set("ls-seek", masks, shape)
    decoded: list[int] = []
    real = masks_mod.Zstd

    class CountingZstd(real):  # type: ignore[misc, valid-type]
        def decode(self, buf, out=None):  # type: ignore[no-untyped-def]
            decoded.append(len(buf))
            return super().decode(buf, out)

    monkeypatch.setattr(masks_mod, "Zstd", CountingZstd)
    np.testing.assert_array_equal(store.read("ls-seek", "c5"), masks["c5"])
    assert decoded == [store.index("ls-seek").classes["c5"].nbytes]


# ---------------------------------------------------------------------------------------- atomicity


def test_crash_inside_writer_leaves_nothing_and_retry_succeeds(
    store: MaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (16, 16, 16)
    rng = np.random.default_rng(11)
    masks = {f"c{i}": _random_blob(shape, rng, 0.4) for i in range(5)}
    real = masks_mod._encode_class
    partial_sizes: list[int] = []

    def crashing(name, mask, offset):  # type: ignore[no-untyped-def]
        if name == "c3":
            # Partial output is on disk (two blobs already written) when the writer dies.
            assert len(_tmp_files(store.root)) == 1
            partial_sizes.append(offset)
            assert not store.path("ls-crash").exists()
            raise RuntimeError("simulated crash")
        return real(name, mask, offset)

    monkeypatch.setattr(masks_mod, "_encode_class", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_label_set("ls-crash", masks, shape)
    assert partial_sizes and partial_sizes[0] > len(masks_mod.MAGIC)
    assert not store.exists("ls-crash")
    assert store.keys() == []
    assert _tmp_files(store.root) == []  # an exception cleans its own temp file

    monkeypatch.setattr(masks_mod, "_encode_class", real)
    store.write_label_set("ls-crash", masks, shape)
    for name, m in masks.items():
        np.testing.assert_array_equal(store.read("ls-crash", name), m)


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_killed_writer_leaves_temp_that_gc_removes(store: MaskStore) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        import storage.masks as mm
        real = mm._encode_class
        def dying(name, mask, offset):
            if name == "c2":
                os.kill(os.getpid(), signal.SIGKILL)
            return real(name, mask, offset)
        mm._encode_class = dying
        masks = {{f"c{{i}}": np.ones((8, 8, 8), bool) for i in range(4)}}
        mm.MaskStore({str(store.root)!r}).write_label_set("ls-killed", masks, (8, 8, 8))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    leftovers = _tmp_files(store.root)
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".ls-killed.masks")
    assert not store.exists("ls-killed") and store.keys() == []

    assert store.gc() == leftovers
    assert _tmp_files(store.root) == []
    masks = {f"c{i}": np.ones((8, 8, 8), bool) for i in range(4)}
    store.write_label_set("ls-killed", masks, (8, 8, 8))
    assert store.read("ls-killed", "c3").all()


def test_failed_validation_writes_nothing(store: MaskStore) -> None:
    good = np.ones((4, 4, 4), bool)
    with pytest.raises(HarmonizeError, match="'bad'"):
        store.write_label_set("ls-v", {"good": good, "bad": np.full((4, 4, 4), 0.5)}, (4, 4, 4))
    assert list(store.root.iterdir()) == []


# ---------------------------------------------------------------------------------------- immutability


def test_existing_key_is_refused_unless_overwrite(store: MaskStore) -> None:
    shape = (5, 5, 5)
    first = np.zeros(shape, bool)
    first[1, 2, 3] = True
    store.write_label_set("ls-imm", {"a": first}, shape)
    with pytest.raises(LabelSetExistsError, match="immutable"):
        store.write_label_set("ls-imm", {"a": np.ones(shape, bool)}, shape)
    np.testing.assert_array_equal(store.read("ls-imm", "a"), first)
    assert _tmp_files(store.root) == []

    store.write_label_set("ls-imm", {"b": np.ones(shape, bool)}, shape, overwrite=True)
    assert store.names("ls-imm") == ["b"]
    assert store.read("ls-imm", "b").all()


def test_racing_writers_of_one_key_exactly_one_wins(store: MaskStore) -> None:
    shape = (24, 24, 24)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.write_label_set("ls-race", {"c": np.full(shape, i % 2 == 0)}, shape)
            results.append(f"ok{i}")
        except LabelSetExistsError:
            results.append("exists")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.startswith("ok") for r in results) == [False, False, False, True]
    winner = int(next(r for r in results if r.startswith("ok"))[2:])
    assert store.read("ls-race", "c").all() == (winner % 2 == 0)
    assert _tmp_files(store.root) == []


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("masks", "shape", "pattern"),
    [
        ({"liver": np.zeros((4, 4, 5), bool)}, (4, 4, 4), r"'liver'.*shape \(4, 4, 5\)"),
        ({"liver": np.zeros((4, 4), bool)}, (4, 4, 4), r"'liver'.*shape"),
        ({"spleen": np.zeros((4, 4, 4), np.float32)}, (4, 4, 4), r"'spleen'.*float32"),
        ({"spleen": np.zeros((4, 4, 4), np.complex64)}, (4, 4, 4), r"'spleen'.*complex64"),
        ({"aorta": np.full((4, 4, 4), 2, np.uint8)}, (4, 4, 4), r"'aorta'.*\[0, 2\]"),
        ({"aorta": np.full((4, 4, 4), -1, np.int16)}, (4, 4, 4), r"'aorta'.*\[-1, -1\]"),
        ({"aorta": [[[1]]]}, (1, 1, 1), r"'aorta'.*list"),
        ({"a/b": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"a\\b": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"..": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"x..y": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"tab\there": np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"x" * 201: np.zeros((2, 2, 2), bool)}, (2, 2, 2), "not safe"),
        ({"a": np.zeros((2, 2, 2), bool)}, (2, 2, 0), "positive"),
        ({"a": np.zeros((2, 2, 2), bool)}, (2, 2), "positive"),
        ({"a": np.zeros((2, 2, 2), bool)}, (2.5, 2, 2), "positive"),
        ({"a": np.zeros((2, 2, 2), bool)}, "abc", "integers"),
    ],
)
def test_bad_input_is_refused(store: MaskStore, masks: dict, shape: tuple, pattern: str) -> None:
    with pytest.raises(HarmonizeError, match=pattern):
        store.write_label_set("ls-bad", masks, shape)
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("key", ["a/b", "", ".hidden", "../x", "a b", "x" * 201, "ls\n1", 12])
def test_bad_keys_are_refused(store: MaskStore, key: object) -> None:
    with pytest.raises(HarmonizeError, match="key"):
        store.write_label_set(key, {}, (1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(HarmonizeError, match="key"):
        store.path(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["ls-000123", "3f2b8c1e-9a4d-4f6b-8e2a-1c5d7e9f0a12", "kits23.case_00001.v2"])
def test_good_keys(store: MaskStore, key: str) -> None:
    store.write_label_set(key, {"a": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    assert store.exists(key) and store.keys() == [key]
    assert store.path(key) == store.root / f"{key}.masks"


def test_missing_key_and_class_errors(store: MaskStore) -> None:
    with pytest.raises(HarmonizeError, match="no label set 'ls-404'"):
        store.read("ls-404", "liver")
    with pytest.raises(HarmonizeError, match="no label set"):
        store.names("ls-404")
    store.write_label_set("ls-1", {"liver": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    with pytest.raises(HarmonizeError, match=r"no class 'spleen'.*liver"):
        store.read("ls-1", "spleen")
    with pytest.raises(HarmonizeError, match="no class 'spleen'"):
        store.read_many("ls-1", ["liver", "spleen"])


def test_corrupt_files_are_reported(store: MaskStore) -> None:
    shape = (10, 10, 10)
    store.write_label_set("ls-c", {"a": np.random.default_rng(0).random(shape) < 0.5}, shape)
    path = store.path("ls-c")
    data = bytearray(path.read_bytes())
    data[len(masks_mod.MAGIC) + 5] ^= 0xFF  # inside the blob of class "a"
    path.write_bytes(bytes(data))
    with pytest.raises(HarmonizeError, match="CRC"):
        store.read("ls-c", "a")
    path.write_bytes(bytes(data[:-3]))
    with pytest.raises(HarmonizeError, match="truncated or corrupt"):
        store.read("ls-c", "a")
    path.write_bytes(b"not a mask file at all, no")
    with pytest.raises(HarmonizeError, match="not a mask store file"):
        store.names("ls-c")


# ---------------------------------------------------------------------------------------- concurrency


def test_readers_run_while_a_writer_writes_other_keys(store: MaskStore) -> None:
    shape = (40, 40, 40)
    rng = np.random.default_rng(21)
    stable = {f"c{i}": _random_blob(shape, rng, 0.2) for i in range(4)}
    store.write_label_set("ls-stable", stable, shape)
    new_sets = {f"ls-new-{n}": {f"c{i}": _random_blob(shape, rng, 0.3) for i in range(6)} for n in range(6)}
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]

    def reader() -> None:
        try:
            while not done.is_set():
                got = store.read_many("ls-stable")
                assert all(np.array_equal(got[n], stable[n]) for n in stable)
                for key, masks in new_sets.items():
                    # A key is either absent or complete: never visible half-written.
                    if store.exists(key):
                        np.testing.assert_array_equal(store.read(key, "c5"), masks["c5"])
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for key, masks in new_sets.items():
            store.write_label_set(key, masks, shape)
            time.sleep(0.005)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert reads[0] > 0
    assert store.keys() == sorted(["ls-stable", *new_sets])


# ------------------------------------------------------------------------------------------- delete, gc


def test_delete_and_keys(store: MaskStore) -> None:
    for key in ["ls-3", "ls-1", "ls-2"]:
        store.write_label_set(key, {"a": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    assert store.keys() == ["ls-1", "ls-2", "ls-3"]
    assert store.delete("ls-2") is True
    assert store.delete("ls-2") is False
    assert store.keys() == ["ls-1", "ls-3"]
    assert not store.exists("ls-2")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name == "nt", reason="pid liveness is checked on POSIX only")
def test_gc_removes_only_abandoned_temp_files(store: MaskStore) -> None:
    host = masks_mod._HOST
    dead = store.root / f".tmp.{_dead_pid()}.{host}.aaaaaaaaaaaa.ls-1.masks"
    own_leftover = store.root / f".tmp.{os.getpid()}.{host}.bbbbbbbbbbbb.ls-2.masks"
    own_in_flight = store.root / f".tmp.{os.getpid()}.{host}.cccccccccccc.ls-3.masks"
    live_other = store.root / f".tmp.{os.getppid()}.{host}.dddddddddddd.ls-4.masks"
    foreign_fresh = store.root / ".tmp.123.otherhost.eeeeeeeeeeee.ls-5.masks"
    foreign_old = store.root / ".tmp.123.otherhost.ffffffffffff.ls-6.masks"
    garbage = store.root / ".tmp.garbage"
    for p in [dead, own_leftover, own_in_flight, live_other, foreign_fresh, foreign_old, garbage]:
        p.write_bytes(b"partial")
    old = time.time() - masks_mod.FOREIGN_TMP_STALE_S - 10
    os.utime(foreign_old, (old, old))
    os.utime(garbage, (old, old))
    store.write_label_set("ls-keep", {"a": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    with masks_mod._IN_FLIGHT_LOCK:
        masks_mod._IN_FLIGHT.add(own_in_flight.name)
    try:
        removed = store.gc()
    finally:
        with masks_mod._IN_FLIGHT_LOCK:
            masks_mod._IN_FLIGHT.discard(own_in_flight.name)
    assert removed == sorted([dead, own_leftover, foreign_old, garbage])
    assert sorted(p.name for p in _tmp_files(store.root)) == sorted(
        [own_in_flight.name, live_other.name, foreign_fresh.name]
    )
    assert store.keys() == ["ls-keep"]


def test_gc_never_removes_published_label_sets(store: MaskStore) -> None:
    for key in ["ls-1", "ls-2"]:
        store.write_label_set(key, {"a": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    dead = store.root / f"{masks_mod.TMP_PREFIX}999999999.{masks_mod._HOST}.abc.ls-3.masks"
    dead.write_bytes(b"partial")
    assert store.gc(dry_run=True) == [dead] and dead.exists()  # a dry run lists and keeps
    assert store.gc() == [dead] and not dead.exists()
    assert store.gc() == []
    assert store.keys() == ["ls-1", "ls-2"]


@pytest.mark.parametrize("offset", [(0, 0, 0), (3, 1, 2), (9, 10, 5)])
def test_cropped_masks_are_stored_without_expanding(tmp_path: Path, offset: tuple[int, int, int]) -> None:
    from harmonize.masks import CroppedMask

    shape = (12, 14, 9)
    full = np.zeros(shape, bool)
    full[offset[0] : offset[0] + 3, offset[1] : offset[1] + 4, offset[2] : offset[2] + 4] = True
    full[offset[0], offset[1], offset[2]] = False  # not a box: the crop keeps holes
    store = MaskStore(tmp_path)
    cropped = CroppedMask.from_full(full)
    # a loose crop (padding of False around the data) is tightened on write
    loose = CroppedMask(shape, (0, 0, 0), full.copy())
    store.write_label_set(
        "ls-crop", {"liver": cropped, "spleen": loose, "empty": CroppedMask.empty(shape)}, shape
    )
    np.testing.assert_array_equal(store.read("ls-crop", "liver"), full)
    np.testing.assert_array_equal(store.read("ls-crop", "spleen"), full)
    assert not store.read("ls-crop", "empty").any()
    expected_bbox = tuple((o, o + n) for o, n in zip(offset, (3, 4, 4)))
    assert store.index("ls-crop").classes["liver"].bbox == expected_bbox
    assert store.index("ls-crop").classes["spleen"].bbox == expected_bbox
