"""Tests for workbench.model.registry: release files as named models of a workspace, registered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from storage.files import file_sha256
from storage.workspace import Workspace
from workbench.model.registry import (
    RELEASE_SETTINGS,
    RELEASE_SOURCES,
    detect_backbone,
    import_model,
    merge_trained_on,
    read_model_file,
    registered_path,
    resolve_model,
    trained_on,
)
from workbench.model.text import ORIGINAL_ENCODER_ID, TextVocabulary, import_original_vocabulary

torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["module.swinViT.patch_embed.proj.weight", "module.organ_embedding"], "swinunetr"),
        (["module.backbone.down_tr64.ops.0.conv1.weight", "module.organ_embedding"], "unet3d"),
        (["module.organ_embedding", "module.controller.weight"], None),  # neither: ambiguous
        (["module.swinViT.x", "module.backbone.down_tr64.y"], None),  # both: ambiguous
    ],
)
def test_detect_backbone_from_release_keys(keys: list[str], expected: str | None) -> None:
    assert detect_backbone(keys) == expected


def test_import_model_registers_a_release_once(
    tmp_path: Path, release_file: Callable[[str], Path], shared_fixtures: Path
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    path = release_file("unet")
    txt = import_original_vocabulary(shared_fixtures / "universal_model" / "txt_encoding.pth")
    first = import_model(ws, path, name="paper-unet", embeddings=txt.embeddings)
    assert first.registered and first.line().startswith("registered model 'paper-unet' (release unet3d")
    row = ws.catalog.model("paper-unet")
    assert row is not None
    assert row["sha256"] == file_sha256(path) == file_sha256(registered_path(ws, row))
    assert row["kind"] == "release" and row["backbone"] == "unet3d"
    assert list(row["class_names"]) == class_names() and len(row["class_names"]) == 32
    assert row["encoder_id"] == ORIGINAL_ENCODER_ID == "clip-vit-b32 (original release)"
    assert list(row["spacing_mm"]) == [1.5, 1.5, 1.5] and list(row["patch"]) == [96, 96, 96]
    vocab = ws.catalog.vocabulary(str(row["vocabulary_sha256"]))
    stored = TextVocabulary.from_bytes(vocab["embeddings"])
    assert stored.encoder_id == ORIGINAL_ENCODER_ID
    np.testing.assert_array_equal(
        stored.embeddings, txt.embeddings
    )  # the release's CLIP embeddings, as released
    record = trained_on(row)
    assert record is not None and record["liver"]["sources"] == list(RELEASE_SOURCES["liver"])
    assert record["celiac_trunk"] == {"sources": ["13"], "scans": None}
    assert ws.catalog.model(str(row["sha256"])[:12])["name"] == "paper-unet"  # by sha256 prefix
    # The same file again, under another name too: nothing written, and it says so.
    again = import_model(ws, path, name="other")
    assert not again.registered and again.line().startswith(
        "already registered, nothing changed: model 'paper-unet'"
    )
    assert len(ws.catalog.models()) == 1


def test_a_release_model_has_the_papers_inference_settings(release_file: Callable[[str], Path]) -> None:
    mf = read_model_file(release_file("unet"))
    assert mf.settings == RELEASE_SETTINGS
    assert mf.settings["hu_window"] == [-175.0, 250.0] and mf.settings["overlap"] == 0.5
    assert mf.settings["threshold"] == 0.5 and mf.settings["tta"] is False


def _rewrite(src: Path, dst: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    obj = torch.load(src, map_location="cpu", weights_only=True)
    change(obj["net"])
    torch.save(obj, dst)
    return dst


def _drop_class(net: dict[str, torch.Tensor]) -> None:
    net["module.organ_embedding"] = net["module.organ_embedding"][:31].clone()


def _drop_marks(net: dict[str, torch.Tensor]) -> None:
    for k in [k for k in net if "down_tr64" in k]:
        net[k.replace("down_tr64", "first_block")] = net.pop(k)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_drop_class, r"organ_embedding is \[31, 512\].*classes do not fit the taxonomy"),
        (_drop_marks, r"its keys do not tell the backbone; pass --backbone unet\|swinunetr"),
    ],
)
def test_release_files_that_do_not_fit_are_one_line_and_register_nothing(
    tmp_path: Path, release_file: Callable[[str], Path], change: Callable[..., None], problem: str
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    bad = _rewrite(release_file("unet"), tmp_path / "bad.pth", change)
    with pytest.raises(HarmonizeError, match=problem) as err:
        import_model(ws, bad)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(bad))
    assert ws.catalog.models().empty and not (ws.models / "registry").exists()


def test_embeddings_that_are_not_the_models_are_refused(
    tmp_path: Path, release_file: Callable[[str], Path]
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    for emb, problem in (
        (np.zeros((31, 512), np.float32), r"holds \[31, 512\] embeddings; the model has \[32, 512\]"),
        (np.zeros((32, 512), np.float32), r"differs from the model's own text embeddings by up to"),
    ):
        with pytest.raises(HarmonizeError, match=problem):
            import_model(ws, release_file("unet"), embeddings=emb, embeddings_path="emb.pth")
    assert ws.catalog.models().empty


@pytest.mark.parametrize(
    "content",
    [torch.zeros(3), {"net": {"a": "not a tensor"}}, {"weights": [1, 2]}],
    ids=["a bare tensor", "strings", "a list"],
)
def test_a_file_of_neither_format_is_one_line(tmp_path: Path, content: object) -> None:
    path = tmp_path / "thing.pth"
    torch.save(content, path)
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(HarmonizeError, match=r"is neither a workbench\.universal_model/1 checkpoint nor an"):
        import_model(ws, path)
    assert ws.catalog.models().empty


def test_a_workbench_checkpoint_registers_too(tmp_path: Path, random_checkpoint: Callable[..., Path]) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ckpt = random_checkpoint(tmp_path / "m.pt", ("spleen", "liver"))
    result = import_model(ws, ckpt, name="ours")
    row = result.row
    assert result.registered and row["kind"] == "workbench" and row["backbone"] == "small_unet"
    assert list(row["class_names"]) == ["spleen", "liver"] and list(row["spacing_mm"]) == [6.0, 6.0, 6.0]


def test_a_taken_name_is_refused_before_anything_is_copied(
    tmp_path: Path, random_checkpoint: Callable[..., Path]
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    first = random_checkpoint(tmp_path / "a.pt", ("spleen",), seed=1)
    second = random_checkpoint(tmp_path / "b.pt", ("spleen",), seed=2)
    import_model(ws, first, name="m")
    with pytest.raises(HarmonizeError, match="the model name 'm' is taken by model"):
        import_model(ws, second, name="m")
    assert len(ws.catalog.models()) == 1 and len(list((ws.models / "registry").iterdir())) == 1


@pytest.mark.parametrize(
    ("base", "new", "expected"),
    [
        (None, None, None),
        (None, {"liver": {"sources": ["lits"], "scans": 3}}, {"liver": {"sources": ["lits"], "scans": 3}}),
        # the release's count is unknown: it stays unknown, the sources are united
        (
            {"liver": {"sources": ["04", "01"], "scans": None}},
            {"liver": {"sources": ["lits"], "scans": 3}},
            {"liver": {"sources": ["01", "04", "lits"], "scans": None}},
        ),
        # known counts add up; a source in both counts once; classes of one side are kept
        (
            {"liver": {"sources": ["lits"], "scans": 4}, "spleen": {"sources": ["btcv"], "scans": 2}},
            {
                "liver": {"sources": ["lits", "btcv"], "scans": 3},
                "kidney_left": {"sources": ["kits23"], "scans": 1},
            },
            {
                "kidney_left": {"sources": ["kits23"], "scans": 1},
                "liver": {"sources": ["btcv", "lits"], "scans": 7},
                "spleen": {"sources": ["btcv"], "scans": 2},
            },
        ),
    ],
)
def test_fine_tuning_adds_the_init_models_trained_on(
    base: dict | None, new: dict | None, expected: dict | None
) -> None:
    assert merge_trained_on(base, new) == expected


def test_an_init_that_is_no_model_names_the_registered_ones(
    tmp_path: Path, random_checkpoint: Callable[..., Path]
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    import_model(ws, random_checkpoint(tmp_path / "m.pt", ("spleen", "liver")), name="ours")
    with pytest.raises(
        HarmonizeError, match=r"nope: is neither a registered model \(ours\) nor a model file"
    ):
        resolve_model(ws, "nope")
    by_name, by_file = resolve_model(ws, "ours"), resolve_model(ws, tmp_path / "m.pt")
    assert (by_name.name, by_name.registered) == ("ours", True)
    assert (
        by_file.name == f"workbench-small_unet-{file_sha256(tmp_path / 'm.pt')[:8]}"
        and not by_file.registered
    )
    assert (
        by_name.init_record()["sha256"] == by_file.init_record()["sha256"] == file_sha256(tmp_path / "m.pt")
    )
