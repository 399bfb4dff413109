"""Double reading on phantoms with known truth: per-class inter-reviewer agreement, and how many of the
readers' injected errors adjudication caught.

Setup (all synthetic, seeded, no model): ``--scans`` phantoms (``harmonize.phantoms``, 64 x 64 x 40 at
4.5 mm) as catalog scans without files; per scan and organ one pseudo-label: the truth itself, or on
``--bad`` of them a gross fault (eroded by 2 voxels, or shifted by 4), each a queue item. The workspace
double-reads ``--share`` of the items (``workbench.review.set_share``). A :class:`ReadingTeam` of simulated
experts reviews the whole queue: reader A (``--error-a``, no boundary noise), reader B (``--error-b``,
corrections ``--noise-b`` voxels off the truth) on the double-read items from B's blind queue, and an
adjudicator without errors on the adjudication list.

Printed: the per-class agreement table (pairs, decision agreement, Cohen's kappa, inter-reader Dice of
corrections, disagreements, adjudicated) and the injected errors: how many fell on double-read items and
how many of those the adjudication turned into the right verdict.

With ``--queue-scale N``: instead, the time of one queue listing (``review.queue``, 200 rows, with its
upkeep) on a synthetic catalog of N scans x 3 queue items with 1 % of them decided, median of 7.

Usage:
    python benchmarks/bench_double_reading.py                 # ~1 min on 2 CPU cores
    python benchmarks/bench_double_reading.py --scans 40 --share 0.5 --error-b 0.3
    python benchmarks/bench_double_reading.py --queue-scale 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas")
SHAPE, SPACING = (64, 64, 40), (4.5, 4.5, 4.5)


def faulty(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grossly wrong version of ``mask``: eroded by 2 voxels or shifted by 4 along i."""
    if rng.random() < 0.5:
        eroded = ndimage.binary_erosion(mask, iterations=2)
        if eroded.any():
            return np.asarray(eroded, dtype=bool)
    return np.roll(mask, 4, axis=0)


def build(root: Path, scans: int, bad: float, seed: int) -> tuple[object, object]:
    """The workspace, its truth (``StoredTruth``), the pseudo-labels and their queue items."""
    from harmonize.phantoms import make_phantom
    from harmonize.taxonomy import class_names
    from storage.catalog import LabelSetRecord
    from storage.synthetic import synthetic_scan
    from storage.workspace import Workspace
    from workbench.learning.simulated_expert import StoredTruth

    ws = Workspace.open(root / "ws")
    truth = StoredTruth(root / "truth")
    affine = np.diag([*SPACING, 1.0])
    items = []
    for n in range(scans):
        scan_id = f"bench:{n:04d}"
        phantom = make_phantom(seed + n, shape=SHAPE, spacing=SPACING, tumors=False)
        masks = {c: phantom.masks[c] for c in ORGANS if c in phantom.masks}
        truth.write(scan_id, masks, SHAPE)
        rng = np.random.default_rng(zlib.crc32(scan_id.encode()) + seed)
        pseudo = {c: faulty(m, rng) if rng.random() < bad else m for c, m in masks.items()}
        ls = f"ls-bench-{n:04d}"
        ws.masks.write_label_set(ls, pseudo, SHAPE)
        cov = {c: "not_annotated" for c in class_names()}
        cov.update({c: "annotated_present" for c in pseudo})
        record = LabelSetRecord(
            id=ls, scan_id=scan_id, version=1, origin="pseudo", mask_key=ls, run_id="bench"
        )
        ws.catalog.add_label_set(record, cov, [], scan=synthetic_scan(scan_id, shape=SHAPE, affine=affine))
        items += [
            {
                "scan_id": scan_id,
                "class_name": c,
                "run_id": "bench",
                "label_set_id": ls,
                "score": float(rng.random()),
                "signals": {},
                "reasons": [],
            }
            for c in pseudo
        ]
    ws.catalog.add_uncertainty(items)
    return ws, truth


def queue_timing(root: Path, n_scans: int) -> str:
    """One line: the median time of a 200-row queue listing on ``n_scans`` synthetic scans x 3 items."""
    import statistics

    from storage.synthetic import build_synthetic_catalog
    from storage.workspace import Workspace
    from workbench import review

    ws = Workspace.open(root / "ws")
    build_synthetic_catalog(ws.catalog, n_scans)
    rng = np.random.default_rng(1)
    rows = [
        {
            "scan_id": scan_id,
            "class_name": c,
            "run_id": "bench",
            "label_set_id": ls,
            "score": float(rng.random()),
            "signals": {},
            "reasons": [],
        }
        for scan_id, ls in ws.catalog.label_sets()[["scan_id", "id"]].itertuples(index=False)
        for c in ("liver", "spleen", "kidney_left")
    ]
    ws.catalog.add_uncertainty(rows)
    for r in rows[: len(rows) // 100]:
        ws.catalog.add_review(r["scan_id"], r["class_name"], r["label_set_id"], "accept", "", "dr")
    t0 = time.perf_counter()
    review.queue(ws, limit=200)  # the first listing plans every item
    first = time.perf_counter() - t0
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        review.queue(ws, limit=200)
        times.append(time.perf_counter() - t0)
    return (
        f"queue listing, {n_scans} scans x 3 items ({len(rows) // 100} decided): first {first * 1000:.0f} ms "
        f"(plans every item), then median {statistics.median(times) * 1000:.0f} ms"
    )


def main() -> None:
    from workbench import review
    from workbench.learning.simulated_expert import ReadingTeam, SimulatedExpert

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", type=int, default=20)
    p.add_argument("--bad", type=float, default=0.4, help="share of grossly wrong pseudo-labels")
    p.add_argument("--share", type=float, default=0.3, help="double-read share")
    p.add_argument("--error-a", type=float, default=0.05, help="reader A's rate of wrong calls")
    p.add_argument("--error-b", type=float, default=0.2, help="reader B's rate of wrong calls")
    p.add_argument("--noise-b", type=int, default=1, help="reader B's boundary noise (voxels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queue-scale", type=int, default=0, help="time the queue on this many scans instead")
    args = p.parse_args()
    if args.queue_scale:
        with tempfile.TemporaryDirectory() as tmp:
            print(queue_timing(Path(tmp), args.queue_scale))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws, truth = build(Path(tmp), args.scans, args.bad, args.seed)
        review.set_share(ws, args.share)  # type: ignore[arg-type]
        budget = float(10 * args.scans * len(ORGANS))
        team = ReadingTeam(
            SimulatedExpert(ws, truth, budget, reviewer="reader A", error_rate=args.error_a, seed=args.seed),  # type: ignore[arg-type]
            SimulatedExpert(
                ws,  # type: ignore[arg-type]
                truth,  # type: ignore[arg-type]
                budget,
                reviewer="reader B",
                error_rate=args.error_b,
                boundary_noise=args.noise_b,
                seed=args.seed,
            ),
            SimulatedExpert(ws, truth, budget, reviewer="adjudicator", seed=args.seed),  # type: ignore[arg-type]
        )
        first = team.review_items(review.queue(ws))  # type: ignore[arg-type]
        table = review.agreement(ws)  # type: ignore[arg-type]
        errors = team.error_summary()
        elapsed = time.perf_counter() - t0
    print(
        f"{args.scans} scans, {len(first)} items read by A, {len(team.second_outcomes)} double-read "
        f"(share {args.share:.0%}), {len(team.adjudications)} adjudicated; {elapsed:.0f} s"
    )
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
        print(table.to_string(index=False))
    print(
        f"injected reviewer errors: {errors['injected']} ({errors['double_read']} on double-read items, "
        f"{errors['single_read']} on single-read ones); adjudication caught {errors['caught']} of the "
        f"{errors['double_read']}, missed {errors['missed']} (both readers wrong alike)"
    )


if __name__ == "__main__":
    main()
