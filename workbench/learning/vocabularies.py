"""Text vocabularies in the catalog: class-name embeddings with their provenance.

* :func:`embed` builds a text vocabulary of the universal classes with an encoder and stores it (with its
  provenance) in the catalog's ``text_vocabulary`` table; :func:`import_release_vocabulary` stores the
  embedding file released with the original model as a named vocabulary;
* :func:`store_vocabulary` / :func:`load_vocabulary` write and read one by name or hash.

Example:
    >>> from storage.workspace import Workspace
    >>> ws = Workspace.open("ws")  # doctest: +SKIP
    >>> name, vocab = embed(ws, encoder="minilm")  # doctest: +SKIP
    >>> load_vocabulary(ws, name).class_names[:2]  # doctest: +SKIP
    ('spleen', 'kidney_right')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.model.registry import store_vocabulary
from workbench.model.text import (
    DEFAULT_TEMPLATE,
    ClipTextEncoder,
    MiniLMOfflineEncoder,
    TextEncoder,
    TextVocabulary,
    build_vocabulary,
    import_original_vocabulary,
)

ENCODERS = ("minilm", "clip")
RELEASE_VOCABULARY = "universal-model-release"


def load_vocabulary(ws: Workspace, name_or_sha: str) -> TextVocabulary:
    """A stored vocabulary.

    Args:
        ws: the workspace.
        name_or_sha: its name or its sha256.

    Returns:
        The :class:`TextVocabulary`.

    Raises:
        KeyError: no such vocabulary (the message names the stored ones).
    """
    row = ws.catalog.vocabulary(name_or_sha)
    return TextVocabulary.from_bytes(bytes(row["embeddings"]))


def make_encoder(encoder: str, clip_weights: str | None = None) -> TextEncoder:
    """A text encoder by name.

    Args:
        encoder: ``minilm`` (offline stand-in, ships its weights) or ``clip`` (open_clip ViT-B-32).
        clip_weights: for ``clip``, a local checkpoint file or an open_clip pretrained tag (default
            ``openai``).

    Returns:
        The encoder.

    Raises:
        KeyError: an unknown encoder name.
    """
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
    """Embed class names and store the vocabulary.

    Args:
        ws: the workspace.
        encoder: 'minilm' (offline stand-in, not CLIP) or 'clip' (open_clip ViT-B-32).
        template: prompt template 'V1'..'V4'.
        name: vocabulary name (default ``<encoder>-<template>``, e.g. ``minilm-V1``).
        clip_weights: a local open_clip checkpoint for 'clip'.
        classes: universal class names in channel order (default all 32, in taxonomy order); a model
            trained with a smaller vocabulary learns and predicts only those classes.

    Returns:
        ``(name, vocabulary)``.

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
    """Import the original release's ``txt_encoding.pth`` (fp16 [32, 512]) as a named vocabulary.

    Args:
        ws: the workspace.
        path: the release's embedding file.
        name: the name to store it under.

    Returns:
        ``(name, vocabulary)``.
    """
    vocab = import_original_vocabulary(path)
    store_vocabulary(ws, vocab, name, f"imported from {Path(path).name} (original Universal Model release)")
    return name, vocab
