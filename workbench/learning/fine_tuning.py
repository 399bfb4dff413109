"""Fine-tuning from a registered model (the paper's transfer), and classes added to it (its incremental
learning): ``workbench train --init MODEL [--add-class NAME --prompt TEXT]``.

:func:`fine_tune` starts from a model's weights (a registered name, a release file or a workbench
checkpoint; :func:`workbench.model.registry.resolve_model`) and keeps what it came with: the backbone and
its Swin merging order, the controller, the text projection and the heads, and the text embeddings
(its vocabulary); it trains on the chosen sources and classes of the workspace's training set (the
assembly rule, the held-out split left out), records the run with ``init`` (the model's name, sha256,
kind, backbone and what it had learnt), and registers the checkpoint (kind ``workbench``) so
``pseudolabel NAME``, ``round --previous NAME`` and the app name it. Its ``trained_on`` is the init
model's plus this run's counts (:func:`workbench.model.registry.merge_trained_on`).

A new class (:class:`NewClass`) gets the text embedding of its prompt from the model's own text encoder
(a stored vocabulary of that encoder holding the class first, then the encoder itself: the offline
MiniLM stand-in, or open_clip CLIP where its weights can be had) and a head of its own
(``UniversalModel.add_class``); the catalog registers the class as data (``Catalog.add_class``), so its
labels and pseudo-labels are stored, queued and exported like the 32 universal classes'.

Example:
    >>> result = fine_tune(ws, "paper-unet", config=TrainConfig(max_steps=200),
    ...                    new_classes=[NewClass("renal_vein", "Renal Vein", parent="kidney_left")])
    ...                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import define_class
from storage.files import safe_name
from storage.workspace import Workspace
from workbench.learning.catalog_training import new_train_run_id, train_and_record
from workbench.learning.split import held_out_split
from workbench.learning.vocabularies import load_vocabulary
from workbench.model.network import UniversalModel
from workbench.model.registry import (
    ModelFile,
    ResolvedModel,
    import_model,
    merge_trained_on,
    resolve_model,
)
from workbench.model.text import (
    ORIGINAL_ENCODER_ID,
    ClipTextEncoder,
    MiniLMOfflineEncoder,
    TextEncoder,
    TextEncoderUnavailable,
    TextVocabulary,
    render_prompts,
)
from workbench.model.train import TrainCase, TrainConfig, config_for_model
from workbench.model.transforms import PipelineConfig
from workbench.training_set import TrainingEntry, assemble_training_set, learnt_counts


@dataclass(frozen=True)
class NewClass:
    """A class to add to a model (and to the workspace's taxonomy).

    Args:
        name: snake_case machine name (e.g. ``renal_vein``).
        prompt: the name its text prompt uses (default: the name with spaces, words capitalised), put
            into the model's prompt template ('A computerized tomography of a Renal Vein.').
        kind: ``organ``, ``vessel``, ``tumor`` or ``lesion``.
        parent: the class it lies inside, if any.
    """

    name: str
    prompt: str | None = None
    kind: str = "organ"
    parent: str | None = None

    @property
    def prompt_name(self) -> str:
        return self.prompt or self.name.replace("_", " ").title()

    @property
    def parents(self) -> tuple[str, ...]:
        return (self.parent,) if self.parent else ()


def model_pipeline(
    model_file: ModelFile,
    base: PipelineConfig,
    spacing_mm: float | None = None,
    patch: int | None = None,
) -> PipelineConfig:
    """The pipeline a run from this model trains with: the model's own spacing and patch unless given,
    the other settings (patches per scan, sampling, augmentation) from ``base``.

    Args:
        model_file: the init model.
        base: the run's pipeline settings.
        spacing_mm: isotropic spacing in mm, if chosen.
        patch: cubic patch side in voxels, if chosen.

    Returns:
        The :class:`PipelineConfig`.
    """
    spacing = (float(spacing_mm),) * 3 if spacing_mm else tuple(float(s) for s in model_file.spacing_mm)
    sides = (int(patch),) * 3 if patch else tuple(int(p) for p in model_file.patch)
    return dataclasses.replace(base, spacing_mm=spacing, patch=sides)  # type: ignore[arg-type]


# -- the text embedding of a new class --------------------------------------------------------------

_MINILM_ID = re.compile(r"minilm-l6-v2\+proj512\(seed=(\d+)\)")
_OPEN_CLIP_ID = re.compile(r"open_clip:([^:]+):(.+)")


def _minilm(vocab: TextVocabulary, clip_weights: str | None) -> TextEncoder | None:
    found = _MINILM_ID.match(vocab.encoder_id)
    return MiniLMOfflineEncoder(seed=int(found.group(1))) if found else None


def _open_clip(vocab: TextVocabulary, clip_weights: str | None) -> TextEncoder | None:
    found = _OPEN_CLIP_ID.fullmatch(vocab.encoder_id)
    if not found:
        return None
    model_name, weights = found.groups()
    if weights.startswith("file:"):
        if clip_weights is None:
            raise TextEncoderUnavailable(
                f"its CLIP weights were a local file ({weights}); pass --clip-weights"
            )
        return ClipTextEncoder(model_name, checkpoint_path=clip_weights)
    return ClipTextEncoder(model_name, pretrained=weights)


def _original_clip(vocab: TextVocabulary, clip_weights: str | None) -> TextEncoder | None:
    if vocab.encoder_id != ORIGINAL_ENCODER_ID:
        return None
    # The release embedded its prompts with OpenAI's CLIP ViT-B/32 (open_clip's 'openai' weights).
    if clip_weights is not None:
        return ClipTextEncoder("ViT-B-32", checkpoint_path=clip_weights)
    return ClipTextEncoder("ViT-B-32", pretrained="openai")


#: The encoders a vocabulary's ``encoder_id`` can be re-created from, tried in order; each returns None
#: for an id that is not its own.
ENCODER_RULES: tuple[Callable[[TextVocabulary, str | None], TextEncoder | None], ...] = (
    _minilm,
    _open_clip,
    _original_clip,
)


def class_prompt(vocab: TextVocabulary, prompt_name: str) -> str:
    """The prompt of a new class in the vocabulary's own style (the release: V1 without its period)."""
    if vocab.encoder_id == ORIGINAL_ENCODER_ID:
        return f"A computerized tomography of a {prompt_name}"
    return render_prompts([prompt_name], vocab.template_id)[0]


def _stored_embedding(ws: Workspace, vocab: TextVocabulary, name: str, prompt: str) -> np.ndarray | None:
    """The class's row of a stored vocabulary of the same encoder, weights and template, if any."""
    rows = ws.catalog.vocabularies_with_class(name)
    for row in rows.to_dict("records"):
        same = (row["encoder"], row["weights"], row["template"])
        if same != (vocab.encoder_id, vocab.weights_id, vocab.template_id):
            continue
        stored = load_vocabulary(ws, str(row["sha256"]))
        i = stored.class_names.index(name)
        if stored.prompts[i] == prompt:
            return np.asarray(stored.embeddings[i])
    return None


def class_embedding(
    ws: Workspace, model_name: str, vocab: TextVocabulary, new: NewClass, clip_weights: str | None = None
) -> tuple[str, np.ndarray]:
    """The prompt and text embedding [512] of a new class, from the model's own text encoder.

    Args:
        ws: the workspace (its stored vocabularies are looked at first).
        model_name: the model, for messages.
        vocab: the model's vocabulary (encoder, weights, template).
        new: the class.
        clip_weights: a local CLIP weights file, for models embedded with CLIP.

    Returns:
        ``(prompt, embedding)``.

    Raises:
        HarmonizeError: the encoder is not one this workbench runs, or cannot be loaded here (one line
            saying how to provide it).
    """
    prompt = class_prompt(vocab, new.prompt_name)
    stored = _stored_embedding(ws, vocab, new.name, prompt)
    if stored is not None:
        return prompt, stored
    try:
        encoder = next((e for rule in ENCODER_RULES if (e := rule(vocab, clip_weights)) is not None), None)
    except TextEncoderUnavailable as exc:
        raise HarmonizeError(
            model_name,
            f"cannot embed the new class {new.name!r}: its text encoder ({vocab.encoder_id}) is not "
            f"available here: {str(exc).splitlines()[0][:400]}",
        ) from exc
    if encoder is None:
        raise HarmonizeError(
            model_name,
            f"cannot embed the new class {new.name!r}: its text encoder {vocab.encoder_id!r} is not one this "
            f"workbench runs; store a vocabulary of that encoder holding {new.name!r} with the prompt "
            f"{prompt!r} first",
        )
    if vocab.encoder_id != ORIGINAL_ENCODER_ID and (encoder.encoder_id, encoder.weights_id) != (
        vocab.encoder_id,
        vocab.weights_id,
    ):
        raise HarmonizeError(
            model_name,
            f"cannot embed the new class {new.name!r}: the encoder here is {encoder.encoder_id} "
            f"({encoder.weights_id}), the model's {vocab.encoder_id} ({vocab.weights_id})",
        )
    return prompt, np.asarray(encoder.encode([prompt])[0], dtype=np.float32)


def add_classes(
    ws: Workspace,
    resolved: ResolvedModel,
    new_classes: Sequence[NewClass],
    clip_weights: str | None = None,
) -> tuple[UniversalModel, TextVocabulary]:
    """Give the model a head and a text embedding for each new class, and register the classes.

    Every class is checked and embedded before anything is registered, so a failure leaves the catalog
    as it was.

    Args:
        ws: the workspace.
        resolved: the init model (its model is extended in place).
        new_classes: the classes to add.
        clip_weights: a local CLIP weights file, for models embedded with CLIP.

    Returns:
        ``(model, vocabulary)`` with the new classes last.

    Raises:
        HarmonizeError: a class the model has, a bad definition, an encoder that cannot be had.
    """
    model, vocab = resolved.model_file.model, resolved.model_file.vocabulary
    embedded = []
    for k, new in enumerate(new_classes):
        if new.name in vocab.class_names or any(n.name == new.name for n in new_classes[:k]):
            raise HarmonizeError(resolved.name, f"has a head for {new.name!r} already; nothing to add")
        try:
            define_class(new.name, new.prompt_name, new.kind, new.parents, index=10_000)
        except ValueError as exc:
            raise HarmonizeError(resolved.name, f"--add-class: {exc}") from exc
        embedded.append((new, *class_embedding(ws, resolved.name, vocab, new, clip_weights)))
    for new, prompt, emb in embedded:
        ws.catalog.add_class(new.name, new.prompt_name, new.kind, new.parents)
        model.add_class(emb)
        vocab = vocab.with_class(new.name, prompt, emb)
    return model, vocab


# -- fine-tuning -------------------------------------------------------------------------------------


@dataclass
class FineTuned:
    """What :func:`fine_tune` did.

    Args:
        run_id: the catalog's ``train`` run.
        checkpoint: its ``last.pt``; sha256 its hash.
        model_name: the name it is registered under.
        init: the init record (name, sha256, kind, backbone, path, trained_on).
        trained_on: the new model's per-class record.
        added: the classes added.
        steps: optimiser steps done in total.
        cases: training scans.
        registered: whether the registry got a new row now (False: the same file was registered).
        unlearnt: added classes no training scan annotated (their heads are as created).
    """

    run_id: str
    checkpoint: Path
    sha256: str
    model_name: str
    init: dict[str, Any]
    trained_on: dict[str, Any] | None
    added: list[str] = field(default_factory=list)
    steps: int = 0
    cases: int = 0
    registered: bool = True
    unlearnt: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A short summary for the CLI."""
        init = self.init
        out = [
            f"run {self.run_id}: {self.steps} steps on {self.cases} scans, from {init['kind']} model "
            f"{init['name']!r} ({init['backbone']}, sha256 {str(init['sha256'])[:12]}); checkpoint "
            f"{self.checkpoint}",
            f"registered as model {self.model_name!r}"
            + ("" if self.registered else " (already registered, nothing changed)"),
        ]
        if self.added:
            out.append("added classes: " + ", ".join(self.added))
        for name in self.unlearnt:
            out.append(f"  {name}: no training scan annotates it yet, so its head is untrained")
        return out


def _cases(entries: Sequence[TrainingEntry], classes: Sequence[str]) -> list[TrainCase]:
    """The training cases restricted to ``classes``; scans that annotate none of them left out."""
    cases = [TrainCase(e.image_path, e.masks, e.annotated, e.scan_id).restricted_to(classes) for e in entries]
    return [c for c in cases if c.annotated]


def _train_classes(
    resolved: ResolvedModel, vocab: TextVocabulary, classes: Sequence[str] | None
) -> tuple[str, ...]:
    """The classes this run trains: ``classes`` (each must have a head), else every class of the model."""
    if not classes:
        return vocab.class_names
    missing = [c for c in classes if c not in vocab.class_names]
    if missing:
        raise HarmonizeError(
            resolved.name,
            f"has no head for {missing}: its classes are {', '.join(vocab.class_names[:6])}"
            f"{', ...' if vocab.n_classes > 6 else ''}; add one with --add-class",
        )
    return tuple(classes)


def fine_tune(
    ws: Workspace,
    init: str | Path,
    *,
    config: TrainConfig,
    spacing_mm: float | None = None,
    patch: int | None = None,
    out_dir: str | Path | None = None,
    sources: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    new_classes: Sequence[NewClass] = (),
    name: str | None = None,
    include_held_out: bool = False,
    resume: bool = True,
    progress: bool = True,
    backbone: str | None = None,
    clip_weights: str | None = None,
) -> FineTuned:
    """Fine-tune a registered model (or a model file) on the workspace, and register the result.

    Args:
        ws: the workspace.
        init: a registered model's name or sha256, a release file or a workbench checkpoint.
        config: the run's settings (steps, learning rate, ``freeze``, ...); backbone, small features,
            Swin merging order and added classes come from the init model.
        spacing_mm / patch: isotropic training spacing (mm) and cubic patch side (voxels); default the
            model's own (a release: 1.5 mm, 96), with ``config.pipeline``'s other settings
            (:func:`model_pipeline`).
        out_dir: the checkpoint folder (default ``<workspace>/models/ft-<init>[-<added>]``, so a re-run
            resumes).
        sources: train on these sources only.
        classes: train these classes only (default every class of the model, added ones included).
        new_classes: classes to add first (:func:`add_classes`).
        name: the registered name (default ``<init>-ft-<sha256[:8]>``).
        include_held_out: train on the held-out scans too.
        resume: continue from ``out_dir/last.pt``.
        progress: a progress bar.
        backbone: for a release file whose keys are ambiguous.
        clip_weights: a local CLIP weights file, to embed a new class of a CLIP model offline.

    Returns:
        :class:`FineTuned`.

    Raises:
        HarmonizeError: an init that is no model, classes it has no head for, a new class that cannot
            be embedded, weights that do not fit (one line each).
        ValueError: no training scan annotates the chosen classes.
    """
    resolved = resolve_model(ws, init, backbone=backbone)
    mf = resolved.model_file
    added = [n.name for n in new_classes]
    model, vocab = (
        add_classes(ws, resolved, new_classes, clip_weights) if new_classes else (mf.model, mf.vocabulary)
    )
    train_classes = _train_classes(resolved, vocab, classes)
    held = set() if include_held_out else held_out_split(ws)
    entries = assemble_training_set(ws, sources=sources, exclude_scans=held)
    cases = _cases(entries, train_classes)
    if not cases:
        raise ValueError(
            f"the catalog at {ws.root} has no training scan that annotates any of {list(train_classes)}"
        )
    counts = {n: c for n, c in learnt_counts(entries).items() if n in train_classes}
    trained_on = merge_trained_on(mf.trained_on, counts)
    record = resolved.init_record()
    run_config = config_for_model(
        dataclasses.replace(config, init=record),
        model,
        model_pipeline(mf, config.pipeline, spacing_mm, patch),
    )
    suffix = ("-" + "-".join(added)) if added else ""
    out = Path(out_dir) if out_dir else ws.models / safe_name(f"ft-{resolved.name}{suffix}")
    run_id = new_train_run_id()
    result, sha = train_and_record(
        ws,
        run_id,
        cases,
        run_config,
        out,
        vocabulary=vocab,
        run_config={
            **run_config.to_dict(),
            "sources": list(sources or []),
            "classes": list(train_classes),
            "added_classes": added,
            "cases": len(cases),
            "include_held_out": include_held_out,
            "held_out_scans": len(held),
        },
        resume=resume,
        progress=progress,
        init_state=model.state_dict(),
        require_checkpoint=True,
        trained_on=trained_on,
    )
    if result.checkpoint is None or sha is None:  # require_checkpoint raised already; for the types
        raise HarmonizeError(out, "training wrote no checkpoint")
    registered = import_model(ws, result.checkpoint, name=name or safe_name(f"{resolved.name}-ft-{sha[:8]}"))
    return FineTuned(
        run_id=run_id,
        checkpoint=result.checkpoint,
        sha256=sha,
        model_name=str(registered.row["name"]),
        init=record,
        trained_on=trained_on,
        added=added,
        steps=result.step,
        cases=len(cases),
        registered=registered.registered,
        unlearnt=[n for n in added if not any(n in c.annotated for c in cases)],
    )
