"""The built-in demo workspace: synthetic phantoms written in several sources' native conventions,
then ingested like real downloads.

Everything in it is SYNTHETIC (``harmonize.phantoms``): plausible HU and anatomy, not patients. The
workspace says so in its catalog (``schema_meta.demo``) and in ``DEMO.txt``. Each phantom's generation spec
(seed, shape, missing organs, variant) is kept in ``demo_data/phantoms.json`` so that its complete truth can
be regenerated (:func:`demo_truth_specs` -> ``PhantomTruth``). :func:`run_demo_round` then trains a tiny
model, pseudo-labels, ranks the queue and runs one active-learning round with the simulated expert, a
share of whose items (:data:`DEMO_DOUBLE_READ_SHARE`) a second, less careful simulated reader reads blind
and a third adjudicates; the summary prints their agreement.

Example:
    >>> from storage.workspace import Workspace
    >>> lines = build_demo(Workspace.open("/tmp/demo-ws"), cases_per_source=1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest

#: Sources of the demo, chosen to show every layout kind and every kind of split:
#: merged kidneys (KiTS, AbdomenCT-1K), merged lungs (CT-ORG), DICOM + PNG (CHAOS), one file per class
#: (TotalSegmentator), case-number inclusion rules (AMOS22), tumours inside organs (LiTS, MSD pancreas).
DEMO_SOURCES = (
    "btcv",
    "kits23",
    "abdomenct_1k",
    "amos22",
    "lits",
    "msd_pancreas",
    "ct_org",
    "chaos_ct",
    "totalsegmentator",
)
DEMO_SHAPE = (96, 96, 64)
PHANTOMS_JSON = "phantoms.json"
NOTICE = (
    "This workspace was built by `workbench demo` from SYNTHETIC phantoms (harmonize.phantoms), written in\n"
    "the native file conventions of several public sources and ingested like real downloads.\n"
    "No image in it comes from a patient.\n"
)


def _case_id(source: str, i: int) -> str:
    protocol = get_protocol(source)
    if protocol.inclusion.get("case_number"):
        lo = (protocol.inclusion.get("case_number_range") or [1])[0] or 1
        return f"{lo + i:04d}"
    return f"demo{i:03d}"


def write_demo_data(root: Path, cases_per_source: int = 3, progress: bool = True) -> dict[str, Path]:
    """Write the demo phantoms; returns source id -> dataset root. Every case is a distinct phantom;
    every third one has lost its left kidney, and one has a horseshoe kidney."""
    roots = {}
    specs = []
    jobs = [(s, i) for s in DEMO_SOURCES for i in range(cases_per_source)]
    for n, (source, i) in enumerate(tqdm(jobs, desc="demo phantoms", unit="case", disable=not progress)):
        missing = ("kidney_left",) if i % 3 == 2 else ()
        variant = "horseshoe" if (source, i) == ("abdomenct_1k", 1) else None
        phantom = make_phantom(1000 + n, shape=DEMO_SHAPE, missing=missing, variant=variant)
        roots[source] = root / source
        write_native(phantom, get_protocol(source), roots[source], _case_id(source, i))
        specs.append(
            {
                "source": source,
                "case_id": _case_id(source, i),
                "seed": 1000 + n,
                "shape": list(DEMO_SHAPE),
                "missing": list(missing),
                "variant": variant,
            }
        )
    # The generation spec of every phantom, so its complete truth can be regenerated (PhantomTruth).
    (root / PHANTOMS_JSON).write_text(json.dumps(specs, indent=1) + "\n")
    return roots


def demo_truth_specs(ws: Workspace) -> dict[str, Any]:
    """Scan id -> ``PhantomSpec`` of every demo scan in the catalog (from ``demo_data/phantoms.json``)."""
    from workbench.learning.simulated_expert import PhantomSpec

    path = ws.demo_data / PHANTOMS_JSON
    if not path.exists():
        raise HarmonizeError(path, "no phantom specs (build the demo with this version of `workbench demo`)")
    out: dict[str, Any] = {}
    for r in json.loads(path.read_text()):
        scan = ws.catalog.scan_by_case(r["source"], r["case_id"])
        if scan is not None:
            out[str(scan["id"])] = PhantomSpec(
                int(r["seed"]), shape=tuple(r["shape"]), missing=tuple(r["missing"]), variant=r["variant"]
            )
    return out


#: Share of the demo's queue items read twice (above the workbench's 10 %, so a 20-item round shows some).
DEMO_DOUBLE_READ_SHARE = 0.25
#: The second demo reader's skill: a wrong call on 20 % of items ...
DEMO_SECOND_READER_ERROR_RATE = 0.2
#: ... and corrections 1 voxel off the truth.
DEMO_SECOND_READER_NOISE = 1
#: Training steps of the first model and of the round's fine-tuning, and the fine-tuning's learning rate:
#: the round continues from the first model on expert labels and the corrections only
#: (:data:`DEMO_ROUND_ORIGINS`), so it learns more instead of fitting its own pseudo-labels. 250 first
#: steps keep the whole demo under 3 minutes on 2 quiet cores (450 learn more: held-out Dice 0.17, 3:50).
DEMO_STEPS = 250
DEMO_TUNE_STEPS = 100
DEMO_TUNE_LR = 5e-4
#: Patches per scan and step: one (a step costs about half of two; more steps learn more in the time).
DEMO_PATCHES = 1
#: The bases the round's fine-tuning trains on: expert labels, corrections, accepted pseudo-labels.
DEMO_ROUND_ORIGINS = ("revised", "original", "accepted")
#: The queue items whose precision the summary prints (the top-k of classes the model learnt).
DEMO_PRECISION_TOP = 10


#: glibc ``mallopt`` parameters (``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``) and the value given to both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing every large block back to the
    kernel (allocations up to 1 GiB come from the heap, which is trimmed only above 1 GiB free). The
    rounds allocate and free big tensors and arrays at every step; with glibc's defaults each one is a
    fresh ``mmap`` whose pages fault in again, which cost the demo a third of its CPU time in the kernel.
    Returns False (and changes nothing) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)
    )


def run_demo_round(
    ws: Workspace,
    review_budget: int = 20,
    steps: int = DEMO_STEPS,
    tune_steps: int = DEMO_TUNE_STEPS,
    progress: bool = True,
    double_read_share: float = DEMO_DOUBLE_READ_SHARE,
    tune_lr: float = DEMO_TUNE_LR,
) -> list[str]:
    """Train a tiny model (round 1), pseudo-label, rank the queue, then one active-learning round in which
    the simulated expert corrects ``review_budget`` queued items with the phantoms' truth (round 2); the
    double-read share of them is read again, blind, by a second simulated reader
    (:data:`DEMO_SECOND_READER_ERROR_RATE`, :data:`DEMO_SECOND_READER_NOISE`) and their disagreements
    adjudicated by a third, before training.

    Args:
        ws: a demo workspace (``build_demo``).
        review_budget: items the simulated expert reviews in round 2.
        steps: training steps of the first model (small UNet, lr 2e-3, clipped, cosine decay: the
            recipe that learns phantom organs on a CPU in minutes).
        tune_steps: fine-tuning steps of round 2 (from the first model, cosine decay, on expert labels
            and corrections only: :data:`DEMO_ROUND_ORIGINS`).
        progress: progress bars.
        double_read_share: share of queue items two readers judge (``workbench.review.set_share``).
        tune_lr: the fine-tuning's learning rate.

    Returns summary lines (with the wall time of each round): the queue's notices (classes the model never
    learnt), its top 5, the top-10 precision (:func:`workbench.learning.simulated_expert.queue_precision`),
    the held-out mean Dice before and after the round, the readers' agreement.
    """
    keep_freed_memory()
    # One pinned catalog connection for the whole run (Catalog.session): the rounds make some 1700
    # catalog calls, and opening the DuckDB file for each took some 36 s of the profiled demo.
    with ws.catalog.session():
        return _run_demo_round(ws, review_budget, steps, tune_steps, progress, double_read_share, tune_lr)


def _run_demo_round(
    ws: Workspace,
    review_budget: int,
    steps: int,
    tune_steps: int,
    progress: bool,
    double_read_share: float,
    tune_lr: float,
) -> list[str]:
    """:func:`run_demo_round` inside its catalog session."""
    import dataclasses

    from workbench.learning.report import report_line
    from workbench.learning.rounds import ROUND_QUEUE_ORDER, run_round, tiny_config
    from workbench.learning.simulated_expert import (
        PhantomTruth,
        ReadingTeam,
        SimulatedExpert,
        queue_precision,
    )
    from workbench.learning.vocabularies import embed
    from workbench.model.network import SMALL_UNET_FEATURES
    from workbench.review import agreement_line, format_queue, learnt_notice, rank, set_share

    t0 = time.perf_counter()
    set_share(ws, double_read_share)  # before the first pseudo-labels enter the queue
    vocab, _ = embed(ws, encoder="minilm")
    truth = PhantomTruth(ws, demo_truth_specs(ws))
    # The small UNet's default widths: the tiny config's narrower ones learn too little in this budget.
    tiny = tiny_config(steps=steps)
    first_config = dataclasses.replace(
        tiny,
        lr=2e-3,
        lr_schedule="cosine",
        small_features=SMALL_UNET_FEATURES,
        pipeline=dataclasses.replace(tiny.pipeline, num_samples=DEMO_PATCHES),
    )
    tune_config = dataclasses.replace(
        first_config, max_steps=tune_steps, checkpoint_every=tune_steps, lr=tune_lr
    )
    lines = []
    first = run_round(
        ws,
        vocabulary=vocab,
        config=first_config,
        from_scratch=True,
        truth=truth.scan_truth,
        progress=progress,
    )
    lines += first.lines()
    ranked = rank(ws, first.pseudolabel_run_id, order=ROUND_QUEUE_ORDER)  # the order the round reviews
    lines += ["review queue (top 5):", *learnt_notice(ws), *format_queue(ranked, 5)]
    lines.append(queue_precision(ws, truth, ranked, DEMO_PRECISION_TOP).line())
    expert = SimulatedExpert(ws, truth, budget=review_budget, image=truth.image)
    team = ReadingTeam(
        expert,
        SimulatedExpert(
            ws,
            truth,
            budget=review_budget,
            image=truth.image,
            reviewer="simulated reader B",
            error_rate=DEMO_SECOND_READER_ERROR_RATE,
            boundary_noise=DEMO_SECOND_READER_NOISE,
        ),
        SimulatedExpert(ws, truth, budget=review_budget, image=truth.image, reviewer="simulated adjudicator"),
    )
    second = run_round(
        ws,
        vocabulary=vocab,
        config=tune_config,
        review_budget=review_budget,
        reviewer=team,
        truth=truth.scan_truth,
        progress=progress,
        origins=DEMO_ROUND_ORIGINS,
    )
    lines += second.lines()
    lines.append(held_out_line(first.metrics, second.metrics))
    errors = team.error_summary()
    lines.append(agreement_line(ws))
    lines.append(
        f"readers' injected errors: {errors['injected']}, adjudication caught {errors['caught']} of the "
        f"{errors['double_read']} on double-read items"
    )
    lines.append(f"demo rounds took {time.perf_counter() - t0:.0f} s")
    lines.append(report_line(ws, second.checkpoint, [first.checkpoint]))  # report (#16)
    return lines


def held_out_line(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The summary line of the round's effect on the held-out split.

    Args:
        before / after: the metrics of the first model's round and of the fine-tuning round
            (``RoundResult.metrics``: ``mean_dice`` when evaluated).

    Returns:
        ``held-out mean Dice 0.247 before the round, 0.262 after (+0.015)``, or a line saying a round was
        not evaluated.
    """
    if not (before.get("evaluated", True) and after.get("evaluated", True)):
        return f"held-out mean Dice: not evaluated ({before.get('reason') or after.get('reason')})"
    b, a = float(before["mean_dice"]), float(after["mean_dice"])
    return f"held-out mean Dice {b:.3f} before the round, {a:.3f} after ({a - b:+.3f})"


def build_demo(ws: Workspace, cases_per_source: int = 3, progress: bool = True) -> list[str]:
    """Write the demo data into ``ws.root/demo_data`` (once) and ingest it; returns summary lines."""
    data = ws.demo_data
    if not (data / ".complete").exists():
        write_demo_data(data, cases_per_source, progress)
        (data / ".complete").write_text("ok\n")
    (ws.root / "DEMO.txt").write_text(NOTICE)
    ws.catalog.mark_demo("synthetic phantoms")
    lines = [
        "demo workspace from SYNTHETIC phantoms (no patient data), in the native conventions of: "
        + ", ".join(DEMO_SOURCES)
    ]
    for source in DEMO_SOURCES:
        lines += ingest(ws, source, data / source, progress=progress).lines()
    counts = ws.catalog.counts()
    lines.append(
        f"workspace {ws.root}: {counts['scan']} scans, {counts['label_set']} label sets; "
        "try `workbench stats` and `workbench export abdomenatlas OUT`"
    )
    return lines
