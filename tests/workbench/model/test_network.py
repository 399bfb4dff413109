"""Tests for workbench.model.network: layout, dynamic heads, extensibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.model.network import (
    MONAI_MERGE_OFFSETS,
    N_DYNAMIC_PARAMS,
    RELEASE_MERGE_OFFSETS,
    UniversalModel,
    merge_neighbours,
)

torch.set_num_threads(2)
TINY = (4, 4, 8, 8, 16, 4)  # BasicUNet feature sizes for fast tests


def _tiny(n_classes: int = 5, seed: int = 0) -> UniversalModel:
    torch.manual_seed(seed)
    return UniversalModel("small_unet", embeddings=torch.randn(n_classes, 512), small_features=TINY)


@pytest.mark.parametrize(("release", "backbone"), [("unet", "unet3d"), ("swinunetr", "swinunetr")])
def test_state_dict_layout_matches_the_release(shared_fixtures: Path, release: str, backbone: str) -> None:
    spec = json.loads(
        (shared_fixtures / "universal_model" / f"universal_model_{release}_state_dict.json").read_text()
    )
    expected = {name: (tuple(shape), dtype) for name, shape, dtype in spec["entries"]}
    model = UniversalModel(backbone)
    got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert got == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params + 32 * 512 == spec["num_parameters"] or n_params == spec["num_parameters"]


def test_controller_emits_153_parameters() -> None:
    assert N_DYNAMIC_PARAMS == 64 + 64 + 8 + 8 + 8 + 1 == 153
    m = _tiny()
    assert tuple(m.controller.weight.shape) == (153, 512, 1, 1, 1)
    assert tuple(m.text_to_vision.weight.shape) == (256, 512)


def _original_forward(m: UniversalModel, x: torch.Tensor) -> torch.Tensor:
    """The original Universal_model forward, written out independently: grouped convs over C copies."""
    deep, feat = m.backbone(x)
    task = F.relu(m.text_to_vision(m.organ_embedding))[:, :, None, None, None]
    x_feat = m.GAP(deep)
    c = m.n_classes
    outs = []
    for i in range(x.shape[0]):
        cond = torch.cat([x_feat[i : i + 1].repeat(c, 1, 1, 1, 1), task], 1)
        params = m.controller(cond).flatten(1)
        head = m.precls_conv(feat[i : i + 1]).repeat(c, 1, 1, 1, 1)
        d, h, w = head.shape[2:]
        head = head.reshape(1, -1, d, h, w)
        splits = list(torch.split_with_sizes(params, [64, 64, 8, 8, 8, 1], dim=1))
        ws = [
            splits[0].reshape(c * 8, -1, 1, 1, 1),
            splits[1].reshape(c * 8, -1, 1, 1, 1),
            splits[2].reshape(c, -1, 1, 1, 1),
        ]
        bs = [splits[3].reshape(c * 8), splits[4].reshape(c * 8), splits[5].reshape(c)]
        y = head
        for layer, (wt, bi) in enumerate(zip(ws, bs)):
            y = F.conv3d(y, wt, bi, groups=c)
            if layer < 2:
                y = F.relu(y)
        outs.append(y.reshape(1, -1, d, h, w))
    return torch.cat(outs)


@pytest.mark.parametrize(("batch", "n_classes", "chunk"), [(1, 1, 1 << 18), (2, 5, 1 << 18), (2, 3, 1000)])
def test_forward_equals_the_original_grouped_formulation(
    batch: int, n_classes: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.model.network as network

    monkeypatch.setattr(network.UniversalModel.dynamic_heads, "__defaults__", (chunk,))
    m = _tiny(n_classes).eval()
    x = torch.randn(batch, 1, 16, 16, 32)
    with torch.no_grad():
        got = m(x)
        ref = _original_forward(m, x)
    assert got.shape == (batch, n_classes, 16, 16, 32)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_unet3d_normalises_with_batch_statistics_even_in_eval() -> None:
    from workbench.model.network import BatchStatsNorm3d

    bn = BatchStatsNorm3d(3).eval()
    x = torch.randn(2, 3, 4, 4, 4) * 5 + 7
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    assert torch.equal(bn.running_mean, torch.zeros(3))  # eval never mutates the state
    bn.train()(x)
    assert not torch.equal(bn.running_mean, torch.zeros(3))


@pytest.mark.parametrize(("backbone", "shape"), [("unet3d", (16, 16, 16)), ("small_unet", (32, 32, 16))])
def test_backbones_predict_one_map_per_class(backbone: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    m = UniversalModel(backbone, n_classes=3).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 1, *shape))
    assert y.shape == (1, 3, *shape) and torch.isfinite(y).all()


def test_add_class_keeps_old_outputs_and_parameters_bit_identical() -> None:
    m = _tiny(4)
    x = torch.randn(2, 1, 32, 16, 16)
    m.eval()
    with torch.no_grad():
        before = m(x)
    old_params = {k: v.detach().clone() for k, v in m.state_dict().items()}
    channel = m.add_class(torch.randn(512))
    assert channel == 4 and m.n_classes == 5 and m.config["n_added_classes"] == 1
    with torch.no_grad():
        after = m(x)
    assert torch.equal(after[:, :4], before)

    # Train the new class only: its head offset is the one trainable tensor.
    for p in m.parameters():
        p.requires_grad_(False)
    new = m.new_class_parameters()
    assert len(new) == 1 and new[0].shape == (153,)
    for p in new:
        p.requires_grad_(True)
    opt = torch.optim.Adam(new, lr=1e-2)
    target = (torch.rand(2, 1, 32, 16, 16) > 0.5).float()
    m.train()
    losses = []
    for _ in range(3):
        loss = F.binary_cross_entropy_with_logits(m(x)[:, 4:5], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    m.eval()
    with torch.no_grad():
        final = m(x)
    for k, v in old_params.items():
        now = m.state_dict()[k]
        assert torch.equal(now[:4] if k == "organ_embedding" else now, v), k
    assert torch.equal(final[:, :4], before)
    assert not torch.equal(final[:, 4], after[:, 4])
    assert losses[-1] < losses[0]
    assert float(new[0].abs().sum()) > 0


def test_set_embeddings_checks_shape() -> None:
    m = _tiny(3)
    with pytest.raises(ValueError, match="embeddings"):
        m.set_embeddings(torch.zeros(4, 512))
    e = torch.randn(3, 512)
    m.set_embeddings(e)
    assert torch.equal(m.organ_embedding, e)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        UniversalModel("resnet")


# -- Swin UNETR patch merging: the release's neighbour order, worked out by hand (#12) -----------------


def _cube() -> torch.Tensor:
    """A 2x2x2 volume, one channel, voxel (i, j, k) = 1 + 4i + 2j + k (values 1..8), channels last."""
    x = torch.zeros((1, 2, 2, 2, 1))
    for i, j, k in np.ndindex(2, 2, 2):
        x[0, i, j, k, 0] = 1 + 4 * i + 2 * j + k
    return x


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        # release: (0,0,0)=1 (1,0,0)=5 (0,1,0)=3 (0,0,1)=2 (1,0,1)=6 (0,1,0)=3 (0,0,1)=2 (1,1,1)=8
        (RELEASE_MERGE_OFFSETS, [1, 5, 3, 2, 6, 3, 2, 8]),
        # MONAI 1.x "merging": (1,1,0)=7 (1,0,1)=6 (0,1,1)=4 in places 4..6
        (MONAI_MERGE_OFFSETS, [1, 5, 3, 2, 7, 6, 4, 8]),
    ],
)
def test_patch_merging_gathers_neighbours_in_the_given_order(order: tuple, expected: list[int]) -> None:
    merged = merge_neighbours(_cube(), order)
    assert merged.shape == (1, 1, 1, 1, 8)
    assert merged.flatten().tolist() == expected


def test_the_release_swin_merging_layer_with_an_identity_like_reduction() -> None:
    """The layer in the built network: norm made the identity, the reduction picks gathered slots 4 and 5
    (release: voxels (1,0,1)=6 and (0,1,0)=3; MONAI 1.x's layer: (1,1,0)=7 and (1,0,1)=6)."""
    from monai.networks.nets.swin_unetr import PatchMerging as MonaiPatchMerging

    model = UniversalModel("swinunetr", n_classes=2)
    ours = model.backbone.swinViT.layers1[0].downsample
    monai_layer = MonaiPatchMerging(dim=1)
    outs = []
    for layer in (ours, monai_layer):
        layer.norm = torch.nn.Identity()
        layer.reduction = torch.nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            layer.reduction.weight.zero_()
            layer.reduction.weight[0, 4] = 1.0
            layer.reduction.weight[1, 5] = 1.0
            outs.append(layer(_cube()).flatten().tolist())
    assert outs == [[6.0, 3.0], [7.0, 6.0]]
    assert model.config["swin_merging"] == "release"


def test_unet_eval_normalises_each_window_alone() -> None:
    """Several windows per forward (sw_batch_size) give what each window alone gives (the original's
    batch statistics over a batch of one), so batching does not change the U-Net's predictions."""
    torch.manual_seed(0)
    model = UniversalModel("unet3d", n_classes=3).eval()
    x = torch.rand((2, 1, 16, 16, 16))
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    assert float((together - alone).abs().max()) < 1e-5


def test_halo_split_conv_matches_the_plain_conv_forward_and_backward():
    from workbench.model.network import HaloSplitConv3d, split_batch_one_convs

    torch.manual_seed(0)
    plain = torch.nn.Conv3d(4, 6, 3, padding=1)
    split = torch.nn.Sequential(torch.nn.Conv3d(4, 6, 3, padding=1), torch.nn.Conv3d(6, 6, 1))
    split[0].load_state_dict(plain.state_dict())
    assert split_batch_one_convs(split) == 1 and isinstance(split[0], HaloSplitConv3d)
    assert set(split[0].state_dict()) == {"weight", "bias"}
    for shape in [(1, 4, 8, 6, 10), (1, 4, 7, 6, 6), (2, 4, 8, 6, 6)]:  # split, odd X, batch of two
        x1 = torch.randn(*shape, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_()
        a, b = plain(x1), split[0](x2)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        a.square().sum().backward()
        b.square().sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
