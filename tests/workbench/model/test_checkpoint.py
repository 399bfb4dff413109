"""Tests for workbench.model.checkpoint: release files, own format, vocabulary refusal, atomic writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harmonize.errors import HarmonizeError
from workbench.model.checkpoint import (
    VocabularyMismatch,
    atomic_torch_save,
    load_checkpoint,
    load_release_checkpoint,
    release_key,
    save_checkpoint,
)
from workbench.model.network import UniversalModel
from workbench.model.text import TextVocabulary

torch.set_num_threads(2)
TINY = (4, 4, 8, 8, 16, 4)


def _release_layout(shared_fixtures: Path, release: str) -> dict:
    return json.loads(
        (shared_fixtures / "universal_model" / f"universal_model_{release}_state_dict.json").read_text()
    )


def _random_release_file(spec: dict, path: Path, release: str) -> dict[str, torch.Tensor]:
    """A random state dict with exactly the release layout, keyed and saved as the release saves it."""
    g = torch.Generator().manual_seed(0)
    net = {}
    for name, shape, dtype in spec["entries"]:
        if dtype == "int64":
            value = torch.randint(0, 5, shape, generator=g, dtype=torch.int64)
        else:
            value = torch.randn(shape, generator=g) * 0.02
        if name.endswith("running_var"):
            value = value.abs() + 1.0
        # train.py wraps the model in DDP ('module.'); the Swin release has no 'backbone.' segment.
        raw = name.removeprefix("backbone.") if release == "swinunetr" else name
        net["module." + raw] = value
    torch.save(
        {"net": net, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "epoch": 7}, path
    )
    return net


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("module.swinViT.patch_embed.proj.weight", "backbone.swinViT.patch_embed.proj.weight"),
        ("module.encoder1.layer.conv1.conv.weight", "backbone.encoder1.layer.conv1.conv.weight"),
        ("module.decoder5.transp_conv.conv.weight", "backbone.decoder5.transp_conv.conv.weight"),
        ("module.backbone.down_tr64.ops.0.conv1.weight", "backbone.down_tr64.ops.0.conv1.weight"),
        ("module.organ_embedding", "organ_embedding"),
        ("module.precls_conv.0.weight", "precls_conv.0.weight"),
        ("controller.bias", "controller.bias"),
    ],
)
def test_release_key_follows_the_original_loader(raw: str, expected: str) -> None:
    assert release_key(raw) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("release", "backbone", "side"), [("unet", "unet", 64), ("swinunetr", "swinunetr", 64)]
)
def test_release_checkpoint_loads_strictly_and_predicts(
    shared_fixtures: Path, tmp_path: Path, release: str, backbone: str, side: int
) -> None:
    spec = _release_layout(shared_fixtures, release)
    path = tmp_path / f"{release}.pth"
    net = _random_release_file(spec, path, release)
    model = load_release_checkpoint(path, backbone)
    state = model.state_dict()
    assert len(state) == spec["num_entries"] == len(net)
    for raw_name, value in net.items():
        name = raw_name.removeprefix("module.")
        name = name if name in state else "backbone." + name
        assert torch.equal(state[name], value), name
    # The real release runs 96^3 windows; 64^3 (divisible by 32) keeps this CPU test short.
    with torch.no_grad():
        out = model(torch.rand(1, 1, side, side, side))
    assert out.shape == (1, 32, side, side, side) and torch.isfinite(out).all()


@pytest.mark.parametrize("problem", ["missing_key", "extra_key", "wrong_shape"])
def test_release_checkpoint_mismatch_names_the_problem(
    shared_fixtures: Path, tmp_path: Path, problem: str
) -> None:
    spec = _release_layout(shared_fixtures, "unet")
    path = tmp_path / "unet.pth"
    net = _random_release_file(spec, path, "unet")
    if problem == "missing_key":
        del net["module.controller.bias"]
    elif problem == "extra_key":
        net["module.backbone.out_tr.final_conv.weight"] = torch.zeros(1)
    else:
        net["module.text_to_vision.bias"] = torch.zeros(255)
    torch.save({"net": net}, path)
    with pytest.raises(HarmonizeError, match=r"unet\.pth.*does not match"):
        load_release_checkpoint(path, "unet")


def test_release_checkpoint_of_the_wrong_backbone_is_refused(shared_fixtures: Path, tmp_path: Path) -> None:
    spec = _release_layout(shared_fixtures, "unet")
    path = tmp_path / "unet.pth"
    _random_release_file(spec, path, "unet")
    with pytest.raises(HarmonizeError, match="small_unet"):
        load_release_checkpoint(path, "small_unet")


def _vocab(n: int, encoder: str = "enc-a", seed: int = 0) -> TextVocabulary:
    rng = np.random.default_rng(seed)
    names = tuple(f"class_{i}" for i in range(n))
    return TextVocabulary(names, names, "V1", encoder, "w", rng.standard_normal((n, 512)))


def _tiny_model(vocab: TextVocabulary) -> UniversalModel:
    torch.manual_seed(0)
    return UniversalModel("small_unet", embeddings=vocab.embeddings, small_features=TINY)


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    vocab = _vocab(3)
    model = _tiny_model(vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(1, 1, 32, 16, 16)
    model(x).mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, {"step": 1, "note": "x"}, vocab)
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path, vocab)
    assert loaded.state == {"step": 1, "note": "x"}
    assert loaded.vocabulary.sha256 == vocab.sha256 and loaded.vocabulary.provenance() == vocab.provenance()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    opt2 = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state)
    assert int(opt2.state_dict()["state"][0]["step"]) == 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_own_checkpoint_keeps_added_classes(tmp_path: Path) -> None:
    vocab = _vocab(2)
    model = _tiny_model(vocab)
    row = np.random.default_rng(5).standard_normal(512).astype(np.float32)
    model.add_class(row)
    with torch.no_grad():
        model.new_heads[0].add_(0.5)
    vocab3 = vocab.with_class("new_class", "A computerized tomography of a new class.", row)
    path = save_checkpoint(tmp_path / "ck.pt", model, None, {}, vocab3)
    loaded = load_checkpoint(path)
    assert loaded.model.config["n_added_classes"] == 1
    assert torch.equal(loaded.model.new_heads[0], model.new_heads[0])


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (lambda: _vocab(3, encoder="enc-b"), "encoder_id: checkpoint 'enc-a', given 'enc-b'"),
        (lambda: _vocab(4), "class names"),
        (lambda: _vocab(3, seed=1), "embeddings differ"),
    ],
)
def test_mismatching_vocabulary_is_refused(tmp_path: Path, other, match: str) -> None:
    vocab = _vocab(3)
    path = save_checkpoint(tmp_path / "ck.pt", _tiny_model(vocab), None, {}, vocab)
    with pytest.raises(VocabularyMismatch, match=match):
        load_checkpoint(path, other())


def test_save_refuses_a_vocabulary_the_model_does_not_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not the given vocabulary"):
        save_checkpoint(tmp_path / "ck.pt", _tiny_model(_vocab(3)), None, {}, _vocab(3, seed=9))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    atomic_torch_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_torch_save({"v": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]


@pytest.mark.parametrize("content", ["missing", "garbage", "foreign"])
def test_load_checkpoint_rejects_other_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif content == "foreign":
        torch.save({"net": {}}, path)
    with pytest.raises(HarmonizeError, match=r"x\.pt"):
        load_checkpoint(path)


# -- release parity: our logits vs an independent reading of the original forward (#12) ---------------

#: The neighbour order of the original repository's vendored Swin UNETR ``PatchMerging`` (3D branch),
#: written out from reading it: x0..x7 = (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,0,1) (0,1,0) (0,0,1) (1,1,1).
_ORIGINAL_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


def _original_merging(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original's patch merging: its neighbour order, then LayerNorm and the bias-free Linear."""
    picked = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in _ORIGINAL_ORDER], -1)
    return self.reduction(self.norm(picked))  # type: ignore[operator]


def _ref_conv_bn_relu(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    # Models Genesis LUConv: 3x3x3 conv, ContBatchNorm3d (always the batch's statistics), ReLU.
    x = F.conv3d(x, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=1)
    x = F.batch_norm(x, None, None, sd[f"{p}.bn1.weight"], sd[f"{p}.bn1.bias"], training=True, eps=1e-5)
    return F.relu(x)


def _ref_unet(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    skips = []
    for depth, name in enumerate(("down_tr64", "down_tr128", "down_tr256", "down_tr512")):
        for i in (0, 1):
            x = _ref_conv_bn_relu(x, sd, f"backbone.{name}.ops.{i}")
        skips.append(x)
        x = F.max_pool3d(x, 2) if depth < 3 else x
    deep = x
    for name, skip in zip(("up_tr256", "up_tr128", "up_tr64"), skips[2::-1]):
        up = f"backbone.{name}.up_conv"
        x = torch.cat([F.conv_transpose3d(x, sd[f"{up}.weight"], sd[f"{up}.bias"], stride=2), skip], 1)
        for i in (0, 1):
            x = _ref_conv_bn_relu(x, sd, f"backbone.{name}.ops.{i}")
    return deep, x


def _ref_swin(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    import types

    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=1, feature_size=48).eval()
    own = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    missing, unexpected = net.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("out.") for k in missing)
    for stage in (net.swinViT.layers1, net.swinViT.layers2, net.swinViT.layers3, net.swinViT.layers4):
        ds = stage[0].downsample
        ds.forward = types.MethodType(_original_merging, ds)  # type: ignore[method-assign]
    hidden = net.swinViT(x, net.normalize)
    enc0, enc1 = net.encoder1(x), net.encoder2(hidden[0])
    enc2, enc3 = net.encoder3(hidden[1]), net.encoder4(hidden[2])
    deep = net.encoder10(hidden[4])
    out = net.decoder2(net.decoder3(net.decoder4(net.decoder5(deep, hidden[3]), enc3), enc2), enc1)
    return deep, net.decoder1(out, enc0)


def _ref_heads(sd: dict[str, torch.Tensor], deep: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """The original word-embedding head: GAP -> image feature, text_to_vision -> task feature, the
    controller's 153 parameters per class, three grouped 1x1x1 convs over C copies of the 8 channels."""
    c = sd["organ_embedding"].shape[0]
    gap = F.relu(F.group_norm(deep, 16, sd["GAP.0.weight"], sd["GAP.0.bias"]))
    image = F.conv3d(F.adaptive_avg_pool3d(gap, 1), sd["GAP.3.weight"], sd["GAP.3.bias"])
    task = F.relu(F.linear(sd["organ_embedding"], sd["text_to_vision.weight"], sd["text_to_vision.bias"]))
    out = []
    for b in range(deep.shape[0]):
        cond = torch.cat([image[b : b + 1].repeat(c, 1, 1, 1, 1), task[..., None, None, None]], 1)
        params = F.conv3d(cond, sd["controller.weight"], sd["controller.bias"]).flatten(1)
        h = F.relu(F.group_norm(feat[b : b + 1], 16, sd["precls_conv.0.weight"], sd["precls_conv.0.bias"]))
        h = F.conv3d(h, sd["precls_conv.2.weight"], sd["precls_conv.2.bias"])
        h = h.repeat(c, 1, 1, 1, 1).reshape(1, c * 8, *h.shape[2:])
        w1, w2, w3, b1, b2, b3 = torch.split(params, [64, 64, 8, 8, 8, 1], 1)
        layers = ((w1, b1, c * 8), (w2, b2, c * 8), (w3, b3, c))
        for i, (w, bias, n_out) in enumerate(layers):
            h = F.conv3d(h, w.reshape(n_out, 8, 1, 1, 1), bias.reshape(n_out), groups=c)
            h = F.relu(h) if i < 2 else h
        out.append(h.reshape(1, c, *h.shape[2:]))
    return torch.cat(out)


@pytest.mark.parametrize(("backbone", "batch"), [("unet", 2), ("swinunetr", 1)])
def test_release_logits_match_the_original_forward(
    release_file: Callable[[str], Path], backbone: str, batch: int
) -> None:
    from workbench.model.registry import read_model_file

    path = release_file(backbone)
    mf = read_model_file(path)  # the backbone from the keys
    assert mf.kind == "release" and mf.backbone == {"unet": "unet3d"}.get(backbone, backbone)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in mf.model.state_dict().items()}
    x = torch.rand((batch, 1, 64, 64, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = mf.model(x)
        # The original runs one window per forward (sw_batch_size=1): the reference sees each alone.
        ref_backbone = _ref_unet if backbone == "unet" else _ref_swin
        ref = torch.cat([_ref_heads(sd, *ref_backbone(x[i : i + 1], sd)) for i in range(batch)])
    assert ours.shape == ref.shape == (batch, 32, 64, 64, 64)
    assert float(ref.abs().max()) > 0.1  # logits of a size where 1e-4 means something
    assert float((ours - ref).abs().max()) < 1e-4
    if backbone == "swinunetr":  # MONAI 1.x's merging order on the same weights: not the original
        monai_order = UniversalModel("swinunetr", n_classes=32, swin_merging="monai")
        monai_order.load_state_dict(mf.model.state_dict())
        with torch.no_grad():
            assert float((monai_order.eval()(x) - ref).abs().max()) > 1e-3
