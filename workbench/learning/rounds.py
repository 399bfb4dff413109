"""Active-learning rounds: review, fine-tune, evaluate, pseudo-label, re-rank; each round recorded.

One round (:func:`run_round`), in this order:

1. **review** (:func:`review_stage`, optional): a :class:`Reviewer` (``SimulatedExpert``) or a
   :data:`ReviewFunction` works through the current review queue, restricted to TRAINING scans, for at
   most ``review_budget`` items;
2. **assemble** the training set (:func:`training_entries`: the assembly rule, revised > original >
   accepted pseudo > pseudo, rejected never; partial labels kept partial) from the training scans only:
   held-out scans (:func:`workbench.learning.split.training_scan_ids`) never train;
3. **fine-tune** (:func:`train_stage`) from the previous round's checkpoint (``TrainConfig`` steps; a fresh
   model in round 1);
4. **evaluate** (:func:`evaluate_stage`) on the held-out split: the held-out scans are pseudo-labelled with
   every class (``all_classes``) in a separate run and scored by
   :func:`workbench.learning.evaluation.evaluate` (against the catalog's expert labels, or given truths);
   skipped, and said so in the metrics, when nothing is held out;
5. **pseudo-label** (:func:`pseudolabel_stage`) the training scans again (the classes they lack) with
   uncertainty signals, which rebuilds the review queue (``workbench.review.rank`` of that run).

Every round is one row of the catalog's ``round`` table (:meth:`storage.catalog.Catalog.add_round`: round
number, the run ids, checkpoint path and sha256, inputs as JSON: scans and scan x class items by label
origin, the review counts; metrics as JSON: the evaluation summary). :func:`learning_curves` turns the
rows into a per-class table (one row per round and class) for plots and comparisons.

Example:
    >>> result = run_round(ws, vocabulary="minilm-V1", config=tiny_config(), review_budget=20,
    ...                    reviewer=SimulatedExpert(ws, truth, budget=20))  # doctest: +SKIP
    >>> learning_curves(ws).pivot(index="round", columns="class_name", values="dice")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench.learning.catalog_training import new_train_run_id, train_and_record
from workbench.learning.evaluation import evaluate
from workbench.learning.fine_tuning import model_pipeline
from workbench.learning.metrics import ScanTruth
from workbench.learning.split import DEFAULT_FRACTION, held_out_split, training_scan_ids
from workbench.learning.vocabularies import load_vocabulary
from workbench.model.checkpoint import check_vocabulary
from workbench.model.network import UniversalModel
from workbench.model.registry import (
    ModelFile,
    ResolvedModel,
    inherited_trained_on,
    merge_trained_on,
    read_model_file,
)
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainCase, TrainConfig, config_for_model
from workbench.model.transforms import PipelineConfig
from workbench.pseudolabel import pseudolabel
from workbench.review import rank
from workbench.training_set import TrainingEntry, assemble_training_set, learnt_counts


@runtime_checkable
class Reviewer(Protocol):
    """The reviewer of a round as an object (``SimulatedExpert`` is one): given the ranked queue of
    training scans (rows with ``scan_id``, ``class_name``, ``label_set_id``), review items in order, at most
    ``limit``, and return what was done (one entry per reviewed item)."""

    def review_items(self, items: pd.DataFrame, limit: int | None = None) -> Sequence[Any]:
        """Review ``items`` in order, at most ``limit``; one entry per reviewed item."""
        ...


#: The reviewer of a round as a function: (ranked queue of training scans, item budget) -> one entry per
#: reviewed item.
ReviewFunction = Callable[[pd.DataFrame, int], Sequence[Any]]


#: Sliding windows per forward in a round's pseudo-label and evaluation runs: two windows per forward
#: take PyTorch's oneDNN convolutions on a CPU (a third less time per window than one at a time) and
#: little memory more on a GPU.
ROUND_SW_BATCH_SIZE = 2


def tiny_config(steps: int = 8, seed: int = 0) -> TrainConfig:
    """A training config that runs in seconds on a laptop CPU: small UNet with narrow features, 6 mm
    isotropic spacing, 32^3 patches, two patches per scan, ``steps`` optimiser steps, lr 1e-3, clipped.

    Args:
        steps: optimiser steps (also the checkpoint interval).
        seed: training seed.

    Returns:
        The :class:`TrainConfig`.
    """
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
    """Every recorded round.

    Args:
        ws: the workspace.

    Returns:
        The columns of :meth:`storage.catalog.Catalog.rounds`, oldest first; ``inputs`` and ``metrics``
        parsed into dicts.
    """
    df = ws.catalog.rounds()
    for col in ("inputs", "metrics"):
        df[col] = df[col].map(json.loads)
    return df


def training_entries(
    ws: Workspace,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
) -> tuple[list[TrainingEntry], set[str]]:
    """The round's training set (training scans only) and the held-out scan ids.

    Args:
        ws: the workspace.
        fraction / seed: the held-out split, if it is not chosen yet.
        origins: the bases that may train (``assemble_training_set``'s ``origins``; leave out ``pseudo`` to
            train on expert labels, corrections and accepted pseudo-labels only).

    Returns:
        ``(entries, held_out)``: entries as :func:`assemble_training_set` (sorted by scan id), none of them
        held out.
    """
    with ws.catalog.session():  # one connection for the split's and the assembly's reads
        held = held_out_split(ws, fraction, seed)
        train_ids = training_scan_ids(ws, fraction, seed)
        if not train_ids:  # assemble_training_set reads an empty filter as "every scan"
            return [], held
        return assemble_training_set(ws, scan_ids=sorted(train_ids), origins=origins), held


def training_inputs(entries: Sequence[TrainingEntry], held_out: set[str]) -> dict[str, Any]:
    """Composition of a training set.

    Args:
        entries: the training set.
        held_out: the held-out scan ids.

    Returns:
        ``scans``, ``held_out_scans``, ``items`` (scan x class items per origin), ``classes`` (distinct
        classes per origin) and ``scans_by_source``.
    """
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


#: The order in which a round's reviewer sees the queue (``workbench.review.rank``'s ``order``): by what a
#: review is expected to add to the training set (``expected_gain``: the item's score and its class's
#: held-out Dice), since a round is judged by the labels it leaves, not by how many errors it looked at.
ROUND_QUEUE_ORDER = "gain"


def training_queue(
    ws: Workspace, run_id: str | None, train_ids: set[str], order: str = ROUND_QUEUE_ORDER
) -> pd.DataFrame:
    """The ranked, undecided queue of a pseudo-label run, training scans only.

    Args:
        ws: the workspace.
        run_id: the pseudo-label run (None: every run).
        train_ids: the training scan ids.
        order: ``workbench.review.rank``'s order (default :data:`ROUND_QUEUE_ORDER`).

    Returns:
        The rows of ``workbench.review.rank`` whose scan is a training scan, in rank order.
    """
    q = rank(ws, run_id, order=order)
    return q[q["scan_id"].isin(train_ids)].reset_index(drop=True)


def review_stage(reviewer: Reviewer | ReviewFunction, items: pd.DataFrame, budget: int) -> list[Any]:
    """Stage 1: hand the ranked queue to the reviewer.

    Args:
        reviewer: a :class:`Reviewer` (its ``review_items(items, limit=budget)`` is called) or a
            :data:`ReviewFunction` (called with ``(items, budget)``).
        items: the ranked queue of training scans (:func:`training_queue`).
        budget: the most items to review.

    Returns:
        What the reviewer returned, one entry per reviewed item; empty without a budget or items.
    """
    if budget <= 0 or items.empty:
        return []
    if isinstance(reviewer, Reviewer):
        return list(reviewer.review_items(items, limit=budget))
    return list(reviewer(items, budget))


@dataclass(frozen=True)
class TrainedRound:
    """What the training stage of a round left.

    Args:
        run_id: the ``train`` run in the catalog.
        checkpoint: its ``last.pt``; sha256 its hash.
        previous_sha256: the hash of the checkpoint it was fine-tuned from (None: fresh weights).
        spacing_mm: the spacing it trained at (the round pseudo-labels there).
    """

    run_id: str
    checkpoint: Path
    sha256: str
    previous_sha256: str | None
    spacing_mm: float = 0.0


def train_stage(
    ws: Workspace,
    entries: Sequence[TrainingEntry],
    *,
    vocabulary: str | None,
    config: TrainConfig,
    number: int,
    previous_checkpoint: str | Path | None,
    progress: bool,
    pipeline: PipelineConfig | None = None,
) -> TrainedRound:
    """Stage 3: fine-tune on the round's training set, recorded as a ``train`` run.

    The model trains on its vocabulary's classes only (a model of fewer classes ignores the others); its
    checkpoint goes to ``<workspace>/models/round-<number>-<random>/``. From a previous model (a round's
    checkpoint, a ``workbench train`` checkpoint or a release file, :func:`previous_model`) it keeps that
    model's architecture (backbone, small features, Swin merging order, added classes) and vocabulary,
    and trains at its spacing and patch unless ``pipeline`` says otherwise; ``config`` gives the steps,
    learning rate and the rest.

    Args:
        ws: the workspace.
        entries: the training set (:func:`training_entries`).
        vocabulary: name or hash of a stored text vocabulary; with a previous model it must be that
            model's (None: the previous model's own).
        config: training settings of this round.
        number: the round number.
        previous_checkpoint: start from this model file (None: fresh weights).
        progress: a progress bar.
        pipeline: spacing, patch and sampling (default: the previous model's spacing and patch, with
            ``config.pipeline``'s other settings; ``config.pipeline`` for fresh weights).

    Returns:
        The :class:`TrainedRound`.

    Raises:
        HarmonizeError: the previous model does not exist, cannot be read, or holds another vocabulary
            than ``vocabulary``; its weights do not fit; training wrote no checkpoint.
        ValueError: fresh weights without a vocabulary.
    """
    given = load_vocabulary(ws, vocabulary) if vocabulary else None
    start = previous_model(previous_checkpoint, given)
    if start is None and vocabulary is None:
        raise ValueError("a round from fresh weights needs --vocabulary (there is no previous model)")
    vocab = start.vocabulary if start is not None else load_vocabulary(ws, str(vocabulary))
    cases = [
        TrainCase(e.image_path, e.masks, e.annotated, e.scan_id).restricted_to(vocab.class_names)
        for e in entries
    ]
    counts = {n: c for n, c in learnt_counts(entries).items() if n in vocab.class_names}
    init_state: dict[str, Any] | None = None
    trained_on: dict[str, Any] | None = counts
    if start is not None:
        # what the previous model brought from outside this workspace: its own counts are of the scans
        # this round trains on again
        inherited = inherited_trained_on(start.model_file)
        config = config_for_model(
            dataclasses.replace(config, init={**start.init_record(), "trained_on": inherited}),
            start.model,
            pipeline or model_pipeline(start.model_file, config.pipeline),
        )
        init_state = start.model.state_dict()
        trained_on = merge_trained_on(inherited, counts)
    elif pipeline is not None:
        config = dataclasses.replace(config, pipeline=pipeline)
    out_dir = ws.models / f"round-{number:03d}-{uuid.uuid4().hex[:6]}"
    run_id = new_train_run_id()
    prev_sha = start.model_file.sha256 if start is not None else None
    result, sha = train_and_record(
        ws,
        run_id,
        cases,
        config,
        out_dir,
        vocabulary=vocab,
        run_config={**config.to_dict(), "round": number, "cases": len(cases), "init": prev_sha},
        resume=False,
        progress=progress,
        init_state=init_state,
        require_checkpoint=True,
        trained_on=trained_on,
    )
    if result.checkpoint is None or sha is None:  # require_checkpoint raised already; for the types
        raise HarmonizeError(out_dir, "training wrote no checkpoint")
    return TrainedRound(run_id, result.checkpoint, sha, prev_sha, float(config.pipeline.spacing_mm[0]))


@dataclass(frozen=True)
class PreviousModel:
    """The model a round starts from: the file read, its model and vocabulary."""

    model_file: ModelFile

    @property
    def model(self) -> UniversalModel:
        return self.model_file.model

    @property
    def vocabulary(self) -> TextVocabulary:
        return self.model_file.vocabulary

    def init_record(self) -> dict[str, Any]:
        """The ``init`` a round records (:meth:`workbench.model.registry.ResolvedModel.init_record`)."""
        return ResolvedModel(self.model_file, self.model_file.path.name, False).init_record()


def previous_model(
    previous_checkpoint: str | Path | None, vocab: TextVocabulary | None
) -> PreviousModel | None:
    """The model a round starts from (any backbone; a workbench checkpoint or a release file); None for
    fresh weights.

    Args:
        previous_checkpoint: the model file.
        vocab: the vocabulary the round was given, if any: it must be the model's.

    Raises:
        HarmonizeError: no such file, not a model file, or another vocabulary (one line naming both).
    """
    if previous_checkpoint is None:
        return None
    prev = Path(previous_checkpoint)
    if not prev.exists():
        raise HarmonizeError(prev, "previous round's checkpoint does not exist")
    model_file = read_model_file(prev)
    if vocab is not None:
        check_vocabulary(prev, model_file.vocabulary, vocab)
    return PreviousModel(model_file)


def evaluate_stage(
    ws: Workspace,
    checkpoint: Path,
    held: set[str],
    *,
    low_res_mm: float,
    fraction: float,
    seed: int,
    truth: Callable[[str], ScanTruth] | None,
    progress: bool,
) -> tuple[str | None, dict[str, Any]]:
    """Stage 4: pseudo-label the held-out scans with every class (a run of its own, no uncertainty) and
    evaluate that run.

    Args:
        ws: the workspace.
        checkpoint: the round's checkpoint.
        held: the held-out scan ids.
        low_res_mm: inference spacing.
        fraction / seed: the held-out split, if it is not chosen yet.
        truth: scan id -> full truth (default: the catalog's expert labels).
        progress: progress bars.

    Returns:
        ``(evaluate run id, metrics)``: the metrics are ``{"evaluated": True, "eval_pseudolabel_run_id":
        ..., **Evaluation.summary()}``, or ``{"evaluated": False, "reason": ...}`` (and no run id) when
        nothing is held out or the evaluation failed.
    """
    if not held:
        return None, {"evaluated": False, "reason": "no scan is held out"}
    pl = pseudolabel(
        ws,
        checkpoint,
        scans=sorted(held),
        all_classes=True,
        low_res_mm=low_res_mm,
        uncertainty=False,
        sw_batch_size=ROUND_SW_BATCH_SIZE,
        progress=progress,
    )
    truths = None if truth is None else [truth(s) for s in sorted(held)]
    try:
        ev = evaluate(ws, pl.run_id, fraction=fraction, seed=seed, truths=truths)
    except HarmonizeError as e:
        return None, {"evaluated": False, "reason": str(e)}
    return ev.run_id, {"evaluated": True, "eval_pseudolabel_run_id": pl.run_id, **ev.summary()}


def pseudolabel_stage(
    ws: Workspace, checkpoint: Path, train_ids: set[str], *, low_res_mm: float, progress: bool
) -> str:
    """Stage 5: pseudo-label the training scans again (the classes they lack, with uncertainty): its
    uncertainty rows are the next review queue.

    Args:
        ws: the workspace.
        checkpoint: the round's checkpoint.
        train_ids: the training scan ids.
        low_res_mm: inference spacing.
        progress: progress bars.

    Returns:
        The pseudo-label run id.
    """
    return pseudolabel(
        ws,
        checkpoint,
        scans=sorted(train_ids),
        low_res_mm=low_res_mm,
        sw_batch_size=ROUND_SW_BATCH_SIZE,
        progress=progress,
    ).run_id


def run_round(
    ws: Workspace,
    *,
    vocabulary: str | None = None,
    config: TrainConfig,
    review_budget: int = 0,
    reviewer: Reviewer | ReviewFunction | None = None,
    previous_checkpoint: str | Path | None = None,
    from_scratch: bool = False,
    queue_run_id: str | None = None,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    truth: Callable[[str], ScanTruth] | None = None,
    low_res_mm: float | None = None,
    progress: bool = False,
    pipeline: PipelineConfig | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
) -> RoundResult:
    """Run one active-learning round (see the module docstring) and record it.

    Args:
        ws: the workspace.
        vocabulary: name or hash of a stored text vocabulary; from a previous model it must be that
            model's (None: the previous model's own; fresh weights need one).
        config: training settings; its ``max_steps`` / ``epochs`` are the steps of THIS round. From a
            previous model (any backbone, any registered model) the architecture is that model's
            (:func:`train_stage`).
        review_budget: items the reviewer may review before training (0: no review).
        reviewer: a :class:`Reviewer` (``SimulatedExpert``) or a :data:`ReviewFunction`.
        previous_checkpoint: start from this checkpoint (default: the latest round's, if any).
        from_scratch: ignore earlier rounds and start from fresh weights.
        queue_run_id: the pseudo-label run whose queue is reviewed (default: the latest round's, else the
            newest pseudo-label run with uncertainty rows).
        fraction / seed: the held-out split, if it is not chosen yet.
        truth: scan id -> full truth for evaluation (benchmarks, demo); default the catalog's expert labels.
        low_res_mm: inference spacing for pseudo-labelling (default: the training spacing).
        progress: progress bars.
        pipeline: training spacing, patch and sampling (default: the previous model's spacing and
            patch, else ``config.pipeline``).
        origins: the bases of the training set (:func:`training_entries`).

    Returns:
        The :class:`RoundResult` (also stored as a ``round`` row).

    Raises:
        ValueError: no training scan with a known class, or a negative budget.
        HarmonizeError: an unreadable previous checkpoint, one of another vocabulary, weights that do
            not fit (one line each).
    """
    if review_budget < 0:
        raise ValueError(f"review_budget must be >= 0, got {review_budget}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    latest = ws.catalog.latest_round()
    number = 1 if latest is None else int(latest["round_number"]) + 1
    if previous_checkpoint is None and latest is not None and not from_scratch:
        previous_checkpoint = str(latest["checkpoint_path"])
    held = held_out_split(ws, fraction, seed)
    train_ids = training_scan_ids(ws, fraction, seed)

    # 1. review the current queue (training scans only: the held-out scans' labels must stay as they are)
    outcomes: list[Any] = []
    if reviewer is not None and review_budget > 0:
        run = queue_run_id or (latest or {}).get("pseudolabel_run_id") or ws.catalog.latest_uncertainty_run()
        outcomes = review_stage(reviewer, training_queue(ws, run, train_ids), review_budget)
    seconds["review"] = time.perf_counter() - t0

    # 2. training set from the training scans; 3. fine-tune
    t = time.perf_counter()
    entries, _ = training_entries(ws, fraction, seed, origins)
    if not entries:
        raise ValueError(f"the catalog at {ws.root} has no training scan with a known class")
    inputs = training_inputs(entries, held)
    inputs["reviewed"] = len(outcomes)
    inputs["review_budget"] = int(review_budget)
    inputs["corrected"] = sum(getattr(o, "action", "") == "corrected" for o in outcomes)
    trained = train_stage(
        ws,
        entries,
        vocabulary=vocabulary,
        config=config,
        number=number,
        previous_checkpoint=previous_checkpoint,
        progress=progress,
        pipeline=pipeline,
    )
    seconds["train"] = time.perf_counter() - t

    # 4. evaluate on the held-out split
    t = time.perf_counter()
    spacing = low_res_mm if low_res_mm is not None else trained.spacing_mm
    eval_run, metrics = evaluate_stage(
        ws,
        trained.checkpoint,
        held,
        low_res_mm=spacing,
        fraction=fraction,
        seed=seed,
        truth=truth,
        progress=progress,
    )
    seconds["evaluate"] = time.perf_counter() - t

    # 5. pseudo-label the training scans again; its uncertainty rows are the new queue
    t = time.perf_counter()
    pl_run = pseudolabel_stage(ws, trained.checkpoint, train_ids, low_res_mm=spacing, progress=progress)
    seconds["pseudolabel"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    inputs["seconds"] = {k: round(v, 2) for k, v in seconds.items()}

    ws.catalog.add_round(
        round_number=number,
        train_run_id=trained.run_id,
        pseudolabel_run_id=pl_run,
        evaluate_run_id=eval_run,
        checkpoint_path=str(trained.checkpoint),
        checkpoint_sha256=trained.sha256,
        previous_checkpoint_sha256=trained.previous_sha256,
        reviewed=len(outcomes),
        inputs=inputs,
        metrics=metrics,
    )
    return RoundResult(
        number,
        trained.run_id,
        pl_run,
        eval_run,
        trained.checkpoint,
        trained.sha256,
        inputs,
        metrics,
        outcomes,
        seconds,
    )


def learning_curves(ws: Workspace) -> pd.DataFrame:
    """Per-class held-out metrics of every evaluated round: one row per round x class.

    Args:
        ws: the workspace.

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
