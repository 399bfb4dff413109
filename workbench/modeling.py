"""The Universal Model wired to the workspace: vocabularies in the catalog, training from the catalog.

* ``embed``: build a text vocabulary of the 32 classes with an encoder and store it (with its provenance)
  in the catalog's ``text_vocabulary`` table; ``import_release_vocabulary`` stores the embedding file
  released with the original model as a named vocabulary.
* ``train_from_catalog``: assemble the training set (revised > original > pseudo, partial labels kept
  partial), train, and record the run and one ``train_record`` row per epoch in the catalog.

Example:
    >>> from storage.workspace import Workspace
    >>> ws = Workspace.open("ws")  # doctest: +SKIP
    >>> name, vocab = embed(ws, encoder="minilm")  # doctest: +SKIP
    >>> run_id, result = train_from_catalog(ws, "ws/models/r1", vocabulary=name)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.export import file_sha256
from workbench.model.text import (
    DEFAULT_TEMPLATE,
    ClipTextEncoder,
    MiniLMOfflineEncoder,
    TextEncoder,
    TextVocabulary,
    build_vocabulary,
    import_original_vocabulary,
)
from workbench.model.train import TrainCase, TrainConfig, TrainResult, train
from workbench.training_set import assemble_training_set

ENCODERS = ("minilm", "clip")
RELEASE_VOCABULARY = "universal-model-release"


def store_vocabulary(ws: Workspace, vocab: TextVocabulary, name: str, note: str = "") -> None:
    """Store ``vocab`` in the catalog under ``name`` (re-pointing the name if it existed)."""
    ws.catalog.add_vocabulary(
        name=name,
        sha256=vocab.sha256,
        encoder=vocab.encoder_id,
        weights=vocab.weights_id,
        template=vocab.template_id,
        class_names=vocab.class_names,
        prompts=vocab.prompts,
        embeddings=vocab.to_bytes(),
        dim=int(vocab.embeddings.shape[1]),
        note=note,
    )


def load_vocabulary(ws: Workspace, name_or_sha: str) -> TextVocabulary:
    """A stored vocabulary; ``KeyError`` names the stored ones when it is not there."""
    row = ws.catalog.vocabulary(name_or_sha)
    return TextVocabulary.from_bytes(bytes(row["embeddings"]))


def make_encoder(encoder: str, clip_weights: str | None = None) -> TextEncoder:
    """``minilm`` (offline stand-in, ships its weights) or ``clip`` (open_clip ViT-B-32; ``clip_weights``
    is a local checkpoint file or an open_clip pretrained tag, default ``openai``)."""
    if encoder == "minilm":
        return MiniLMOfflineEncoder()
    if encoder == "clip":
        if clip_weights and Path(clip_weights).exists():
            return ClipTextEncoder(checkpoint_path=clip_weights)
        return ClipTextEncoder(pretrained=clip_weights or "openai")
    raise KeyError(f"unknown text encoder {encoder!r}; choose one of {ENCODERS}")


def embed(
    ws: Workspace,
    *,
    encoder: str = "minilm",
    template: str = DEFAULT_TEMPLATE,
    name: str | None = None,
    clip_weights: str | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[str, TextVocabulary]:
    """Embed class names and store the vocabulary; returns ``(name, vocabulary)``.

    Args:
        ws: the workspace.
        encoder: 'minilm' (offline stand-in, not CLIP) or 'clip' (open_clip ViT-B-32).
        template: prompt template 'V1'..'V4'.
        name: vocabulary name (default ``<encoder>-<template>``, e.g. ``minilm-V1``).
        clip_weights: a local open_clip checkpoint for 'clip'.
        classes: universal class names in channel order (default all 32, in taxonomy order); a model
            trained with a smaller vocabulary learns and predicts only those classes.

    Raises:
        KeyError: an unknown class name.
    """
    if classes is not None:
        known = set(class_names())
        unknown = [c for c in classes if c not in known]
        if unknown or not classes:
            raise KeyError(f"unknown classes {unknown}" if unknown else "no class to embed")
    vocab = build_vocabulary(make_encoder(encoder, clip_weights), classes, template=template)
    name = name or f"{encoder}-{template}"
    note = "offline stand-in encoder, not CLIP" if encoder == "minilm" else ""
    store_vocabulary(ws, vocab, name, note)
    return name, vocab


def import_release_vocabulary(
    ws: Workspace, path: str | Path, name: str = RELEASE_VOCABULARY
) -> tuple[str, TextVocabulary]:
    """Import the original release's ``txt_encoding.pth`` (fp16 [32, 512]) as a named vocabulary."""
    vocab = import_original_vocabulary(path)
    store_vocabulary(ws, vocab, name, f"imported from {Path(path).name} (original Universal Model release)")
    return name, vocab


def catalog_train_cases(
    ws: Workspace,
    *,
    sources: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
) -> list[TrainCase]:
    """The catalog's training set as ``TrainCase`` objects (masks read lazily from the mask store)."""
    return [
        TrainCase(image=e.image_path, masks=e.masks, annotated=e.annotated, case_id=e.scan_id)
        for e in assemble_training_set(ws, sources=sources, origins=origins)
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
) -> tuple[str, TrainResult]:
    """Train on the catalog's training set; the run and its per-epoch records go into the catalog.

    Args:
        ws: the workspace.
        out_dir: checkpoint folder (``last.pt``); training resumes from it when ``resume``.
        vocabulary: name or hash of a stored vocabulary (``workbench embed`` makes one).
        config: training settings (default: ``TrainConfig()``, the small CPU backbone).
        sources: train on these sources only.
        resume: continue from ``out_dir/last.pt``.
        progress: show a progress bar.
        run_id: the catalog run id (default: a new one; pass the old one to keep one run across resumes).

    Returns:
        ``(run_id, TrainResult)``.
    """
    import torch.distributed as dist

    vocab = load_vocabulary(ws, vocabulary)
    config = config or TrainConfig()
    cases = [c.restricted_to(vocab.class_names) for c in catalog_train_cases(ws, sources=sources)]
    if not cases:
        raise ValueError(f"the catalog at {ws.root} has no scan with a known class to train on")
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    run_id = run_id or "train-" + uuid.uuid4().hex[:12]
    started = time.time()
    if rank == 0:
        ws.catalog.start_run(
            run_id,
            "train",
            text_encoder=vocab.encoder_id,
            vocabulary_sha256=vocab.sha256,
            device="cpu",
            config={**config.to_dict(), "sources": list(sources or []), "cases": len(cases)},
        )

    def record(rec: dict[str, Any]) -> None:
        ws.catalog.add_train_record(run_id, rec)

    result = train(
        cases,
        config,
        out_dir,
        vocabulary=vocab,
        resume=resume,
        progress=progress,
        on_round_end=record if rank == 0 else None,
    )
    if rank == 0:
        sha = None
        if result.checkpoint is not None and result.checkpoint.exists():
            sha = file_sha256(result.checkpoint)
        last = result.records[-1] if result.records else {}
        ws.catalog.finish_run(
            run_id,
            metrics={"step": result.step, "epoch": result.epoch, **last},
            timings={"seconds": round(time.time() - started, 2)},
            checkpoint_sha256=sha,
        )
    return run_id, result
