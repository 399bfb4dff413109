"""The proof: at an equal review budget, our queue improves the training set faster than random review.

Setup (all synthetic and seeded; every step is the product's own code):

* a phantom corpus written in the native conventions of six sources, ingested: two that annotate most
  organs (TotalSegmentator, AMOS22), so that every organ is taught by some source, and four that annotate
  one organ and its tumour (KiTS23, LiTS, MSD pancreas, MSD spleen), so that most of their scan x class
  items are NOT annotated; a held-out split (``workbench.learning.split.held_out_split``) is chosen once;
* round 1, shared by both arms: a small model (``small_unet``; a vocabulary of 12 organs and 2 tumours,
  ``CLASSES``) is trained from scratch on the partial labels, evaluated on the held-out scans, and
  PSEUDO-LABELS every class the training scans lack, with uncertainty signals, which builds the review
  queue (``workbench.learning.rounds.run_round``);
* the workspace is then copied twice. In each copy ``--rounds`` more rounds run, each one: the simulated
  expert (``SimulatedExpert``: accepts a pseudo-label whose Dice against the phantom truth is >= 0.9,
  otherwise replaces it by the truth; cost 1 per item) reviews ``--budget`` items, (a) in the order of our
  queue (``workbench.review.rank``) or (b) in a seeded random order of the same undecided items; then the
  model is fine-tuned from the previous round on the new training set (revised > original > pseudo),
  evaluated on the held-out scans, and pseudo-labels the training scans again.

After each round it prints, for both arms, the training set's LABEL QUALITY (mean Dice against the truth
over ALL scan x class items of the training scans for the vocabulary's classes: original, revised and
pseudo; an empty label where the truth is empty counts as Dice 1), the number of items still wrong
(Dice < 0.9), and the model's HELD-OUT mean Dice (MONAI metrics, ``workbench.learning.evaluation``).
Target: our queue reaches random selection's final label quality with at most a quarter of random's
total review budget (the budget ratio), as the mean over 3 seeds (new phantoms, training seed and random
order each), printed with its spread.

The queue arm reviews in the order an active-learning round uses (``rank(..., order="gain")``: the
expected gain of a review from the item's score and its class's held-out Dice in the round that made it).
Each seed trains with ``--threads`` torch threads (1: on a loaded machine two threads cost ten times the
CPU time); ``--jobs 3`` runs the three seeds at once, in three processes (the same results).

    python benchmarks/bench_active_learning.py --jobs 3   # 18 phantoms, 500 + 2 x 30 steps, 2 x 18 items
    python benchmarks/bench_active_learning.py --seeds 1 --scans 24 --rounds 3 --budget 10 --steps 40
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harmonize.phantoms import write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.learning.metrics import dice
from workbench.learning.rounds import run_round, tiny_config, training_entries
from workbench.learning.simulated_expert import PhantomSpec, PhantomTruth, SimulatedExpert
from workbench.learning.vocabularies import embed
from workbench.model.train import TrainConfig

SOURCES = ("totalsegmentator", "amos22", "kits23", "lits", "msd_pancreas", "msd_spleen")
#: The model's vocabulary: the organs a small CPU model can learn at 5 mm in minutes, and two tumours.
#: (With all 32 classes the first model leaves three quarters of the items wrong: vessels, adrenals and
#: the oesophagus need more than this budget, and nothing is left for a queue to choose from.)
CLASSES = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "stomach",
    "pancreas",
    "gall_bladder",
    "aorta",
    "postcava",
    "lung_right",
    "lung_left",
    "bladder",
    "liver_tumor",
    "kidney_tumor",
)
SHAPE, SPACING = (64, 64, 44), (5.0, 5.0, 5.0)
WRONG_DICE = 0.9
TARGET_RATIO = 0.25
#: Prefix of this process's lines (``[seed N] `` when seeds run in parallel worker processes).
_PREFIX = ""


def say(text: str) -> None:
    """Print ``text`` now, each line with this process's prefix."""
    print("\n".join(_PREFIX + line for line in text.split("\n")), flush=True)


def case_id(source: str, i: int) -> str:
    """A case name the source's inclusion rules accept."""
    protocol = get_protocol(source)
    if protocol.inclusion.get("case_number"):
        lo = (protocol.inclusion.get("case_number_range") or [1])[0] or 1
        return f"{lo + i:04d}"
    return f"al{i:03d}"


def build_corpus(root: Path, n_scans: int, seed: int = 0) -> tuple[Workspace, dict[str, PhantomSpec]]:
    """Write and ingest the phantom corpus (phantom seeds ``5000 + 1000 * seed + i``); returns the
    workspace and each scan's phantom spec."""
    specs_by_case: dict[tuple[str, str], PhantomSpec] = {}
    for i in range(n_scans):
        source = SOURCES[i % len(SOURCES)]
        missing = ("kidney_left",) if i % 7 == 3 else ()
        spec = PhantomSpec(5000 + 1000 * seed + i, shape=SHAPE, spacing=SPACING, missing=missing)
        cid = case_id(source, i // len(SOURCES))
        write_native(spec.make(), get_protocol(source), root / "data" / source, cid)
        specs_by_case[(source, cid)] = spec
    ws = Workspace.open(root / "ws")
    for source in SOURCES:
        summary = ingest(ws, source, root / "data" / source, progress=False)
        if summary.skipped:
            raise RuntimeError(f"ingest skipped {summary.skipped}")
    scans = {(source, cid): ws.catalog.scan_by_case(source, cid) for source, cid in specs_by_case}
    return ws, {str(row["id"]): specs_by_case[key] for key, row in scans.items() if row is not None}


def label_quality(
    ws: Workspace, truth: PhantomTruth, classes: tuple[str, ...] = CLASSES
) -> tuple[float, int, int]:
    """(mean Dice vs truth, items with Dice < WRONG_DICE, items) over every scan x class item of the
    training scans' training set, for the model's ``classes``."""
    entries, _ = training_entries(ws)
    scores = []
    for e in entries:
        full = truth.masks(e.scan_id)
        for name in (n for n in e.annotated if n in classes):
            t = full.get(name)
            label = np.asarray(e.masks[name], dtype=bool) if name in e.present else None
            if t is None or not t.any():
                scores.append(1.0 if label is None or not label.any() else 0.0)
            elif label is None:
                scores.append(0.0)
            else:
                scores.append(dice(label, t))
    s = np.asarray(scores)
    return float(s.mean()), int((s < WRONG_DICE).sum()), len(s)


class RandomOrder:
    """The baseline reviewer: the same expert, given the same undecided items in a seeded random order."""

    def __init__(self, expert: SimulatedExpert, seed: int) -> None:
        self.expert = expert
        self.rng = np.random.default_rng(seed)

    def __call__(self, items: pd.DataFrame, budget: int) -> list[object]:
        shuffled = items.iloc[self.rng.permutation(len(items))].reset_index(drop=True)
        return list(self.expert.review_items(shuffled, limit=budget))


@dataclasses.dataclass
class Row:
    """One arm after one round: items reviewed so far, label quality, wrong items, held-out Dice, and
    ``curve``: (items reviewed, label quality) after each item of this round's review, before the round's
    fine-tuning and new pseudo-labels (exact: a correction lifts one item from its Dice to 1)."""

    reviewed: int
    quality: float
    wrong: int
    held_out_dice: float | None
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def held_out_dice(metrics: dict[str, object]) -> float | None:
    value = metrics.get("mean_dice") if metrics.get("evaluated", True) else None
    return None if value is None else float(value)  # type: ignore[arg-type]


def run_arm(
    ws: Workspace,
    specs: dict[str, PhantomSpec],
    arm: str,
    vocabulary: str,
    config: TrainConfig,
    rounds: int,
    budget: int,
    seed: int,
    first: Row,
) -> list[Row]:
    """``rounds`` review + fine-tune rounds in one workspace copy; one row per round, round 1 first."""
    truth = PhantomTruth(ws, specs, cache_size=4)
    expert = SimulatedExpert(ws, truth, budget=rounds * budget, image=truth.image)
    reviewer = expert if arm == "queue" else RandomOrder(expert, seed)
    out = [first]
    n_items = label_quality(ws, truth)[2]
    for r in range(rounds):
        t = time.perf_counter()
        spent_before = int(expert.spent)
        result = run_round(
            ws,
            vocabulary=vocabulary,
            config=dataclasses.replace(config, seed=seed + 1 + r),
            review_budget=budget,
            reviewer=reviewer,
            truth=truth.scan_truth,
        )
        curve, q_item = [], out[-1].quality
        for j, o in enumerate(result.outcomes, start=1):
            q_item += (1.0 - o.dice_before) / n_items if o.action == "corrected" else 0.0
            curve.append((spent_before + j, q_item))
        q, wrong, n_items = label_quality(ws, truth)
        out.append(Row(int(expert.spent), q, wrong, held_out_dice(result.metrics), curve))
        say(
            f"  {arm}: round {result.round_number} reviewed {expert.spent:g} items "
            f"({expert.counts()['corrected']} corrected; this round's items had mean Dice "
            f"{np.mean([o.dice_before for o in result.outcomes]) if result.outcomes else float('nan'):.3f}), "
            f"label quality {q:.4f}, held-out Dice "
            f"{out[-1].held_out_dice}, {time.perf_counter() - t:.0f} s"
        )
    return out


def budget_ratio(queue: list[Row], random: list[Row]) -> tuple[float, int | None, int]:
    """(random's final label quality, items our queue needed to reach it or None, random's items).

    Our queue's quality is followed item by item within each round (``Row.curve``) and at each round's
    end (after fine-tuning and new pseudo-labels)."""
    final, total = random[-1].quality, random[-1].reviewed
    points = [p for row in queue for p in (*row.curve, (row.reviewed, row.quality))]
    reached = [spent for spent, q in points if q >= final - 1e-12]
    return final, (reached[0] if reached else None), total


@dataclasses.dataclass
class SeedResult:
    """One repetition: the budget ratio (None when our queue never reached random's final quality),
    random's final label quality, the items our queue needed (None: not reached), random's items, and
    the printed table of both arms round by round."""

    ratio: float | None
    final: float
    reached: int | None
    total: int
    table: list[str]


def run_seed(args: argparse.Namespace, seed: int) -> SeedResult:
    """One repetition (new phantoms, training seed and random order): the first model, then both arms.

    Training and inference use ``args.threads`` torch threads (1 by default: on a shared, loaded machine
    two threads that wait on each other cost ten times the CPU time of one).
    """
    global _PREFIX
    if args.jobs > 1:
        _PREFIX = f"[seed {seed}] "
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, specs = build_corpus(root, args.scans, seed)
        vocab, _ = embed(ws, encoder="minilm", classes=CLASSES, name="bench-minilm")
        truth = PhantomTruth(ws, specs, cache_size=4)
        first_config = dataclasses.replace(
            tiny_config(args.first_steps, seed),
            small_features=(8, 16, 32, 64, 128, 16),
            lr=2e-3,
            lr_schedule="cosine",
            num_threads=args.threads,
        )
        first_config = dataclasses.replace(
            first_config, pipeline=dataclasses.replace(first_config.pipeline, rotate90_p=args.rotate90_p)
        )
        t = time.perf_counter()
        first = run_round(
            ws, vocabulary=vocab, config=first_config, from_scratch=True, truth=truth.scan_truth
        )
        q0, wrong0, n_items = label_quality(ws, truth)
        first_row = Row(0, q0, wrong0, held_out_dice(first.metrics))
        n_train = first.inputs["scans"]
        say(
            f"seed {seed}: {args.scans} phantoms in {len(SOURCES)} sources' conventions, {n_train} for "
            f"training and {first.inputs['held_out_scans']} held out; model classes: {', '.join(CLASSES)}; "
            f"{n_items} training scan x class items; first model: small_unet, {args.first_steps} steps, "
            f"held-out Dice {first_row.held_out_dice}; built in {time.perf_counter() - t0:.0f} s "
            f"(first round {time.perf_counter() - t:.0f} s)"
        )
        say(f"before review: label quality {q0:.4f}, {wrong0} items with Dice < {WRONG_DICE}")
        tune = dataclasses.replace(first_config, max_steps=args.steps, lr=args.tune_lr)
        results = {}
        for arm in ("queue", "random"):
            shutil.copytree(root / "ws", root / f"ws-{arm}")
            results[arm] = run_arm(
                Workspace.open(root / f"ws-{arm}"),
                specs,
                arm,
                vocab,
                tune,
                args.rounds,
                args.budget,
                seed,
                first_row,
            )
        table = [
            f"seed {seed}:",
            f"{'round':>5} {'reviewed':>8} | {'queue: quality':>14} {'wrong':>5} {'held-out Dice':>13} | "
            f"{'random: quality':>15} {'wrong':>5} {'held-out Dice':>13}",
        ]

        def fmt(x: float | None) -> str:
            return f"{x:13.4f}" if x is not None else f"{'-':>13}"

        for r, (a, b) in enumerate(zip(results["queue"], results["random"], strict=True), start=1):
            table.append(
                f"{r:>5} {a.reviewed:>8} | {a.quality:>14.4f} {a.wrong:>5} {fmt(a.held_out_dice)} | "
                f"{b.quality:>15.4f} {b.wrong:>5} {fmt(b.held_out_dice)}"
            )
        final, reached, total = budget_ratio(results["queue"], results["random"])
        ratio = reached / total if reached is not None and total else None
        if ratio is not None:
            table.append(
                f"seed {seed}: our queue reaches random's final label quality ({final:.4f} after {total} "
                f"items) after {reached} items: budget ratio {ratio:.2f}; {time.perf_counter() - t0:.0f} s"
            )
        else:
            table.append(
                f"seed {seed}: our queue does NOT reach random's final label quality ({final:.4f}) within "
                f"{total} items; {time.perf_counter() - t0:.0f} s"
            )
        say("\n".join(["", *table]))
        return SeedResult(ratio, final, reached, total, table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=18)
    ap.add_argument("--rounds", type=int, default=2, help="review rounds after the first model")
    ap.add_argument("--budget", type=int, default=18, help="items reviewed per round (both arms)")
    ap.add_argument("--first-steps", type=int, default=500, help="steps of the first model")
    ap.add_argument("--steps", type=int, default=30, help="fine-tuning steps per round")
    ap.add_argument(
        "--tune-lr",
        type=float,
        default=1e-4,
        help="fine-tuning learning rate (cosine decay; higher rates undo the first model's last steps)",
    )
    ap.add_argument(
        "--rotate90-p",
        type=float,
        default=0.1,
        help="RandRotate90 probability in training (rotations in the axial plane put a right organ where "
        "the left one lies)",
    )
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--seeds", type=int, default=3, help="repetitions (mean and spread of the ratio)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per seed")
    ap.add_argument(
        "--jobs", type=int, default=1, help="seeds run at once, each in its own process (same results)"
    )
    args = ap.parse_args()
    if args.threads < 1 or args.jobs < 1:
        ap.error("--threads and --jobs must be >= 1")
    t0 = time.perf_counter()
    seeds = range(args.seed, args.seed + args.seeds)
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(args.jobs, args.seeds), mp_context=ctx) as pool:
            results = list(pool.map(run_seed, [args] * len(seeds), seeds))
        say("\n".join(["", *(line for res in results for line in res.table)]))  # in seed order
    else:
        results = [run_seed(args, seed) for seed in seeds]
    ratios = [res.ratio for res in results]
    reached = np.array([r for r in ratios if r is not None], dtype=float)
    missed = sum(r is None for r in ratios)
    if len(reached):
        verdict = "MET" if reached.mean() <= TARGET_RATIO and not missed else "NOT MET"
        print(
            f"\nbudget ratio over {args.seeds} seeds: {reached.mean():.2f} +- {reached.std():.2f} "
            f"(per seed {', '.join('-' if r is None else f'{r:.2f}' for r in ratios)}; "
            f"{missed} not reached); target <= {TARGET_RATIO:.2f}: {verdict}"
        )
    else:
        print(f"\nour queue did not reach random's final label quality in any of {args.seeds} seeds")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
