"""The model of a job: checkpoints that do not fit are refused, and a checkpoint records its identity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from storage.files import file_sha256
from workbench.pseudolabel import Segmenter, resolve_device

Save = Callable[[Path, tuple[str, ...]], Path]


def test_checkpoints_that_do_not_fit_are_refused(tmp_path: Path, random_checkpoint: Save) -> None:
    bad = random_checkpoint(tmp_path / "bad.pt", ("spleen", "my_new_organ"))
    with pytest.raises(HarmonizeError, match="my_new_organ"):
        Segmenter.from_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(HarmonizeError, match=r"junk\.pt"):
        Segmenter.from_checkpoint(junk)


def test_checkpoint_records_its_identity(tmp_path: Path, random_checkpoint: Save) -> None:
    path = random_checkpoint(tmp_path / "m.pt", ("spleen", "liver"))
    seg = Segmenter.from_checkpoint(path)
    assert seg.class_names == ("spleen", "liver") and seg.patch == (32, 32, 32)
    assert seg.spacing_mm == (6.0, 6.0, 6.0) and seg.backbone == "small_unet"
    assert seg.sha256 == file_sha256(path) and seg.encoder_id == "random-test"
    assert set(seg.class_names) <= set(class_names())


def test_resolve_device_passes_explicit_devices_through() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == "cuda:0"
    else:  # CUDA asked for without a GPU: one line naming the setting
        with pytest.raises(ValueError, match=r"^--device cuda:1: no CUDA GPU is visible here"):
            resolve_device("cuda:1")


def test_a_release_file_is_a_model_directly(tmp_path: Path, release_file: Callable[[str], Path]) -> None:
    from storage.workspace import Workspace
    from workbench.pseudolabel.segmenter import load_model

    path = release_file("unet")
    seg = load_model(Workspace.open(tmp_path / "ws"), path)  # not registered: the file itself
    assert seg.is_release and seg.backbone == "unet3d" and seg.name == ""
    assert seg.spacing_mm == (1.5, 1.5, 1.5) and seg.patch == (96, 96, 96)
    assert seg.class_names == tuple(class_names()) and seg.sha256 == file_sha256(path)
    assert seg.encoder_id == "clip-vit-b32 (original release)" and seg.settings["tta"] is False
    with pytest.raises(HarmonizeError, match="its keys are those of a unet3d release, not swinunetr"):
        Segmenter.from_checkpoint(path, backbone="swinunetr")
