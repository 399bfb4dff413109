"""Fine-tuning from a registered model (the paper's transfer) and classes added as data (its incremental
learning): what is kept, what moves, what the registry and the catalog record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonize.errors import HarmonizeError
from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_by_name, class_names, set_added_classes
from storage.catalog import LabelSetRecord
from storage.files import file_sha256
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.learning.fine_tuning import NewClass, class_embedding, fine_tune
from workbench.learning.split import held_out_split
from workbench.learning.vocabularies import store_vocabulary
from workbench.model.checkpoint import load_checkpoint
from workbench.model.registry import (
    RELEASE_SOURCES,
    import_model,
    read_model_file,
    registered_path,
    release_vocabulary,
    trained_on,
)
from workbench.model.text import MiniLMOfflineEncoder, TextVocabulary, build_vocabulary
from workbench.model.train import TrainConfig
from workbench.model.transforms import PipelineConfig

torch.set_num_threads(2)
PRESENT = "annotated_present"
LOBE = NewClass("left_liver_lobe", "Left Lobe of Liver", kind="organ", parent="liver")


@pytest.fixture(autouse=True)
def _no_added_classes_after() -> Iterator[None]:
    """Added classes are installed process-wide by the catalog opened last: leave none behind."""
    yield
    set_added_classes(())


def _phantom_ws(root: Path, cases: int) -> Workspace:
    """``cases`` AbdomenCT-1K phantoms (liver, kidneys, spleen, pancreas annotated) at 6 mm."""
    for seed in range(cases):
        phantom = make_phantom(60 + seed, shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0))
        write_native(phantom, get_protocol("abdomenct_1k"), root / "data", f"0000{seed + 1}")
    ws = Workspace.open(root / "ws")
    assert not ingest(ws, "abdomenct_1k", root / "data", progress=False).skipped
    return ws


def _steps(freeze: str, lr: float = 1e-3) -> TrainConfig:
    return TrainConfig(
        lr=lr,
        epochs=100,
        max_steps=2,
        checkpoint_every=2,
        freeze=freeze,
        pipeline=PipelineConfig(num_samples=1),
    )


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names: set[str]) -> set[str]:
    return {k for k in names if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(("backbone", "patch"), [("unet", 16), ("swinunetr", 64)])
def test_fine_tuning_a_release_model_keeps_its_backbone_controller_and_vocabulary(
    backbone: str, patch: int, tmp_path: Path, release_file: Callable[[str], Path]
) -> None:
    ws = _phantom_ws(tmp_path, 1)
    name = f"paper-{backbone}"
    import_model(ws, release_file(backbone), name=name)
    init = read_model_file(registered_path(ws, ws.catalog.model(name) or {}))
    result = fine_tune(
        ws, name, config=_steps("backbone"), spacing_mm=6.0, patch=patch, classes=["liver", "spleen"],
        progress=False,
    )  # fmt: skip

    loaded = load_checkpoint(result.checkpoint)
    assert loaded.model.backbone_name == init.backbone == {"unet": "unet3d"}.get(backbone, backbone)
    assert loaded.model.swin_merging == "release"  # the release's neighbour order, kept through training
    assert loaded.vocabulary.sha256 == init.vocabulary.sha256  # the CLIP embeddings it came with
    record = loaded.state["init"]
    assert (record["name"], record["kind"]) == (name, "release")
    assert record["sha256"] == file_sha256(release_file(backbone))
    assert loaded.state["step"] == 2 and loaded.state["config"]["pipeline"]["patch"] == [patch] * 3

    before, after = init.model.state_dict(), loaded.model.state_dict()
    params = {n for n, _ in init.model.named_parameters()}
    frozen = {n for n in params if n.startswith("backbone.")}
    assert frozen and not _moved(before, after, frozen)  # --freeze backbone: not one weight changed
    moved = _moved(before, after, params - frozen)
    assert {"controller.weight", "text_to_vision.weight", "GAP.3.weight", "precls_conv.2.weight"} <= moved
    assert torch.equal(before["organ_embedding"], after["organ_embedding"])

    row = ws.catalog.model(result.model_name)
    assert row is not None and (row["kind"], row["backbone"]) == ("workbench", init.backbone)
    assert list(row["class_names"]) == class_names() and row["sha256"] == result.sha256
    learnt = trained_on(row)
    assert learnt is not None and learnt == result.trained_on
    # the release's sources plus this workspace's, its unknown count stays unknown; untrained classes
    # keep the release's record
    assert learnt["liver"] == {"sources": sorted({*RELEASE_SOURCES["liver"], "abdomenct_1k"}), "scans": None}
    assert learnt["stomach"] == {"sources": sorted(RELEASE_SOURCES["stomach"]), "scans": None}
    assert ws.catalog.run_config(result.run_id)["init"]["sha256"] == record["sha256"]
    settings = read_model_file(result.checkpoint).settings  # the paper's inference settings, its own grid
    assert (settings["overlap"], settings["tta"], settings["window"]) == (0.5, False, [patch] * 3)


def _add_lobe_labels(ws: Workspace, scan_ids: list[str]) -> dict[str, int]:
    """An 'original' label set of the added class per scan: the liver's voxels left of its centre."""
    voxels = {}
    for scan_id in scan_ids:
        ls = ws.catalog.latest_original(scan_id)
        assert ls is not None
        liver = ws.masks.read(str(ls["mask_key"]), "liver")
        lobe = liver.copy()
        lobe[: int(np.median(np.nonzero(liver)[0]))] = False
        key = f"ls-lobe-{scan_id.replace(':', '-')}"
        ws.masks.write_label_set(key, {LOBE.name: lobe}, liver.shape)
        record = LabelSetRecord(id=key, scan_id=scan_id, version=None, origin="original", mask_key=key)
        ws.catalog.add_label_set(record, {LOBE.name: PRESENT}, [])
        voxels[scan_id] = int(lobe.sum())
    return voxels


def test_an_added_class_trains_its_own_head_and_the_catalog_takes_its_labels(
    tmp_path: Path, random_checkpoint: Callable[..., Path]
) -> None:
    ws = _phantom_ws(tmp_path, 3)
    held = held_out_split(ws)
    train_ids = sorted(set(ws.catalog.query("SELECT id FROM scan")["id"]) - held)
    assert len(held) == 1 and len(train_ids) == 2
    base_path = random_checkpoint(tmp_path / "base.pt", ("spleen", "liver"))
    import_model(ws, base_path, name="base")

    # the class is data: registered with the next label value, then its labels come in
    row = ws.catalog.add_class(LOBE.name, LOBE.prompt_name, LOBE.kind, LOBE.parents)
    assert row["class_index"] == 33 and class_by_name(LOBE.name).parents == ("liver",)
    assert class_names()[-1] == LOBE.name and len(class_names()) == 33
    assert all(n > 0 for n in _add_lobe_labels(ws, train_ids).values())
    # its text embedding: a stored vocabulary of the model's own encoder holding the class
    emb = np.random.default_rng(5).standard_normal((1, 512)).astype(np.float32)
    prompt = "A computerized tomography of a Left Lobe of Liver."
    store_vocabulary(ws, TextVocabulary((LOBE.name,), (prompt,), "V1", "random-test", "none", emb), "lobe")

    result = fine_tune(
        ws, "base", config=_steps("old_classes", lr=1e-2), new_classes=[LOBE], classes=[LOBE.name],
        progress=False,
    )  # fmt: skip
    assert result.added == [LOBE.name] and result.cases == 2 and not result.unlearnt
    base, tuned = load_checkpoint(base_path), load_checkpoint(result.checkpoint)
    assert tuned.vocabulary.class_names == ("spleen", "liver", LOBE.name)
    assert tuned.vocabulary.prompts[-1] == prompt
    np.testing.assert_array_equal(tuned.vocabulary.embeddings[2], emb[0])
    assert tuned.model.config["n_added_classes"] == 1
    # only the new head moved: everything the model came with is bit-identical
    b, t = base.model.state_dict(), tuned.model.state_dict()
    assert set(t) - set(b) == {"new_heads.0"} and float(t["new_heads.0"].abs().sum()) > 0
    assert not _moved(b, t, set(b) - {"organ_embedding"})
    assert torch.equal(t["organ_embedding"][:2], b["organ_embedding"])
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(tuned.model(x)[:, :2], base.model(x))  # the old classes predict what they did

    # the registry names it with its three classes and what it learnt, per class
    model_row = ws.catalog.model(result.model_name)
    assert model_row is not None and list(model_row["class_names"]) == ["spleen", "liver", LOBE.name]
    assert trained_on(model_row) == {LOBE.name: {"sources": ["abdomenct_1k"], "scans": 2}}
    # the held-out scan lacks the class: pseudo-labelled, stored and queued like a universal class
    from workbench.pseudolabel import pseudolabel

    run = pseudolabel(ws, result.model_name, scans=sorted(held), low_res_mm=6.0, progress=False)
    items = ws.catalog.uncertainty_items(run.run_id)
    assert items["class_name"].tolist() == [LOBE.name]
    assert ws.catalog.coverage(str(items["label_set_id"].iloc[0]))[LOBE.name] in (PRESENT, "annotated_absent")
    # a fresh process (nothing installed) gets the class back from the catalog
    set_added_classes(())
    assert LOBE.name not in class_names()
    Workspace.open(ws.root)
    assert class_by_name(LOBE.name).index == 33


@pytest.mark.parametrize(
    ("name", "prompt", "kind", "parents", "message"),
    [
        ("left_liver_lobe", "Left Lobe", "organ", ("liver",), "registered already as 'Left Lobe of Liver'"),
        ("liver", "Liver", "organ", (), "is a universal class already"),
        ("kidney", "Kidney", "organ", (), "is a universal class already"),
        ("Renal-Vein", "Renal Vein", "vessel", (), "use 2-63 lower-case letters"),
        ("renal_vein", "Renal Vein", "tube", (), "kind 'tube' is not one of organ, vessel, tumor, lesion"),
        ("renal_vein", "Renal Vein", "vessel", ("kidneys",), "unknown parent classes ['kidneys']"),
    ],
)
def test_a_class_that_does_not_fit_is_refused_in_one_line(
    tmp_path: Path, name: str, prompt: str, kind: str, parents: tuple[str, ...], message: str
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ws.catalog.add_class(LOBE.name, LOBE.prompt_name, LOBE.kind, LOBE.parents)
    with pytest.raises(ValueError) as err:
        ws.catalog.add_class(name, prompt, kind, parents)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert ws.catalog.added_classes()["name"].tolist() == [LOBE.name]  # nothing else was registered


def test_a_new_class_is_embedded_by_the_models_own_encoder(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    encoder = MiniLMOfflineEncoder()
    vocab = build_vocabulary(encoder, ["spleen", "liver"], template="V2")
    prompt, emb = class_embedding(ws, "m", vocab, NewClass("renal_vein", "Renal Vein", kind="vessel"))
    assert prompt == "There is Renal Vein in this computerized tomography."
    np.testing.assert_allclose(emb, encoder.encode([prompt])[0], atol=1e-6)
    assert emb.shape == (512,) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4  # MiniLM rows: unit norm


def test_a_new_class_without_its_encoder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = Workspace.open(tmp_path / "ws")
    release = release_vocabulary(np.zeros((32, 512), dtype=np.float32), "test")
    with pytest.raises(HarmonizeError, match=r"encoder \(clip-vit-b32 \(original release\)\) is not "):
        class_embedding(ws, "paper", release, LOBE)
    other = TextVocabulary(("liver",), ("liver",), "V1", "random-test", "none", np.ones((1, 512)))
    with pytest.raises(HarmonizeError, match="'random-test' is not one this workbench runs"):
        class_embedding(ws, "m", other, LOBE)
