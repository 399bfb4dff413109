"""Pseudo-labelling throughput of the release backbones on a GPU, and host memory of a CPU run.

GPU mode (a CUDA device is visible): for each backbone (U-Net, Swin UNETR; seeded weights in the release
layout: throughput does not depend on the values) at the paper's settings (RAS, 1.5 mm, 96^3 windows,
overlap 0.5, Gaussian blending, 32 classes, no TTA) on ``--scans`` synthetic 512 x 512 x 300 CTs
(0.78 x 0.78 x 1.5 mm phantoms, .nii.gz), the per-scan path of a pseudo-label job
(``workbench.pseudolabel.run.LocalExecutor``: the next scan read and preprocessed in a background thread,
mixed precision, ``--sw-batch-size`` windows per forward, slab-wise blending, resampling of every class
to the original grid, post-processing, statistics, uncertainty signals) runs after one warm-up scan.
Printed per backbone: CTs per minute, device peak memory, host peak memory (the measuring process'
peak RSS; each backbone runs in its own process), and the share of the wall time the device spent in
the model's forwards (CUDA events).

Without a GPU it says "no GPU found" and runs a reduced CPU measurement (a 64 x 64 x 48 phantom at 3 mm,
64^3 windows: a few windows per backbone, under ~2 minutes on 2 cores) so the script is exercised.

``--cpu-memory``: host peak memory of pseudo-labelling ONE 512 x 512 x 400 CT on the CPU with the small
CPU model (small_unet, 32 classes, 3 mm, uncertainty on; seeded weights), in a fresh process; target
within 16 GB.

Usage:
    python benchmarks/bench_gpu.py                    # GPU figures, or the reduced CPU run
    python benchmarks/bench_gpu.py --scans 6 --sw-batch-size 8
    python benchmarks/bench_gpu.py --cpu-memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ("unet3d", "swinunetr")


def _phantom_file(folder: Path, seed: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Path:
    """Write a synthetic phantom CT as .nii.gz; return its path."""
    import nibabel as nib

    from harmonize.phantoms import make_phantom

    phantom = make_phantom(seed, shape=shape, spacing=spacing)  # type: ignore[arg-type]
    path = folder / f"ct_{seed}.nii.gz"
    nib.save(nib.Nifti1Image(phantom.ct.array, phantom.ct.affine), str(path))
    return path


def _job(path: Path, classes: tuple[str, ...], mask_root: Path) -> Any:
    from harmonize.readers import read_volume
    from workbench.pseudolabel import ScanJob

    vol = read_volume(str(path))
    return ScanJob(
        scan_id=f"bench:{path.stem}",
        image_path=str(path),
        shape=vol.shape,
        affine=vol.affine,
        classes=classes,
        original_mask_key=None,
        coverage={},
        known_centroids={},
        mask_root=str(mask_root),
    )


class _TimedModule:
    """Wraps a module and records the device time of every forward (CUDA events; wall time on a CPU)."""

    def __init__(self, module: Any, device: str) -> None:
        self.module, self.device, self.events, self.cpu_s = module, device, [], 0.0

    def to(self, device: Any) -> _TimedModule:
        self.module = self.module.to(device)
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        if self.device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.module(x)
            end.record()
            self.events.append((start, end))
            return out
        t = time.perf_counter()
        out = self.module(x)
        self.cpu_s += time.perf_counter() - t
        return out

    def busy_s(self) -> float:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000.0
        return self.cpu_s


def _release_segmenter(backbone: str, patch: int) -> Any:
    import torch

    from harmonize.taxonomy import class_names
    from workbench.model.network import UniversalModel
    from workbench.model.registry import RELEASE_SETTINGS
    from workbench.pseudolabel import Segmenter

    torch.manual_seed(0)
    model = UniversalModel(backbone, n_classes=32).eval()
    return Segmenter(
        model,
        tuple(class_names()),
        (1.5, 1.5, 1.5),
        (patch,) * 3,
        f"bench-{backbone}",
        backbone=backbone,
        kind="release",
        settings=dict(RELEASE_SETTINGS),
    )


def measure(backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    """One backbone in this process: warm-up scan, then ``args.scans`` timed scans."""
    import dataclasses

    import torch

    from workbench.pseudolabel import JobOptions
    from workbench.pseudolabel.run import LocalExecutor

    gpu = torch.cuda.is_available() and not args.cpu
    device = "cuda" if gpu else "cpu"
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    shape, spacing, low_res, patch = (
        ((512, 512, 300), (0.78, 0.78, 1.5), None, 96) if gpu else ((64, 64, 48), (3.0, 3.0, 3.0), 3.0, 64)
    )
    seg = _release_segmenter(backbone, patch)
    timed = _TimedModule(seg.module, device)
    seg = dataclasses.replace(seg, module=timed)
    t = time.perf_counter()
    paths = [_phantom_file(tmp, 100 + i, shape, spacing) for i in range(args.scans + 1)]
    written_s = time.perf_counter() - t
    jobs = [_job(p, seg.class_names, tmp / "masks") for p in paths]
    options = JobOptions(low_res, 0.5, device, True, False, args.sw_batch_size if gpu else 1)
    executor = LocalExecutor()
    list(executor.results(seg, jobs[:1], options, {}))  # warm-up: kernels, cuDNN autotune, allocator
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed.events, timed.cpu_s = [], 0.0
    t = time.perf_counter()
    results = list(executor.results(seg, jobs[1:], options, {}))
    wall = time.perf_counter() - t
    errors = [r.error for r in results if r.error]
    return {
        "backbone": backbone,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "scans": len(results),
        "shape": list(shape),
        "spacing_mm": 1.5 if low_res is None else low_res,
        "window": patch,
        "sw_batch_size": options.sw_batch_size,
        "cts_per_min": 60.0 * len(results) / wall,
        "s_per_ct": wall / len(results),
        "device_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device_busy": timed.busy_s() / wall,
        "phantoms_written_s": written_s,
        "errors": errors,
    }


def cpu_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Host peak memory of one 512 x 512 x 400 CT pseudo-labelled on the CPU with the small CPU model."""
    import torch

    from harmonize.taxonomy import class_names
    from workbench.model.network import UniversalModel
    from workbench.pseudolabel import JobOptions, Segmenter
    from workbench.pseudolabel.run import LocalExecutor

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    path = _phantom_file(tmp, 7, (512, 512, 400), (0.78, 0.78, 1.0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.manual_seed(0)
    names = tuple(class_names())
    seg = Segmenter(UniversalModel("small_unet", n_classes=32).eval(), names, (3.0,) * 3, (96,) * 3, "small")
    t = time.perf_counter()
    (result,) = LocalExecutor().results(
        seg, [_job(path, names, tmp / "masks")], JobOptions(3.0, 0.5, "cpu", True, False), {}
    )
    return {
        "shape": [512, 512, 400],
        "classes": len(names),
        "seconds": time.perf_counter() - t,
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "host_peak_after_writing_the_phantom_gib": before,
        "error": result.error,
    }


def _child(flag: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in a fresh process (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, *flag, "--scans", str(args.scans), "--threads", str(args.threads)]
    cmd += ["--sw-batch-size", str(args.sw_batch_size)] + (["--cpu"] if args.cpu else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=3, help="timed scans per backbone (after one warm-up)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward on the GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--cpu", action="store_true", help="the reduced CPU run even where a GPU is found")
    parser.add_argument("--cpu-memory", action="store_true", help="host peak of one 512x512x400 CPU run")
    parser.add_argument("--one", choices=BACKBONES, help=argparse.SUPPRESS)
    parser.add_argument("--one-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    if args.one_memory:
        print(json.dumps(cpu_memory(args)))
        return
    if args.cpu_memory:
        r = _child(["--one-memory"], args)
        print(
            f"CPU pseudo-label of one 512x512x400 CT (small_unet, {r['classes']} classes, 3 mm, "
            "uncertainty): "
            f"host peak {_gib(r['host_peak_gib'])} (target <= 16 GB), {r['seconds']:.0f} s"
            + (f"; error: {r['error']}" if r["error"] else "")
        )
        return
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    if not gpu:
        print(
            "no GPU found: reduced CPU measurement (64x64x48 phantom at 3 mm, 64^3 windows), "
            "not the GPU figures"
        )
    for backbone in BACKBONES:
        r = _child(["--one", backbone], args)
        print(
            f"{backbone:9s} on {r['device']}: {r['cts_per_min']:.2f} CTs/min ({r['s_per_ct']:.1f} s per "
            f"{'x'.join(map(str, r['shape']))} CT at {r['spacing_mm']:g} mm, {r['scans']} scans, "
            f"{r['window']}^3 windows, sw_batch_size {r['sw_batch_size']}); device peak "
            f"{_gib(r['device_peak_gib'])}, host peak {_gib(r['host_peak_gib'])}, device busy "
            f"{100 * r['device_busy']:.0f}% of the wall time"
            + (f"; errors: {r['errors']}" if r["errors"] else "")
        )


if __name__ == "__main__":
    main()
