"""Pseudo-labelling speed on this machine: seconds per scan in 3 mm mode, and the cost of uncertainty.

A typical abdominal CT (a 512 x 512 x 200 phantom at 0.78 x 0.78 x 2 mm, written as .nii.gz) goes
through the whole per-scan path of ``workbench.pseudolabel.run_scan_job``: read, preprocess (RAS, 3 mm,
window, crop), sliding-window inference (Gaussian blending, overlap 0.5), resampling of every class back to
the original 512 x 512 x 200 grid, post-processing, statistics; once without and once with uncertainty
(test-time augmentation, entropy, plausibility signals, entropy map). The model is the small_unet
benchmark model of ``bench_error_detection.py`` (6 classes, trained or loaded from its cache); windows are
96^3 (the paper's) unless ``--window`` says otherwise.

Targets: < 30 s per scan on the CPU; uncertainty <= 1.5x plain inference.

Usage:
    python benchmarks/bench_pseudolabel.py
    python benchmarks/bench_pseudolabel.py --window 64 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.78, 0.78, 2.0))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "workbench_bench_model"))
    args = parser.parse_args()

    import nibabel as nib
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_error_detection import train_or_load

    from harmonize.phantoms import make_phantom
    from workbench import pseudolabel as pl

    torch.set_num_threads(args.threads)
    ckpt = train_or_load(Path(args.cache), 400)
    seg = dataclasses.replace(pl.Segmenter.from_checkpoint(ckpt), patch=(args.window,) * 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pl_"))
    t = time.perf_counter()
    phantom = make_phantom(42, shape=tuple(args.shape), spacing=tuple(args.spacing))
    path = tmp / "ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom.ct.array, phantom.ct.affine), str(path))
    print(
        f"phantom {tuple(args.shape)} at {tuple(args.spacing)} mm written in {time.perf_counter() - t:.0f} s"
    )
    job = pl.ScanJob(
        scan_id="bench:ct",
        image_path=str(path),
        shape=phantom.ct.shape,
        affine=phantom.ct.affine,
        classes=seg.class_names,
        original_mask_key=None,
        coverage={},
        known_centroids={},
        mask_root=str(tmp / "m"),
    )
    # Warm-up on a small scan: library loading and first-call costs are not per-scan costs.
    small = make_phantom(1, shape=(64, 64, 48), spacing=(4.5, 4.5, 4.0))
    spath = tmp / "small.nii.gz"
    nib.save(nib.Nifti1Image(small.ct.array, small.ct.affine), str(spath))
    warm = dataclasses.replace(job, image_path=str(spath), shape=small.ct.shape, affine=small.ct.affine)
    pl.run_scan_job(seg, warm, pl.JobOptions(3.0, 0.5, args.device, True), {})

    results = {}
    for uncertainty in (False, True):
        res = pl.run_scan_job(seg, job, pl.JobOptions(3.0, 0.5, args.device, uncertainty), {})
        assert res.error is None, res.error
        results[uncertainty] = res
        parts = ", ".join(f"{k} {v:.2f}" for k, v in res.seconds.items())
        print(f"uncertainty={uncertainty}: {res.seconds['total']:.1f} s ({parts})")
    truth = {n: phantom.masks[n] for n in seg.class_names if n in phantom.masks}
    dices = []
    for n, m in results[False].masks.items():
        if n in truth:
            p = m.full()
            dices.append(f"{n} {2 * (p & truth[n]).sum() / max(1, p.sum() + truth[n].sum()):.2f}")
    plain, full = results[False].seconds["total"], results[True].seconds["total"]
    print(
        f"\nDice on the original 512-grid: {', '.join(dices)}\n(the benchmark model was trained at 6 mm on "
        "small phantoms; at 3 mm it is off its scale: these numbers check geometry, not the model)"
    )
    print("\n| machine | window | s/scan (3 mm, plain) | s/scan (with uncertainty) | uncertainty / plain |")
    print("|---|---|---|---|---|")
    print(
        f"| {platform.processor() or platform.machine()}, {args.threads} threads, {args.device} | "
        f"{args.window}^3 | {plain:.1f} | {full:.1f} | {full / plain:.2f}x |"
    )
    print(
        f"targets: < 30 s/scan -> {'met' if plain < 30 else 'NOT met'}; <= 1.5x -> "
        f"{'met' if full / plain <= 1.5 else 'NOT met'}"
    )
    np.testing.assert_equal(results[False].masks.keys(), results[True].masks.keys())
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
