"""Measure candidate on-disk formats for per-class binary masks, on a synthetic 512x512x200 abdomen.

Run: ``python benchmarks/bench_mask_store.py [--shape 512 512 200] [--repeat 3] [--phantom ellipsoids]``

The default phantom (``--phantom ellipsoids``) has 13 classes: 12 organs of realistic volumes at
0.8x0.8x1.5 mm plus a liver tumour that overlaps the liver, built from ellipsoids and tubes whose surfaces
are bent by smooth noise and roughened by fine noise. ``--phantom harmonize`` uses
``harmonize.phantoms.make_phantom`` instead (all 32 classes). For each format it prints bytes on disk, the
time to write a whole label set, to read one class (the liver, the largest, and the smallest class) and to
read every class, as absolute numbers and as ratios to one-.nii.gz-per-class. It also times the bare nibabel
read of a CT image + label map of the same size, the cost the ingest budget is measured against. All reads
are warm-cache (the files were just written); times are the best of ``--repeat`` runs, since the machine may
be shared.

Zarr is measured only when ``import zarr`` works (it is not a project dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numcodecs import Blosc, Zstd
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storage.masks import ZSTD_LEVEL, MaskStore
from storage.masks import _bbox as bbox_of

SPACING = (0.8, 0.8, 1.5)

# name -> (kind, centre mm (x, y, z), radii mm (rx, ry, rz)); tubes use (rx, ry) as radius, z as extent.
ORGANS: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "liver": ("ellipsoid", (270, 215, 200), (85, 75, 60)),
    "spleen": ("ellipsoid", (110, 170, 200), (40, 30, 40)),
    "kidney_right": ("ellipsoid", (260, 150, 130), (28, 25, 55)),
    "kidney_left": ("ellipsoid", (150, 150, 135), (28, 25, 55)),
    "gall_bladder": ("ellipsoid", (255, 250, 170), (18, 15, 35)),
    "stomach": ("ellipsoid", (150, 240, 210), (55, 40, 55)),
    "pancreas": ("ellipsoid", (190, 190, 160), (70, 12, 18)),
    "aorta": ("tube", (195, 165, 155), (11, 11, 135)),
    "postcava": ("tube", (225, 170, 150), (10, 10, 110)),
    "esophagus": ("tube", (190, 178, 270), (7, 7, 30)),
    "adrenal_gland_right": ("ellipsoid", (245, 160, 200), (12, 5, 20)),
    "adrenal_gland_left": ("ellipsoid", (165, 160, 200), (12, 5, 20)),
    "liver_tumor": ("ellipsoid", (290, 220, 210), (15, 14, 15)),
}
HU = {
    "liver": 60,
    "spleen": 50,
    "kidney_right": 150,
    "kidney_left": 150,
    "gall_bladder": 10,
    "stomach": 20,
    "pancreas": 40,
    "aorta": 200,
    "postcava": 120,
    "esophagus": 30,
    "adrenal_gland_right": 30,
    "adrenal_gland_left": 30,
    "liver_tumor": 20,
}


# ---------------------------------------------------------------------------------------- phantom


def _smooth_noise(shape: tuple[int, ...], scale_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise of feature size ~``scale_vox`` voxels, float32 of ``shape``."""
    coarse = [max(2, int(np.ceil(s / scale_vox)) + 2) for s in shape]
    field = ndimage.zoom(
        rng.standard_normal(coarse).astype(np.float32), [s / c for s, c in zip(shape, coarse)], order=3
    )[tuple(slice(0, s) for s in shape)]
    return (field - field.mean()) / (field.std() + 1e-6)


def make_masks(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Bool (i, j, k) masks of the synthetic abdomen; i, j, k run along x, y, z at ``SPACING`` mm."""
    rng = np.random.default_rng(seed)
    # Organ positions are given for a 512x512x200 scan; other shapes scale them.
    scale = np.array(shape) / np.array([512, 512, 200])
    sp = np.array(SPACING)
    masks = {}
    for name, (kind, centre_mm, radii_mm) in ORGANS.items():
        c = np.array(centre_mm) / sp * scale
        r = np.array(radii_mm) / sp * scale
        lo = np.maximum(np.floor(c - 1.4 * r).astype(int), 0)
        hi = np.minimum(np.ceil(c + 1.4 * r).astype(int) + 1, shape)
        region = tuple(int(h - lo_) for lo_, h in zip(lo, hi))
        i, j, k = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        bend = _smooth_noise(region, 12.0, rng)
        rough = ndimage.gaussian_filter(rng.standard_normal(region).astype(np.float32), 1.0)
        rough /= rough.std() + 1e-6
        if kind == "ellipsoid":
            q = ((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2
        else:  # a vessel wandering around a straight centreline along k
            wobble = 4.0 / sp[0] * np.sin(k / (40.0 / sp[2]))
            q = ((i - c[0] - wobble) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2
            q = np.where(np.abs(k - c[2]) <= r[2], q, np.inf)
        full = np.zeros(shape, dtype=bool)
        full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = q * (1 + 0.2 * bend) + 0.06 * rough < 1.0
        masks[name] = full
    return masks


def make_ct(masks: dict[str, np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU image (air, fat body, organs, noise sd 20) and a uint8 label map (later classes on top)."""
    shape = next(iter(masks.values())).shape
    rng = np.random.default_rng(seed + 1)
    i, j = np.ogrid[: shape[0], : shape[1]]
    body = ((i - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((j - shape[1] / 2) / (0.30 * shape[1])) ** 2 < 1
    ct = np.where(body[:, :, None], np.float32(-90), np.float32(-1000)) * np.ones(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    for v, (name, m) in enumerate(masks.items(), start=1):
        ct[m] = HU[name]
        label[m] = v
    ct += 20 * rng.standard_normal(shape, dtype=np.float32)
    return ct.astype(np.int16), label


def _label_map(masks: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 label map, class values 1.. in dict order, later classes on top."""
    label = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for v, m in enumerate(masks.values(), start=1):
        label[m] = v
    return label


# -------------------------------------------------------------------------------------- candidates


def _load_array(path: Path) -> np.ndarray:
    """The bare nibabel read: the stored dtype, no float conversion."""
    return np.asarray(nib.load(path).dataobj)  # type: ignore[attr-defined]


@dataclass
class Candidate:
    """One on-disk format: write a label set into a fresh folder, read one class or all."""

    name: str
    write: Callable[[Path, dict[str, np.ndarray]], None]
    read_one: Callable[[Path, str], np.ndarray]
    read_all: Callable[[Path], dict[str, np.ndarray]]


def nifti_candidate(affine: np.ndarray) -> Candidate:
    def write(d: Path, masks: dict[str, np.ndarray]) -> None:
        for name, m in masks.items():
            img = nib.Nifti1Image(m.astype(np.uint8), affine)
            img.set_data_dtype(np.uint8)
            nib.save(img, d / f"{name}.nii.gz")

    def read_one(d: Path, name: str) -> np.ndarray:
        return _load_array(d / f"{name}.nii.gz").astype(bool)

    def read_all(d: Path) -> dict[str, np.ndarray]:
        return {
            p.name[: -len(".nii.gz")]: read_one(d, p.name[: -len(".nii.gz")]) for p in sorted(d.iterdir())
        }

    return Candidate("(a) .nii.gz per class (nibabel, uint8)", write, read_one, read_all)


# Layouts turn a bool mask into bytes to compress (+ json metadata) and back.
Layout = tuple[
    Callable[[np.ndarray], tuple[dict, np.ndarray]],
    Callable[[dict, bytes, tuple[int, int, int]], np.ndarray],
]


def _bbox(m: np.ndarray) -> list[list[int]] | None:
    bb = bbox_of(m)  # the store's own bounding box, so layouts differ only in packing and codec
    return None if bb is None else [list(b) for b in bb]


def _full_flat() -> Layout:
    def enc(m: np.ndarray) -> tuple[dict, np.ndarray]:
        return {}, np.packbits(m)

    def dec(meta: dict, raw: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        n = shape[0] * shape[1] * shape[2]
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=n).view(bool).reshape(shape)

    return enc, dec


def _full_bytes() -> Layout:
    def enc(m: np.ndarray) -> tuple[dict, np.ndarray]:
        return {}, np.ascontiguousarray(m).view(np.uint8)

    def dec(meta: dict, raw: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        return np.frombuffer(raw, np.uint8).view(bool).reshape(shape).copy()

    return enc, dec


def _bbox_layout(rows: bool) -> Layout:
    def enc(m: np.ndarray) -> tuple[dict, np.ndarray]:
        bb = _bbox(m)
        if bb is None:
            return {"bbox": None}, np.zeros(0, np.uint8)
        crop = m[tuple(slice(a, b) for a, b in bb)]
        return {"bbox": bb}, np.packbits(crop, axis=-1) if rows else np.packbits(crop)

    def dec(meta: dict, raw: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        bb = meta["bbox"]
        if bb is None:
            return out
        cs = tuple(b - a for a, b in bb)
        packed = np.frombuffer(raw, np.uint8)
        if rows:
            crop = np.unpackbits(packed.reshape(cs[0], cs[1], -1), axis=-1, count=cs[2]).view(bool)
        else:
            crop = np.unpackbits(packed, count=cs[0] * cs[1] * cs[2]).view(bool).reshape(cs)
        out[tuple(slice(a, b) for a, b in bb)] = crop
        return out

    return enc, dec


_TRAILER = struct.Struct("<QQ")


def packed_candidate(
    name: str, layout: Layout, encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], bytes]
) -> Candidate:
    """One file per label set: blobs, JSON index (offsets), trailer; fsynced like the real store."""
    enc, dec = layout

    def write(d: Path, masks: dict[str, np.ndarray]) -> None:
        entries, offset = [], 0
        with open(d / "set.bin", "wb") as f:
            for cname, m in masks.items():
                meta, arr = enc(m)
                blob = encode(arr) if arr.size else b""
                f.write(blob)
                entries.append({"name": cname, "offset": offset, "nbytes": len(blob), **meta})
                offset += len(blob)
            index = json.dumps({"shape": list(m.shape), "classes": entries}).encode()
            f.write(index)
            f.write(_TRAILER.pack(offset, len(index)))
            f.flush()
            os.fsync(f.fileno())

    def _index(f) -> dict:  # type: ignore[no-untyped-def]
        f.seek(-_TRAILER.size, os.SEEK_END)
        off, n = _TRAILER.unpack(f.read(_TRAILER.size))
        f.seek(off)
        return json.loads(f.read(n))

    def _one(f, idx: dict, e: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
        f.seek(e["offset"])
        raw = decode(f.read(e["nbytes"])) if e["nbytes"] else b""
        return dec(e, raw, tuple(idx["shape"]))  # type: ignore[arg-type]

    def read_one(d: Path, cname: str) -> np.ndarray:
        with open(d / "set.bin", "rb") as f:
            idx = _index(f)
            return _one(f, idx, next(e for e in idx["classes"] if e["name"] == cname))

    def read_all(d: Path) -> dict[str, np.ndarray]:
        with open(d / "set.bin", "rb") as f:
            idx = _index(f)
            return {e["name"]: _one(f, idx, e) for e in idx["classes"]}

    return Candidate(name, write, read_one, read_all)


def mask_store_candidate(shape: tuple[int, int, int]) -> Candidate:
    def write(d: Path, masks: dict[str, np.ndarray]) -> None:
        MaskStore(d).write_label_set("ls-000001", masks, shape)

    return Candidate(
        f"(c) MaskStore: bbox + row packbits + zstd-{ZSTD_LEVEL} (chosen; incl. validation, CRC, fsync)",
        write,
        lambda d, n: MaskStore(d).read("ls-000001", n),
        lambda d: MaskStore(d).read_many("ls-000001"),
    )


def zarr_candidate() -> Candidate | None:
    try:
        import zarr  # not a project dependency: measured only where installed
        from zarr.codecs import BloscCodec
    except ImportError:
        return None

    def write(d: Path, masks: dict[str, np.ndarray]) -> None:
        g = zarr.open_group(store=str(d / "set.zarr"), mode="w")
        for name, m in masks.items():
            a = g.create_array(
                name,
                shape=m.shape,
                chunks=(128, 128, 64),
                dtype=bool,
                compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
            )
            a[:] = m

    def read_one(d: Path, name: str) -> np.ndarray:
        return np.asarray(zarr.open_group(store=str(d / "set.zarr"), mode="r")[name][:])

    def read_all(d: Path) -> dict[str, np.ndarray]:
        g = zarr.open_group(store=str(d / "set.zarr"), mode="r")
        return {name: np.asarray(a[:]) for name, a in g.arrays()}

    return Candidate(
        f"(d) zarr {zarr.__version__} (128x128x64 chunks, blosc zstd-3 bitshuffle)", write, read_one, read_all
    )


def candidates(shape: tuple[int, int, int], affine: np.ndarray) -> list[Candidate]:
    def zstd(level: int) -> tuple[Callable[[np.ndarray], bytes], Callable[[bytes], bytes]]:
        c = Zstd(level=level)
        return (lambda a: bytes(c.encode(a))), (lambda b: bytes(c.decode(b)))

    def blosc(shuffle: int) -> tuple[Callable[[np.ndarray], bytes], Callable[[bytes], bytes]]:
        c = Blosc(cname="zstd", clevel=3, shuffle=shuffle)
        return (lambda a: bytes(c.encode(a))), (lambda b: bytes(c.decode(b)))

    def gzip(level: int) -> tuple[Callable[[np.ndarray], bytes], Callable[[bytes], bytes]]:
        return (lambda a: zlib.compress(a.tobytes(), level)), zlib.decompress

    out = [
        nifti_candidate(affine),
        packed_candidate("(b) full volume packbits + zstd-3", _full_flat(), *zstd(3)),
        packed_candidate(
            "(b) full volume packbits + blosc zstd-3 bitshuffle", _full_flat(), *blosc(Blosc.BITSHUFFLE)
        ),
        packed_candidate(
            "(b) full volume bool bytes + blosc zstd-3 bitshuffle", _full_bytes(), *blosc(Blosc.BITSHUFFLE)
        ),
        packed_candidate("(c) bbox + flat packbits + zstd-3", _bbox_layout(rows=False), *zstd(3)),
        packed_candidate("(c) bbox + row packbits + zlib-6 (stdlib)", _bbox_layout(rows=True), *gzip(6)),
    ]
    out += [
        packed_candidate(f"(c) bbox + row packbits + zstd-{lv}", _bbox_layout(rows=True), *zstd(lv))
        for lv in (1, 3, 9)
    ]
    out.append(mask_store_candidate(shape))
    z = zarr_candidate()
    if z is not None:
        out.append(z)
    return out


# ----------------------------------------------------------------------------------------- timing


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best of ``repeat`` runs: on a shared machine the minimum is the least disturbed estimate."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _du(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def measure(
    c: Candidate, masks: dict[str, np.ndarray], small: str, work: Path, repeat: int
) -> dict[str, float]:
    dirs = [work / f"w{r}" for r in range(repeat)]
    it = iter(dirs)

    def write_fresh() -> None:
        d = next(it)
        d.mkdir()
        c.write(d, masks)

    t_write = _best_time(write_fresh, repeat)
    d = dirs[0]
    # Correctness first: a fast wrong format is no candidate.
    got = c.read_all(d)
    assert set(got) == set(masks) and all(np.array_equal(got[n], masks[n]) for n in masks), c.name
    res = {
        "bytes": float(_du(d)),
        "write_s": t_write,
        "read_liver_s": _best_time(lambda: c.read_one(d, "liver"), repeat),
        "read_small_s": _best_time(lambda: c.read_one(d, small), repeat),
        "read_all_s": _best_time(lambda: c.read_all(d), repeat),
    }
    for x in dirs:
        shutil.rmtree(x, ignore_errors=True)
    return res


def print_table(results: dict[str, dict[str, float]], t_ct: float) -> None:
    """Markdown table: absolute numbers and ratios to the first row (one .nii.gz per class)."""
    base = next(iter(results.values()))
    cols = [
        ("MB on disk", lambda r: f"{r['bytes'] / 1e6:.3f}"),
        ("size x", lambda r: f"{r['bytes'] / base['bytes']:.3f}"),
        ("write s", lambda r: f"{r['write_s']:.3f}"),
        ("write x", lambda r: f"{r['write_s'] / base['write_s']:.3f}"),
        ("write / CT read", lambda r: f"{r['write_s'] / t_ct:.3f}"),
        ("read liver ms", lambda r: f"{r['read_liver_s'] * 1e3:.1f}"),
        ("read liver x", lambda r: f"{r['read_liver_s'] / base['read_liver_s']:.3f}"),
        ("read smallest ms", lambda r: f"{r['read_small_s'] * 1e3:.1f}"),
        ("read all s", lambda r: f"{r['read_all_s']:.3f}"),
        ("read all x", lambda r: f"{r['read_all_s'] / base['read_all_s']:.3f}"),
    ]
    width = max(len(n) for n in results)
    print(f"| {'format':<{width}} | " + " | ".join(c for c, _ in cols) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(c) + 1) + ":" for c, _ in cols) + "|")
    for name, r in results.items():
        print(f"| {name:<{width}} | " + " | ".join(f"{f(r):>{len(c)}}" for c, f in cols) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--phantom", choices=["ellipsoids", "harmonize"], default="ellipsoids")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    shape = tuple(args.shape)
    work = Path(tempfile.mkdtemp(prefix="bench_masks_", dir=args.out))
    affine = np.diag([*SPACING, 1.0])
    try:
        t0 = time.perf_counter()
        if args.phantom == "harmonize":
            from harmonize.phantoms import make_phantom

            ph = make_phantom(0, shape=shape, spacing=SPACING)  # type: ignore[arg-type]
            masks = {n: m for n, m in ph.masks.items() if m.any()}
            ct, label = ph.ct.array, _label_map(masks)
        else:
            masks = make_masks(shape)  # type: ignore[arg-type]
            ct, label = make_ct(masks)
        t_build = time.perf_counter() - t0
        small = min(masks, key=lambda n: int(masks[n].sum()))
        print(
            f"{args.phantom} phantom {shape} at {SPACING} mm, {len(masks)} classes, built in {t_build:.1f} s"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; smallest class: {small}")
        vox_ml = float(np.prod(SPACING)) / 1000
        print("  " + ", ".join(f"{n} {m.sum() * vox_ml:.0f} mL" for n, m in masks.items()))

        nib.save(nib.Nifti1Image(ct, affine), work / "ct.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), work / "label.nii.gz")

        def bare_read() -> None:
            _load_array(work / "ct.nii.gz")
            _load_array(work / "label.nii.gz")

        t_ct = _best_time(lambda: _load_array(work / "ct.nii.gz"), args.repeat)
        t_bare = _best_time(bare_read, args.repeat)
        print(
            f"bare nibabel read: CT image {t_ct:.3f} s, CT image + label map {t_bare:.3f} s "
            f"(ingest budget 2x = {2 * t_bare:.3f} s)\n"
        )

        cands = candidates(shape, affine)  # type: ignore[arg-type]
        results = {}
        for c in cands:
            (work / "c").mkdir()
            results[c.name] = measure(c, masks, small, work / "c", args.repeat)
            shutil.rmtree(work / "c")
        print_table(results, t_ct)
        if not any(n.startswith("(d)") for n in results):
            print("\n(d) zarr: skipped, `import zarr` failed (not installed)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
