"""Active-learning rounds: review, fine-tune, evaluate, pseudo-label, re-rank; each round recorded.

One round (:func:`run_round`), in this order:

1. **review** (optional): a reviewer (``SimulatedExpert`` or any callable) works through the current
   review queue, restricted to TRAINING scans, for at most ``review_budget`` items;
2. **assemble** the training set (revised > original > pseudo, partial labels kept partial) from the
   training scans only: held-out scans (:func:`workbench.evaluation.training_scan_ids`) never train;
3. **fine-tune** from the previous round's checkpoint (``TrainConfig`` steps; a fresh model in round 1);
4. **evaluate** on the held-out split: the held-out scans are pseudo-labelled with every class
   (``all_classes``) in a separate run and scored by :func:`workbench.evaluation.evaluate` (against the
   catalog's expert labels, or given truths); skipped, and said so in the metrics, when nothing is held out;
5. **pseudo-label** the training scans again (the classes they lack) with uncertainty signals, which
   rebuilds the review queue (``workbench.review.rank`` of that run).

Every round is one row of the catalog's ``round`` table (round number, the run ids, checkpoint path and
sha256, inputs as JSON: scans and scan x class items by label origin, the review counts; metrics as JSON:
the evaluation summary). :func:`learning_curves` turns the rows into a per-class table (one row per round
and class) for plots and comparisons.

Example:
    >>> result = run_round(ws, vocabulary="minilm-V1", config=tiny_config(), review_budget=20,
    ...                    reviewer=SimulatedExpert(ws, truth, budget=20))  # doctest: +SKIP
    >>> learning_curves(ws).pivot(index="round", columns="class_name", values="dice")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harmonize.errors import HarmonizeError
from storage.catalog import utc_now
from storage.workspace import Workspace
from workbench.evaluation import DEFAULT_FRACTION, ScanTruth, evaluate, held_out_split, training_scan_ids
from workbench.export import file_sha256
from workbench.model.train import TrainCase, TrainConfig, train
from workbench.model.transforms import PipelineConfig
from workbench.training_set import TrainingEntry, assemble_training_set

#: The reviewer of a round: given the ranked queue of training scans (rows with ``scan_id``,
#: ``class_name``, ``label_set_id``) and the item budget, review items and return what was done (one
#: entry per reviewed item). An object with ``review_items(items, limit=...)`` (``SimulatedExpert``)
#: works too.
Reviewer = Callable[[pd.DataFrame, int], Sequence[Any]]

MODELS_DIR = "models"
ROUND_COLUMNS = (
    "round_number",
    "train_run_id",
    "pseudolabel_run_id",
    "evaluate_run_id",
    "checkpoint_path",
    "checkpoint_sha256",
    "previous_checkpoint_sha256",
    "reviewed",
    "inputs",
    "metrics",
    "created_at",
)


def tiny_config(steps: int = 8, seed: int = 0) -> TrainConfig:
    """A training config that runs in seconds on a laptop CPU: small UNet with narrow features, 6 mm
    isotropic spacing, 32^3 patches, two patches per scan, ``steps`` optimiser steps, lr 1e-3, clipped."""
    return TrainConfig(
        backbone="small_unet",
        pipeline=PipelineConfig(spacing_mm=(6.0, 6.0, 6.0), patch=(32, 32, 32), num_samples=2),
        lr=1e-3,
        epochs=1000,
        max_steps=steps,
        checkpoint_every=max(1, steps),
        seed=seed,
        small_features=(8, 8, 16, 16, 32, 8),
        grad_clip=1.0,
    )


@dataclass
class RoundResult:
    """What one round did.

    Args:
        round_number: 1, 2, ... in the workspace.
        train_run_id / pseudolabel_run_id / evaluate_run_id: catalog run ids (the last two None when
            skipped).
        checkpoint: the round's ``last.pt``; checkpoint_sha256 its hash.
        inputs: training-set composition and review counts (as stored).
        metrics: the evaluation summary (``{"evaluated": False, "reason": ...}`` when skipped).
        outcomes: what the reviewer returned, one entry per reviewed item.
        seconds: wall time per phase (review, train, evaluate, pseudolabel, total).
    """

    round_number: int
    train_run_id: str
    pseudolabel_run_id: str | None
    evaluate_run_id: str | None
    checkpoint: Path
    checkpoint_sha256: str
    inputs: dict[str, Any]
    metrics: dict[str, Any]
    outcomes: list[Any] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A short human summary for the CLI."""
        ins = self.inputs
        out = [
            f"round {self.round_number}: reviewed {ins['reviewed']} items; trained on {ins['scans']} scans "
            f"({ins['held_out_scans']} held out) run {self.train_run_id}; checkpoint {self.checkpoint}",
            "  training items by origin: " + ", ".join(f"{k} {v}" for k, v in sorted(ins["items"].items())),
        ]
        if self.metrics.get("evaluated", True):
            out.append(
                f"  held-out mean Dice {self.metrics.get('mean_dice')} (evaluation {self.evaluate_run_id})"
            )
        else:
            out.append(f"  not evaluated: {self.metrics.get('reason')}")
        out.append(f"  pseudo-label run {self.pseudolabel_run_id}; queue rebuilt")
        out.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return out


def rounds(ws: Workspace) -> pd.DataFrame:
    """Every recorded round, oldest first; ``inputs`` and ``metrics`` parsed into dicts."""
    df = ws.catalog.query(f"SELECT {', '.join(ROUND_COLUMNS)} FROM round ORDER BY round_number")
    for col in ("inputs", "metrics"):
        df[col] = df[col].map(json.loads)
    return df


def training_entries(
    ws: Workspace, fraction: float = DEFAULT_FRACTION, seed: int = 0
) -> tuple[list[TrainingEntry], set[str]]:
    """The round's training set (training scans only) and the held-out scan ids.

    Returns:
        ``(entries, held_out)``: entries as :func:`assemble_training_set` (sorted by scan id), none of them
        held out.
    """
    held = held_out_split(ws, fraction, seed)
    train_ids = training_scan_ids(ws, fraction, seed)
    if not train_ids:  # assemble_training_set reads an empty filter as "every scan"
        return [], held
    return assemble_training_set(ws, scan_ids=sorted(train_ids)), held


def training_inputs(entries: Sequence[TrainingEntry], held_out: set[str]) -> dict[str, Any]:
    """Composition of a training set: scans, scan x class items per origin, classes per origin."""
    items: dict[str, int] = {}
    classes: dict[str, set[str]] = {}
    for e in entries:
        for name, origin in e.origins.items():
            items[origin] = items.get(origin, 0) + 1
            classes.setdefault(origin, set()).add(name)
    return {
        "scans": len(entries),
        "held_out_scans": len(held_out),
        "items": items,
        "classes": {k: len(v) for k, v in classes.items()},
        "scans_by_source": pd.Series([e.source_id for e in entries]).value_counts().sort_index().to_dict()
        if entries
        else {},
    }


def training_queue(ws: Workspace, run_id: str | None, train_ids: set[str]) -> pd.DataFrame:
    """The ranked, undecided queue of a pseudo-label run (default: every run), training scans only."""
    from workbench.review import rank

    q = rank(ws, run_id)
    return q[q["scan_id"].isin(train_ids)].reset_index(drop=True)


def _review(reviewer: Any, items: pd.DataFrame, budget: int) -> list[Any]:
    if budget <= 0 or items.empty:
        return []
    if hasattr(reviewer, "review_items"):
        return list(reviewer.review_items(items, limit=budget))
    return list(reviewer(items, budget))


def _latest_round(ws: Workspace) -> dict[str, Any] | None:
    df = ws.catalog.query("SELECT * FROM round ORDER BY round_number DESC LIMIT 1")
    return None if df.empty else df.iloc[0].to_dict()


def _latest_pseudolabel_run(ws: Workspace) -> str | None:
    df = ws.catalog.query(
        "SELECT id FROM run WHERE kind = 'pseudolabel' AND id IN (SELECT run_id FROM uncertainty) "
        "ORDER BY started_at DESC LIMIT 1"
    )
    return None if df.empty else str(df["id"].iloc[0])


def run_round(
    ws: Workspace,
    *,
    vocabulary: str,
    config: TrainConfig,
    review_budget: int = 0,
    reviewer: Reviewer | Any | None = None,
    previous_checkpoint: str | Path | None = None,
    from_scratch: bool = False,
    queue_run_id: str | None = None,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    truth: Callable[[str], ScanTruth] | None = None,
    low_res_mm: float | None = None,
    progress: bool = False,
) -> RoundResult:
    """Run one active-learning round (see the module docstring) and record it.

    Args:
        ws: the workspace.
        vocabulary: name or hash of a stored text vocabulary.
        config: training settings; its ``max_steps`` / ``epochs`` are the steps of THIS round.
        review_budget: items the reviewer may review before training (0: no review).
        reviewer: a :data:`Reviewer` or an object with ``review_items`` (``SimulatedExpert``).
        previous_checkpoint: start from this checkpoint (default: the latest round's, if any).
        from_scratch: ignore earlier rounds and start from fresh weights.
        queue_run_id: the pseudo-label run whose queue is reviewed (default: the latest round's, else the
            newest pseudo-label run with uncertainty rows).
        fraction / seed: the held-out split, if it is not chosen yet.
        truth: scan id -> full truth for evaluation (benchmarks, demo); default the catalog's expert labels.
        low_res_mm: inference spacing for pseudo-labelling (default: the training spacing).
        progress: progress bars.

    Returns:
        The :class:`RoundResult` (also stored as a ``round`` row).

    Raises:
        ValueError: no training scan with a known class, or a negative budget.
        HarmonizeError: an unreadable previous checkpoint.
    """
    from workbench.model.checkpoint import load_checkpoint
    from workbench.modeling import load_vocabulary
    from workbench.pseudolabel import pseudolabel

    if review_budget < 0:
        raise ValueError(f"review_budget must be >= 0, got {review_budget}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    latest = _latest_round(ws)
    number = 1 if latest is None else int(latest["round_number"]) + 1
    if previous_checkpoint is None and latest is not None and not from_scratch:
        previous_checkpoint = str(latest["checkpoint_path"])
    held = held_out_split(ws, fraction, seed)
    train_ids = training_scan_ids(ws, fraction, seed)

    # 1. review the current queue (training scans only: the held-out scans' labels must stay as they are)
    outcomes: list[Any] = []
    if reviewer is not None and review_budget > 0:
        run = queue_run_id or (latest or {}).get("pseudolabel_run_id") or _latest_pseudolabel_run(ws)
        outcomes = _review(reviewer, training_queue(ws, run, train_ids), review_budget)
    seconds["review"] = time.perf_counter() - t0

    # 2. training set from the training scans
    t = time.perf_counter()
    entries, _ = training_entries(ws, fraction, seed)
    if not entries:
        raise ValueError(f"the catalog at {ws.root} has no training scan with a known class")
    inputs = training_inputs(entries, held)
    inputs["reviewed"] = len(outcomes)
    inputs["review_budget"] = int(review_budget)
    inputs["corrected"] = sum(getattr(o, "action", "") == "corrected" for o in outcomes)
    # 3. fine-tune (on the vocabulary's classes: a model of fewer classes ignores the others)
    vocab = load_vocabulary(ws, vocabulary)
    cases = [
        TrainCase(e.image_path, e.masks, e.annotated, e.scan_id).restricted_to(vocab.class_names)
        for e in entries
    ]
    init_state = None
    prev_sha = None
    if previous_checkpoint is not None:
        prev = Path(previous_checkpoint)
        if not prev.exists():
            raise HarmonizeError(prev, "previous round's checkpoint does not exist")
        init_state = load_checkpoint(prev, vocab).model.state_dict()
        prev_sha = file_sha256(prev)
    out_dir = ws.root / MODELS_DIR / f"round-{number:03d}-{uuid.uuid4().hex[:6]}"
    train_run = "train-" + uuid.uuid4().hex[:12]
    ws.catalog.start_run(
        train_run,
        "train",
        text_encoder=vocab.encoder_id,
        vocabulary_sha256=vocab.sha256,
        device="cpu",
        config={**config.to_dict(), "round": number, "cases": len(cases), "init": prev_sha},
    )
    result = train(
        cases,
        config,
        out_dir,
        vocabulary=vocab,
        resume=False,
        progress=progress,
        init_state=init_state,
        on_round_end=lambda rec: ws.catalog.add_train_record(train_run, rec),
    )
    if result.checkpoint is None or not result.checkpoint.exists():
        raise HarmonizeError(out_dir, "training wrote no checkpoint")
    ckpt = result.checkpoint
    sha = file_sha256(ckpt)
    last = result.records[-1] if result.records else {}
    ws.catalog.finish_run(
        train_run,
        metrics={"step": result.step, "epoch": result.epoch, **last},
        timings={"seconds": round(time.perf_counter() - t, 2)},
        checkpoint_sha256=sha,
    )
    seconds["train"] = time.perf_counter() - t

    # 4. evaluate on the held-out split
    t = time.perf_counter()
    spacing = low_res_mm if low_res_mm is not None else float(config.pipeline.spacing_mm[0])
    eval_run: str | None = None
    if held:
        pl = pseudolabel(
            ws,
            ckpt,
            scans=sorted(held),
            all_classes=True,
            low_res_mm=spacing,
            uncertainty=False,
            progress=progress,
        )
        truths = None if truth is None else [truth(s) for s in sorted(held)]
        try:
            ev = evaluate(ws, pl.run_id, fraction=fraction, seed=seed, truths=truths)
            eval_run = ev.run_id
            metrics: dict[str, Any] = {
                "evaluated": True,
                "eval_pseudolabel_run_id": pl.run_id,
                **ev.summary(),
            }
        except HarmonizeError as e:
            metrics = {"evaluated": False, "reason": str(e)}
    else:
        metrics = {"evaluated": False, "reason": "no scan is held out"}
    seconds["evaluate"] = time.perf_counter() - t

    # 5. pseudo-label the training scans again; its uncertainty rows are the new queue
    t = time.perf_counter()
    pl_train = pseudolabel(ws, ckpt, scans=sorted(train_ids), low_res_mm=spacing, progress=progress)
    seconds["pseudolabel"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    inputs["seconds"] = {k: round(v, 2) for k, v in seconds.items()}

    with ws.catalog.transaction() as con:
        con.execute(
            f"INSERT INTO round ({', '.join(ROUND_COLUMNS)}) VALUES ({', '.join('?' * len(ROUND_COLUMNS))})",
            [
                number,
                train_run,
                pl_train.run_id,
                eval_run,
                str(ckpt),
                sha,
                prev_sha,
                len(outcomes),
                json.dumps(inputs, default=str),
                json.dumps(metrics, default=str),
                utc_now(),
            ],
        )
    return RoundResult(
        number, train_run, pl_train.run_id, eval_run, ckpt, sha, inputs, metrics, outcomes, seconds
    )


def learning_curves(ws: Workspace) -> pd.DataFrame:
    """Per-class held-out metrics of every evaluated round: one row per round x class.

    Returns:
        DataFrame with ``round_number, class_name, n, dice, nsd, dice_present, nsd_present, reviewed``
        (``reviewed``: items reviewed up to and including that round), sorted by round and class; rounds
        that were not evaluated have no rows.
    """
    cols = ["round_number", "class_name", "n", "dice", "nsd", "dice_present", "nsd_present", "reviewed"]
    rows = []
    total = 0
    for r in rounds(ws).to_dict("records"):
        total += int(r["reviewed"])
        for name, m in (r["metrics"].get("by_class") or {}).items():
            rows.append(
                {
                    "round_number": int(r["round_number"]),
                    "class_name": name,
                    **{k: m.get(k) for k in cols[2:7]},
                    "reviewed": total,
                }
            )
    df = pd.DataFrame(rows, columns=cols)
    for c in cols[3:7]:
        df[c] = pd.to_numeric(df[c])
    return df.sort_values(["round_number", "class_name"], kind="stable").reset_index(drop=True)
