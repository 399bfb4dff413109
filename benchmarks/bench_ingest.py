"""Ingest vs a plain read of the same files, and cases per minute with 1 and N worker processes.

Two datasets of 512x512x200 synthetic phantoms (written once, cached under the temp folder): one case in
the AbdomenCT-1K layout (int16 image, liver / merged kidney pair / spleen / pancreas) and ``--kits``
cases in the KiTS23 layout (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, float image). The
floor is what a plain read costs: nibabel reading every image and label into numpy
(``np.asanyarray(nib.load(p).dataobj)``). The full ingest reads, validates, harmonizes (the left/right
split included), computes statistics, hashes, writes the mask store and commits the catalog. Both are
timed in the same run, interleaved, on the same files (fresh workspace per repeat), and the ratio of
medians is printed per dataset (target <= 1.0).

``--workers N`` then ingests ``--worker-cases`` KiTS23-layout cases (8 by default, written once under
their own folder: with 3 cases the workers' start-up was most of the run) with 1 process and with N
worker processes (fresh workspaces; the N-worker run is the first of this process, so it pays the fork
server's start-up once, as a ``workbench ingest --workers N`` does) and prints cases per minute, the
ratio, and the CPU seconds of this process (1 process: all of the work; N workers: the driver's share).

    python benchmarks/bench_ingest.py [--repeats 3] [--kits 3] [--shape 512 512 200] [--workers 2]
        [--worker-cases 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from harmonize.readers import GZIP_ENGINE
from storage.workspace import Workspace
from workbench.ingest import ingest

TARGET = 1.0


def dataset(root: Path, source: str, cases: int, shape: tuple[int, int, int]) -> list[Path]:
    """Write (once) ``cases`` phantoms of ``source`` under ``root``; returns every image and label file."""
    done = root / f".{source}-{cases}"
    if not done.exists():
        shutil.rmtree(root / source, ignore_errors=True)
        t = time.perf_counter()
        for i in range(cases):
            phantom = make_phantom(7 + i, shape=shape, spacing=(0.8, 0.8, 1.5))
            case = f"case_{i:05d}" if source == "kits23" else f"{i + 1:05d}"
            write_native(phantom, get_protocol(source), root / source, case)
        print(f"{source}: {cases} case(s) {shape} written in {time.perf_counter() - t:.0f} s")
        done.write_text("ok")
    return sorted(p for p in (root / source).rglob("*.nii.gz"))


def floor_s(files: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of nibabel reading ``files``."""
    t, c = time.perf_counter(), time.process_time()
    for p in files:
        np.asanyarray(nib.load(p).dataobj)
    return time.perf_counter() - t, time.process_time() - c


def ingest_s(source: str, data: Path, ws_root: Path, workers: int = 1) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread; worker processes not counted) of one ingest
    into a fresh workspace."""
    shutil.rmtree(ws_root, ignore_errors=True)
    ws = Workspace.open(ws_root)
    t, c = time.perf_counter(), time.process_time()
    summary = ingest(ws, source, data, progress=False, workers=workers)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    assert summary.added and not summary.skipped, summary.lines()
    return elapsed, cpu


def ratio(source: str, cases: int, shape: tuple[int, int, int], repeats: int, root: Path, tmp: Path) -> None:
    files = dataset(root, source, cases, shape)
    mb = sum(p.stat().st_size for p in files) / 1e6
    floors, fulls = [], []
    for r in range(repeats):
        floors.append(floor_s(files))
        fulls.append(ingest_s(source, root / source, tmp / f"ws-{source}-{r}"))
    floor, full = (statistics.median(x[0] for x in floors), statistics.median(x[0] for x in fulls))
    floor_cpu, full_cpu = (statistics.median(x[1] for x in floors), statistics.median(x[1] for x in fulls))
    print(f"{source}, {cases} case(s), {mb:.0f} MB of .nii.gz:")
    print(f"  plain read (nibabel, image + label): median {floor:.2f} s  {[round(x[0], 2) for x in floors]}")
    print(f"  full ingest (fresh workspace):       median {full:.2f} s  {[round(x[0], 2) for x in fulls]}")
    print(f"  ingest / plain read = {full / floor:.2f}x  (target <= {TARGET:.1f}x)")
    print(
        f"  CPU time (all threads): read {floor_cpu:.2f} s, ingest {full_cpu:.2f} s, "
        f"{full_cpu / floor_cpu:.2f}x (the load of other processes does not move it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kits", type=int, default=3, help="KiTS23-layout cases")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    parser.add_argument("--workers", type=int, default=0, help="also time 1 vs N worker processes")
    parser.add_argument("--worker-cases", type=int, default=8, help="KiTS23-layout cases for --workers")
    parser.add_argument("--skip-ratio", action="store_true", help="only the --workers figures")
    args = parser.parse_args()
    shape = tuple(args.shape)
    root = Path(tempfile.gettempdir()) / f"workbench-bench-ingest-{'x'.join(map(str, shape))}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    print(f"gzip engine: {GZIP_ENGINE}")
    try:
        if not args.skip_ratio:
            ratio("abdomenct_1k", 1, shape, args.repeats, root, tmp)  # type: ignore[arg-type]
            ratio("kits23", args.kits, shape, args.repeats, root, tmp)  # type: ignore[arg-type]
            t = time.perf_counter()
            again = ingest(Workspace.open(tmp / "ws-kits23-0"), "kits23", root / "kits23", progress=False)
            print(
                f"re-ingest of the unchanged kits23 cases: {time.perf_counter() - t:.2f} s "
                f"({len(again.unchanged)} unchanged)"
            )
        if args.workers > 1:
            n = args.worker_cases
            data = root / "workers"
            dataset(data, "kits23", n, shape)  # type: ignore[arg-type]
            many, many_cpu = ingest_s("kits23", data / "kits23", tmp / "ws-wn", workers=args.workers)
            one, one_cpu = ingest_s("kits23", data / "kits23", tmp / "ws-w1")
            per_min_one, per_min_many = 60 * n / one, 60 * n / many
            print(
                f"kits23, {n} cases: 1 process {per_min_one:.1f} cases/min ({one:.1f} s, {one_cpu:.1f} CPU s)"
            )
            print(
                f"kits23, {n} cases: {args.workers} workers {per_min_many:.1f} cases/min ({many:.1f} s, "
                f"driver {many_cpu:.1f} CPU s), {per_min_many / per_min_one:.2f}x of 1 process"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
