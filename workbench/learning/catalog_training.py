"""Training fed by the catalog: the workspace's training set as ``TrainCase`` objects, and a training run
recorded in the catalog.

* :func:`catalog_train_cases`: the training set (the assembly rule: revised > original > accepted pseudo
  > pseudo, rejected never; partial labels kept partial) with masks read lazily from the mask store;
* :func:`train_from_catalog`: train on it (``workbench.model.train``), the held-out split
  (:mod:`workbench.learning.split`) left out unless asked, and record the run (with how many scans were
  held out) and one ``train_record`` row per epoch in the catalog.

Example:
    >>> from storage.workspace import Workspace
    >>> ws = Workspace.open("ws")  # doctest: +SKIP
    >>> run_id, result = train_from_catalog(ws, ws.models / "r1", vocabulary="minilm-V1")  # doctest: +SKIP
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from harmonize.errors import HarmonizeError
from storage.files import file_sha256
from storage.workspace import Workspace
from workbench.learning.split import held_out_split
from workbench.learning.vocabularies import load_vocabulary
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainCase, TrainConfig, TrainResult, train
from workbench.training_set import assemble_training_set, learnt_counts


def catalog_train_cases(
    ws: Workspace,
    *,
    sources: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
    exclude_scans: Collection[str] = (),
) -> list[TrainCase]:
    """The catalog's training set as ``TrainCase`` objects (masks read lazily from the mask store).

    Args:
        ws: the workspace.
        sources: only scans of these sources (default: every source).
        origins: the bases that may contribute (the assembly rule's priority always applies).
        exclude_scans: leave these scans out (the held-out split).

    Returns:
        One case per scan with a known class, sorted by scan id; ``case_id`` is the scan id.
    """
    return [
        TrainCase(image=e.image_path, masks=e.masks, annotated=e.annotated, case_id=e.scan_id)
        for e in assemble_training_set(ws, sources=sources, origins=origins, exclude_scans=exclude_scans)
    ]


def train_from_catalog(
    ws: Workspace,
    out_dir: str | Path,
    *,
    vocabulary: str,
    config: TrainConfig | None = None,
    sources: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    run_id: str | None = None,
    include_held_out: bool = False,
) -> tuple[str, TrainResult]:
    """Train on the catalog's training set; the run and its per-epoch records go into the catalog.

    The held-out split (:func:`workbench.learning.split.held_out_split`, chosen now if it is not yet)
    stays out of training unless ``include_held_out``; the run's config records ``held_out_scans`` (left
    out) and ``include_held_out``.

    Args:
        ws: the workspace.
        out_dir: checkpoint folder (``last.pt``); training resumes from it when ``resume``.
        vocabulary: name or hash of a stored vocabulary (``workbench embed`` makes one).
        config: training settings (default: ``TrainConfig()``, the small CPU backbone).
        sources: train on these sources only.
        resume: continue from ``out_dir/last.pt``.
        progress: show a progress bar.
        run_id: the catalog run id (default: a new one; pass the old one to keep one run across resumes).
        include_held_out: train on the held-out scans too (then no evaluation on them is honest).

    Returns:
        ``(run_id, TrainResult)``.
    """
    vocab = load_vocabulary(ws, vocabulary)
    config = config or TrainConfig()
    # one catalog session for the split and the assembly: each fresh connection to a million-scan catalog
    # costs ~35 ms to open and close, and its cold buffer pool reads the same blocks again
    with ws.catalog.session():
        held = set() if include_held_out else held_out_split(ws)
        entries = assemble_training_set(ws, sources=sources, exclude_scans=held)
    cases = [
        TrainCase(image=e.image_path, masks=e.masks, annotated=e.annotated, case_id=e.scan_id).restricted_to(
            vocab.class_names
        )
        for e in entries
    ]
    if not cases:
        raise ValueError(f"the catalog at {ws.root} has no scan with a known class to train on")
    run_id = run_id or new_train_run_id()
    result, _ = train_and_record(
        ws,
        run_id,
        cases,
        config,
        out_dir,
        vocabulary=vocab,
        run_config={
            **config.to_dict(),
            "sources": list(sources or []),
            "cases": len(cases),
            "include_held_out": include_held_out,
            "held_out_scans": len(held),
        },
        resume=resume,
        progress=progress,
        trained_on=learnt_counts(entries),
    )
    return run_id, result


def new_train_run_id() -> str:
    """A fresh catalog id for a training run (``train-`` and 12 hex digits)."""
    return "train-" + uuid.uuid4().hex[:12]


def train_and_record(
    ws: Workspace,
    run_id: str,
    cases: Sequence[TrainCase],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    vocabulary: TextVocabulary,
    run_config: dict[str, Any],
    resume: bool,
    progress: bool,
    init_state: Mapping[str, Any] | None = None,
    require_checkpoint: bool = False,
    trained_on: Mapping[str, Any] | None = None,
) -> tuple[TrainResult, str | None]:
    """Train and record it as catalog run ``run_id``: the run's start (encoder, vocabulary, ``run_config``),
    one ``train_record`` row per epoch, and its end (last record, seconds, checkpoint hash). Under DDP
    only rank 0 writes to the catalog.

    Args:
        ws: the workspace.
        run_id: the catalog run id (a new one, or the old one of a resumed run).
        cases: the training scans, restricted to the vocabulary's classes.
        config: training settings.
        out_dir: checkpoint folder.
        vocabulary: the text vocabulary.
        run_config: the run's ``config`` JSON.
        resume: continue from ``out_dir/last.pt``.
        progress: show a progress bar.
        init_state: a state dict to start from (ignored when resuming).
        require_checkpoint: raise, before the run is finished, when training wrote no checkpoint.
        trained_on: the model's per-class training record (:func:`workbench.training_set.learnt_counts`),
            saved in the checkpoint.

    Returns:
        ``(result, checkpoint sha256)``; the hash is None when there is no checkpoint, and on ranks > 0.

    Raises:
        HarmonizeError: ``require_checkpoint`` and no checkpoint was written.
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    started = time.time()
    if rank == 0:
        ws.catalog.start_run(
            run_id,
            "train",
            text_encoder=vocabulary.encoder_id,
            vocabulary_sha256=vocabulary.sha256,
            device="cpu",
            config=run_config,
        )

    def record(rec: dict[str, Any]) -> None:
        ws.catalog.add_train_record(run_id, rec)

    result = train(
        cases,
        config,
        out_dir,
        vocabulary=vocabulary,
        resume=resume,
        progress=progress,
        init_state=init_state,
        on_round_end=record if rank == 0 else None,
        trained_on=trained_on,
    )
    has_checkpoint = result.checkpoint is not None and result.checkpoint.exists()
    if require_checkpoint and not has_checkpoint:
        raise HarmonizeError(out_dir, "training wrote no checkpoint")
    sha = None
    if rank == 0:
        if has_checkpoint and result.checkpoint is not None:
            sha = file_sha256(result.checkpoint)
        last = result.records[-1] if result.records else {}
        ws.catalog.finish_run(
            run_id,
            metrics={"step": result.step, "epoch": result.epoch, **last},
            timings={"seconds": round(time.time() - started, 2)},
            checkpoint_sha256=sha,
        )
    return result, sha
