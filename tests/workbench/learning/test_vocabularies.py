"""Text vocabularies in the catalog: stored and loaded, the offline encoder labelled, the release imported.
(The ``ws`` and ``random_vocab`` fixtures are in this folder's conftest.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.workspace import Workspace
from workbench.learning.vocabularies import (
    embed,
    import_release_vocabulary,
    load_vocabulary,
    store_vocabulary,
)
from workbench.model.text import TextVocabulary


def test_vocabulary_round_trips_through_the_catalog(ws: Workspace, random_vocab: TextVocabulary) -> None:
    vocab = random_vocab
    store_vocabulary(ws, vocab, "test-vocab")
    back = load_vocabulary(ws, "test-vocab")
    assert back.sha256 == vocab.sha256 and back.class_names == vocab.class_names
    np.testing.assert_array_equal(back.embeddings, vocab.embeddings)
    row = ws.catalog.vocabulary(vocab.sha256)
    assert row["encoder"] == "random-test-embeddings" and row["template"] == "V1"


def test_offline_encoder_vocabulary_is_labelled(ws: Workspace) -> None:
    name, vocab = embed(ws, encoder="minilm")
    assert name == "minilm-V1"
    row = ws.catalog.vocabulary(name)
    assert "not CLIP" in row["encoder"] and row["note"] == "offline stand-in encoder, not CLIP"
    assert vocab.embeddings.shape == (32, 512)


def test_release_vocabulary_is_imported(ws: Workspace, shared_fixtures: Path) -> None:
    name, vocab = import_release_vocabulary(ws, shared_fixtures / "universal_model/txt_encoding.pth")
    assert name == "universal-model-release"
    assert load_vocabulary(ws, name).sha256 == vocab.sha256
    assert "Arota" in " ".join(vocab.prompts)  # the release's spelling is kept with its embeddings
