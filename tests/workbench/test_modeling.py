"""The model wired to the catalog: stored vocabularies, training from the catalog with run records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainConfig
from workbench.model.transforms import PipelineConfig
from workbench.modeling import (
    catalog_train_cases,
    embed,
    import_release_vocabulary,
    load_vocabulary,
    store_vocabulary,
    train_from_catalog,
)


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    for source, seed in (("kits23", 41), ("lits", 42)):
        write_native(
            make_phantom(seed, shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0)),
            get_protocol(source),
            tmp_path / source,
            "case01",
        )
    ws = Workspace.open(tmp_path / "ws")
    for source in ("kits23", "lits"):
        ingest(ws, source, tmp_path / source, progress=False)
    return ws


def _random_vocab() -> TextVocabulary:
    from harmonize.taxonomy import class_names

    names = tuple(class_names())
    emb = np.random.default_rng(0).standard_normal((len(names), 512))
    return TextVocabulary(names, names, "V1", "random-test-embeddings", "none", emb)


def test_vocabulary_round_trips_through_the_catalog(ws: Workspace) -> None:
    vocab = _random_vocab()
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


def test_train_cases_keep_partial_labels(ws: Workspace) -> None:
    cases = {c.case_id: c for c in catalog_train_cases(ws)}
    assert set(cases) == {"kits23:case01", "lits:case01"}
    assert tuple(cases["lits:case01"].annotated) == ("liver", "liver_tumor")
    assert set(cases["kits23:case01"].annotated) == {
        "kidney_left",
        "kidney_right",
        "kidney_tumor",
        "kidney_cyst",
    }
    assert cases["lits:case01"].masks["liver"].any()


def test_training_is_recorded_in_the_catalog(ws: Workspace, tmp_path: Path) -> None:
    store_vocabulary(ws, _random_vocab(), "test-vocab")
    config = TrainConfig(
        epochs=2,
        checkpoint_every=10,
        small_features=(4, 4, 8, 8, 16, 4),
        pipeline=PipelineConfig(spacing_mm=(6.0, 6.0, 6.0), patch=(32, 32, 32), num_samples=1),
    )
    run_id, result = train_from_catalog(
        ws, tmp_path / "model", vocabulary="test-vocab", config=config, progress=False
    )
    # 2 cases x 2 epochs at one case per step
    assert result.step == 4 and result.checkpoint is not None and result.checkpoint.exists()
    run = ws.catalog.query("SELECT * FROM run WHERE id = ?", [run_id]).iloc[0]
    assert run["kind"] == "train" and run["finished_at"] is not None and len(run["checkpoint_sha256"]) == 64
    records = ws.catalog.query(
        "SELECT epoch, step, loss FROM train_record WHERE run_id = ? ORDER BY epoch", [run_id]
    )
    assert records["epoch"].tolist() == [0, 1] and np.isfinite(records["loss"]).all()
