"""Training fed by the catalog: partial labels kept partial, the run and its records in the catalog.
(The ``ws`` and ``random_vocab`` fixtures are in this folder's conftest.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.workspace import Workspace
from workbench.learning import catalog_training
from workbench.learning.catalog_training import catalog_train_cases, train_from_catalog
from workbench.learning.split import held_out_split
from workbench.learning.vocabularies import store_vocabulary
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainConfig, TrainResult
from workbench.model.transforms import PipelineConfig


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


def test_training_is_recorded_in_the_catalog(
    ws: Workspace, tmp_path: Path, random_vocab: TextVocabulary
) -> None:
    store_vocabulary(ws, random_vocab, "test-vocab")
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


@pytest.mark.parametrize("include", [False, True])
def test_train_leaves_the_held_out_scans_out_unless_told(
    tmp_path: Path,
    random_vocab: TextVocabulary,
    add_plain_scans: Any,
    monkeypatch: pytest.MonkeyPatch,
    include: bool,
) -> None:
    """Five scans per source at the default 0.2: one held out per source (the stratified rule); training
    gets the other eight, or all ten with ``include_held_out``; the run's config says which."""
    ws = Workspace.open(tmp_path / "ws")
    add_plain_scans(ws, {"lits": 5, "btcv": 5})
    store_vocabulary(ws, random_vocab, "v")
    seen: dict[str, Any] = {}

    def fake_train(ws_: Workspace, run_id: str, cases: Any, config: Any, out: Any, **kw: Any) -> Any:
        seen["cases"], seen["config"] = [c.case_id for c in cases], kw["run_config"]
        return TrainResult(model=None, step=0, epoch=0, records=[], checkpoint=None), None

    monkeypatch.setattr(catalog_training, "train_and_record", fake_train)
    train_from_catalog(ws, tmp_path / "m", vocabulary="v", progress=False, include_held_out=include)
    held = held_out_split(ws)
    assert len(held) == 2 and {s.split(":")[0] for s in held} == {"lits", "btcv"}
    assert len(seen["cases"]) == (10 if include else 8)
    assert bool(set(seen["cases"]) & held) == include
    assert seen["config"]["include_held_out"] is include
    assert seen["config"]["held_out_scans"] == (0 if include else 2)
