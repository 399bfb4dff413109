"""Full ingest of one 512x512x200 case vs the bare read floor.

The case is a synthetic phantom written as AbdomenCT-1K (.nii.gz image and label, liver / merged kidney
pair / spleen / pancreas). The floor is what no ingest can avoid: nibabel reading the image and the label
into numpy. The full ingest reads, validates, harmonizes (including the left/right split), computes
statistics, hashes, writes the mask store and the catalog transaction. Both are timed in the same run,
interleaved, and the ratio of medians is printed (target <= 2x).

    python benchmarks/bench_ingest.py [--repeats 3] [--shape 512 512 200]
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
from storage.workspace import Workspace
from workbench.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        t0 = time.perf_counter()
        phantom = make_phantom(7, shape=tuple(args.shape), spacing=(0.8, 0.8, 1.5))
        native = write_native(phantom, get_protocol("abdomenct_1k"), tmp / "data", "00001")
        del phantom
        print(
            f"case {tuple(args.shape)} written in {time.perf_counter() - t0:.1f} s: "
            f"image {native.image.stat().st_size / 1e6:.1f} MB, "
            f"label {native.label.stat().st_size / 1e6:.1f} MB"
        )
        floors, fulls = [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            image = np.asanyarray(nib.load(native.image).dataobj)
            label = np.asanyarray(nib.load(native.label).dataobj)
            floors.append(time.perf_counter() - t)
            del image, label
            ws = Workspace.open(tmp / f"ws{r}")
            t = time.perf_counter()
            summary = ingest(ws, "abdomenct_1k", tmp / "data", progress=False)
            fulls.append(time.perf_counter() - t)
            assert summary.added and not summary.skipped, summary.lines()
        floor, full = statistics.median(floors), statistics.median(fulls)
        print(
            f"bare read floor (nibabel image + label): median {floor:.2f} s  {[round(x, 2) for x in floors]}"
        )
        print(f"full ingest (fresh workspace):           median {full:.2f} s  {[round(x, 2) for x in fulls]}")
        print(f"ingest / read floor = {full / floor:.2f}x  (target <= 2x)")
        t = time.perf_counter()
        again = ingest(Workspace.open(tmp / "ws0"), "abdomenct_1k", tmp / "data", progress=False)
        print(
            f"re-ingest of the unchanged case: {time.perf_counter() - t:.2f} s "
            f"({len(again.unchanged)} unchanged)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
