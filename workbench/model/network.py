"""The CLIP-driven Universal Model: a 3D backbone whose per-class output heads are generated from text.

For an image ``x`` [B, 1, X, Y, Z] and a vocabulary of ``C`` text embeddings ``E`` [C, 512]:

1. the backbone gives its deepest feature map ``deep`` and its full-resolution decoder output ``feat``;
2. ``GAP(deep)`` (GroupNorm, ReLU, global average pool, 1x1x1 conv) is a 256-d image feature per item;
3. ``relu(text_to_vision(E))`` is a 256-d task feature per class;
4. the ``controller`` (a 1x1x1 conv 512 -> 153) maps [image feature, task feature] to the 153 parameters of
   that class's dynamic head: three 1x1x1 convs 8 -> 8 -> 8 -> 1 (weights 64 + 64 + 8, biases 8 + 8 + 1,
   stored in the order w1, w2, w3, b1, b2, b3, each weight row-major [out, in] as in the original);
5. ``precls_conv`` (GroupNorm, ReLU, 1x1x1 conv) reduces ``feat`` to 8 channels and every class's head runs
   on it; the result is one logit map per class, [B, C, X, Y, Z]; ``sigmoid`` gives the masks.

All classes run in one call per head layer and batch item (per chunk of voxels): layer 1 is one matrix
product 8 -> 8C on the shared 8-channel input (what the original's grouped conv over C copies of that input
computes, without materialising the copies), layers 2 and 3 are one batched matrix product over the C
classes (the original's grouped 1x1x1 convs with C groups; the same arithmetic, several times faster on CPU).

Adding a class (the paper's extensibility): ``add_class(embedding)`` appends a text embedding row and a
new head. The controller is shared and class-agnostic, so a class's head is the 153 dynamic parameters it
generates; the "new head" of an added class is a learnable 153-vector ``new_heads[k]``, zero at creation,
added to the generated parameters of that class only. Training the new class then means optimising only
``new_heads`` (``new_class_parameters()``): the backbone, the controller and every existing class's output
stay bit-identical.

Backbones (``backbone=``):

* ``swinunetr``: MONAI SwinUNETR, feature_size 48 (deep: 768 ch at 1/32, feat: 48 ch). Its patch-merging
  layer gathers the 2x2x2 neighbours in the order ``swin_merging`` names: ``"release"`` (default) is the
  order of the Swin UNETR the original repository vendored (``model/SwinUNETR.py``, MONAI 0.9.0's code,
  which lists offsets (0,1,0) and (0,0,1) twice and never gathers (1,1,0) and (0,1,1)), the order the
  released weights were trained with (:data:`RELEASE_MERGE_OFFSETS`); ``"monai"`` is MONAI 1.x's
  ``"merging"`` (the fixed order, :data:`MONAI_MERGE_OFFSETS`), what checkpoints of this workbench saved
  before the option existed were trained with.
* ``unet3d``: the Models Genesis UNet3D of the original U-Net checkpoint (deep: 512 ch at 1/8, feat: 64 ch),
  with the original's batch-statistics BatchNorm.
* ``small_unet``: a small MONAI BasicUNet for CPU work (deep: 128 ch at 1/16, feat: 16 ch).

Parameter names follow the original ``Universal_model`` so release state dicts load strictly
(``checkpoint.load_release_checkpoint``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BACKBONES = ("swinunetr", "unet3d", "small_unet")
HEAD_CHANNELS = 8
WEIGHT_NUMS = (HEAD_CHANNELS * HEAD_CHANNELS, HEAD_CHANNELS * HEAD_CHANNELS, HEAD_CHANNELS)
BIAS_NUMS = (HEAD_CHANNELS, HEAD_CHANNELS, 1)
N_DYNAMIC_PARAMS = sum(WEIGHT_NUMS) + sum(BIAS_NUMS)  # 153
TEXT_DIM = 512
# Voxels per dynamic-head pass. On a CPU the [8C, chunk] intermediates must stay in the L2 cache: 2048
# voxels run the 32 heads of a 96^3 window 4x faster than 2^18 (benchmarks/bench_model.py). A GPU wants
# few, large launches.
HEAD_CHUNK_CPU = 2048
HEAD_CHUNK_GPU = 1 << 18
SMALL_UNET_FEATURES = (8, 16, 32, 64, 128, 16)


#: The 2x2x2 neighbour offsets (i, j, k) in the order the release's patch merging concatenates them
#: (the original repository's vendored ``PatchMerging``: x4..x6 read (1,0,1), (0,1,0), (0,0,1)).
RELEASE_MERGE_OFFSETS = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1),
)  # fmt: skip
#: MONAI 1.x ``PatchMerging`` ("merging"): every neighbour once.
MONAI_MERGE_OFFSETS = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1),
)  # fmt: skip
SWIN_MERGINGS = {"release": RELEASE_MERGE_OFFSETS, "monai": MONAI_MERGE_OFFSETS}


def merge_neighbours(x: torch.Tensor, offsets: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Concatenate the 2x2x2 neighbours of a channels-last volume in the given order.

    Args:
        x: [B, D, H, W, C] (odd sides are zero-padded at the end first).
        offsets: 8 (i, j, k) offsets in 0/1, in concatenation order.

    Returns:
        [B, ceil(D/2), ceil(H/2), ceil(W/2), 8C].
    """
    d, h, w = x.shape[1:4]
    if d % 2 or h % 2 or w % 2:
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
    return torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in offsets], -1)


class OrderedPatchMerging(nn.Module):
    """Swin UNETR's patch merging (LayerNorm 8C, Linear 8C -> 2C without bias) with a chosen neighbour
    order; parameter names as MONAI's (``norm``, ``reduction``).

    Args:
        dim: input channels C.
        offsets: the neighbour order (:data:`RELEASE_MERGE_OFFSETS` or :data:`MONAI_MERGE_OFFSETS`).
        norm_layer: normalisation class (LayerNorm).
        spatial_dims: 3 (MONAI's signature).
    """

    def __init__(
        self,
        dim: int,
        offsets: Sequence[tuple[int, int, int]] = RELEASE_MERGE_OFFSETS,
        norm_layer: type[nn.LayerNorm] = nn.LayerNorm,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("OrderedPatchMerging is 3D only")
        self.offsets: tuple[tuple[int, int, int], ...] = tuple(
            (int(i), int(j), int(k)) for i, j, k in offsets
        )
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W, C] -> [B, D/2, H/2, W/2, 2C]."""
        return self.reduction(self.norm(merge_neighbours(x, self.offsets)))


class BatchStatsNorm3d(_BatchNorm):
    """BatchNorm that normalises with the batch's own statistics in training, and with each item's own
    statistics in evaluation.

    The original U-Net (Models Genesis ``ContBatchNorm3d``) always used batch statistics, so its released
    weights expect that; the original inference runs one window per forward (``sw_batch_size=1``), so in
    evaluation each item is normalised by its own statistics (instance statistics with the BN's affine),
    which is what a batch of one gives, also when several windows share one forward. Running statistics
    are kept in the state dict for compatibility and updated only in training mode (the original also
    updated them in eval; they are never read either way).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        track = self.training
        if not track:
            return F.instance_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            True,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class _ConvBnRelu(nn.Module):
    """3x3x3 conv + batch-statistics BN + ReLU (names ``conv1``/``bn1`` as in the release)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1)
        self.bn1 = BatchStatsNorm3d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)), inplace=True)


def _two_convs(in_ch: int, depth: int, up: bool) -> nn.Sequential:
    # Channel plan of Models Genesis: down path 32*2^d then doubled; up path 32*2^(d+1) twice.
    if up:
        mid = out = 32 * 2 ** (depth + 1)
    else:
        mid, out = 32 * 2**depth, 32 * 2**depth * 2
    return nn.Sequential(_ConvBnRelu(in_ch, mid), _ConvBnRelu(mid, out))


class _Down(nn.Module):
    def __init__(self, in_ch: int, depth: int) -> None:
        super().__init__()
        self.ops = _two_convs(in_ch, depth, up=False)
        self.pool = depth < 3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return (F.max_pool3d(skip, 2) if self.pool else skip), skip


class _Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2)
        self.ops = _two_convs(in_ch + out_ch // 2, depth, up=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat([self.up_conv(x), skip], dim=1))


class UNet3DBackbone(nn.Module):
    """The Models Genesis UNet3D of the released U-Net Universal Model (19.08 M parameters), without its
    output layer. Input sides must be divisible by 8.

    Returns ``(deep [B, 512, X/8, Y/8, Z/8], feat [B, 64, X, Y, Z])``.
    """

    deep_channels = 512
    out_channels = 64

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.down_tr64 = _Down(in_channels, 0)
        self.down_tr128 = _Down(64, 1)
        self.down_tr256 = _Down(128, 2)
        self.down_tr512 = _Down(256, 3)
        self.up_tr256 = _Up(512, 512, 2)
        self.up_tr128 = _Up(256, 256, 1)
        self.up_tr64 = _Up(128, 128, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x64, skip64 = self.down_tr64(x)
        x128, skip128 = self.down_tr128(x64)
        x256, skip256 = self.down_tr256(x128)
        deep, _ = self.down_tr512(x256)
        up = self.up_tr256(deep, skip256)
        up = self.up_tr128(up, skip128)
        return deep, self.up_tr64(up, skip64)


def _swin_backbone(in_channels: int, merging: str = "release") -> nn.Module:
    from functools import partial

    from monai.networks.nets import SwinUNETR

    if merging not in SWIN_MERGINGS:
        raise ValueError(f"unknown swin_merging {merging!r}; known: {', '.join(SWIN_MERGINGS)}")
    downsample = partial(OrderedPatchMerging, offsets=SWIN_MERGINGS[merging])

    class SwinUNETRBackbone(SwinUNETR):
        """MONAI SwinUNETR (feature_size 48) without its output block; input sides divisible by 32.

        Returns ``(deep [B, 768, X/32, Y/32, Z/32], feat [B, 48, X, Y, Z])``.
        """

        deep_channels = 768
        out_channels = 48

        def __init__(self) -> None:
            super().__init__(
                in_channels=in_channels,
                out_channels=1,
                feature_size=48,
                use_checkpoint=False,
                downsample=downsample,  # type: ignore[arg-type]
            )
            del self.out  # the dynamic heads replace it; the release has no such parameters

        def forward(self, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            hidden = self.swinViT(x_in, self.normalize)
            enc0 = self.encoder1(x_in)
            enc1 = self.encoder2(hidden[0])
            enc2 = self.encoder3(hidden[1])
            enc3 = self.encoder4(hidden[2])
            deep = self.encoder10(hidden[4])
            dec = self.decoder5(deep, hidden[3])
            dec = self.decoder4(dec, enc3)
            dec = self.decoder3(dec, enc2)
            dec = self.decoder2(dec, enc1)
            return deep, self.decoder1(dec, enc0)

    return SwinUNETRBackbone()


class HaloSplitConv3d(nn.Conv3d):
    """A 3x3x3, stride-1, padding-1 ``Conv3d`` that runs a batch of one on the CPU as a batch of two.

    PyTorch sends a batch-1 float conv whose ``C * X * Y`` is at most 20480 (every conv of the small UNet
    on 32^3 patches) to its slow native kernel; a batch of two goes to oneDNN, 3-7x faster per item, the
    backward too. So a batch-1 input is zero-padded by one voxel along X, cut into two halves that overlap
    by the 2-voxel halo and stacked as a batch of two, convolved without X padding and joined again: the
    same result (up to float rounding) in less time. Other inputs run the plain conv. Same parameters and
    state dict as ``nn.Conv3d`` (:func:`split_batch_one_convs` swaps the class in place).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[0] != 1 or x.is_cuda or x.shape[2] < 4 or x.shape[2] % 2:
            return super().forward(x)
        half = x.shape[2] // 2
        xp = F.pad(x, (0, 0, 0, 0, 1, 1))
        pair = torch.cat([xp[:, :, : half + 2], xp[:, :, half:]], dim=0)
        out = F.conv3d(pair, self.weight, self.bias, 1, (0, 1, 1))
        return torch.cat([out[:1], out[1:]], dim=2)


def split_batch_one_convs(module: nn.Module) -> int:
    """Turn every plain 3x3x3 / stride 1 / padding 1 ``Conv3d`` under ``module`` into a
    :class:`HaloSplitConv3d` (in place, parameters kept); returns how many."""
    n = 0
    for m in module.modules():
        if (
            type(m) is nn.Conv3d
            and tuple(m.kernel_size) == (3, 3, 3)
            and tuple(m.stride) == (1, 1, 1)
            and m.padding == (1, 1, 1)
            and tuple(m.dilation) == (1, 1, 1)
            and m.groups == 1
            and m.padding_mode == "zeros"
        ):
            m.__class__ = HaloSplitConv3d
            n += 1
    return n


def _small_unet_backbone(in_channels: int, features: Sequence[int]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    class SmallUNetBackbone(BasicUNet):
        """MONAI BasicUNet with few channels, without its output conv; input sides divisible by 16.

        Returns ``(deep [B, features[4], X/16, ...], feat [B, features[5], X, Y, Z])``.
        """

        def __init__(self) -> None:
            super().__init__(
                spatial_dims=3, in_channels=in_channels, out_channels=1, features=tuple(features)
            )
            del self.final_conv
            self.deep_channels = int(features[4])
            self.out_channels = int(features[5])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            x0 = self.conv_0(x)
            x1 = self.down_1(x0)
            x2 = self.down_2(x1)
            x3 = self.down_3(x2)
            x4 = self.down_4(x3)
            u = self.upcat_4(x4, x3)
            u = self.upcat_3(u, x2)
            u = self.upcat_2(u, x1)
            return x4, self.upcat_1(u, x0)

    backbone = SmallUNetBackbone()
    split_batch_one_convs(backbone)
    return backbone


def build_backbone(
    name: str,
    in_channels: int = 1,
    small_features: Sequence[int] = SMALL_UNET_FEATURES,
    swin_merging: str = "release",
) -> nn.Module:
    """Build a backbone by name; it returns ``(deep, feat)`` and has ``deep_channels``/``out_channels``.

    ``swin_merging`` ('release' / 'monai') is the Swin UNETR patch-merging order (module docstring)."""
    if name == "swinunetr":
        return _swin_backbone(in_channels, swin_merging)
    if name in ("unet3d", "unet"):
        return UNet3DBackbone(in_channels)
    if name == "small_unet":
        return _small_unet_backbone(in_channels, small_features)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")


#: What each ``freeze`` setting of fine-tuning keeps fixed, by parameter name: ``none`` trains everything,
#: ``backbone`` keeps the backbone (the image encoder) and trains the controller, the text projection,
#: the GAP and pre-classifier convs and any added heads; ``old_classes`` trains only the added classes'
#: heads (``new_heads``), so every existing class's output stays bit-identical.
FROZEN_BY: dict[str, Callable[[str], bool]] = {
    "none": lambda name: False,
    "backbone": lambda name: name.startswith("backbone."),
    "old_classes": lambda name: not name.startswith("new_heads."),
}


def trainable_parameters(model: nn.Module, freeze: str) -> list[nn.Parameter]:
    """Freeze what ``freeze`` names (``requires_grad`` False) and return the parameters left to train.

    Args:
        model: a ``UniversalModel``.
        freeze: a key of :data:`FROZEN_BY`.

    Returns:
        The trainable parameters, in ``named_parameters`` order.

    Raises:
        ValueError: an unknown setting, or one that leaves nothing to train (``old_classes`` without an
            added class).
    """
    if freeze not in FROZEN_BY:
        raise ValueError(f"unknown freeze setting {freeze!r}; use one of {', '.join(FROZEN_BY)}")
    frozen = FROZEN_BY[freeze]
    keep = []
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen(name))
        if not frozen(name):
            keep.append(param)
    if not keep:
        raise ValueError(f"freeze {freeze!r} leaves nothing to train (no added class)")
    return keep


def _as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().clone()
    return torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: read-only arrays are fine


def _groups(channels: int) -> int:
    return 16 if channels % 16 == 0 else math.gcd(channels, 8)


class UniversalModel(nn.Module):
    """Backbone + text-driven dynamic heads; ``forward`` returns logits [B, n_classes, X, Y, Z].

    Args:
        backbone: 'swinunetr', 'unet3d' (alias 'unet') or 'small_unet'.
        embeddings: text embeddings [n_classes, 512] (numpy or torch); default random (as the original
            before its buffer is filled from a checkpoint), then ``n_classes`` rows.
        n_classes: number of classes when ``embeddings`` is None.
        in_channels: image channels (1 for CT).
        small_features: BasicUNet feature sizes for 'small_unet' (6 ints).
        n_added_classes: how many of the last rows are added classes with a learnable head offset
            (``new_heads``); set by ``add_class`` and restored from checkpoints.
        swin_merging: Swin UNETR patch-merging order, 'release' (the released weights') or 'monai'
            (MONAI 1.x's; checkpoints saved before this option); ignored by the other backbones.
    """

    organ_embedding: torch.Tensor

    def __init__(
        self,
        backbone: str = "swinunetr",
        embeddings: np.ndarray | torch.Tensor | None = None,
        n_classes: int = 32,
        in_channels: int = 1,
        small_features: Sequence[int] = SMALL_UNET_FEATURES,
        n_added_classes: int = 0,
        swin_merging: str = "release",
    ) -> None:
        super().__init__()
        self.backbone_name = "unet3d" if backbone == "unet" else backbone
        self.in_channels = in_channels
        self.small_features = tuple(int(f) for f in small_features)
        self.swin_merging = swin_merging
        self.backbone = build_backbone(self.backbone_name, in_channels, self.small_features, swin_merging)
        deep_ch: int = self.backbone.deep_channels  # type: ignore[assignment]
        out_ch: int = self.backbone.out_channels  # type: ignore[assignment]
        self.precls_conv = nn.Sequential(
            nn.GroupNorm(_groups(out_ch), out_ch), nn.ReLU(inplace=True), nn.Conv3d(out_ch, HEAD_CHANNELS, 1)
        )
        self.GAP = nn.Sequential(
            nn.GroupNorm(_groups(deep_ch), deep_ch),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d((1, 1, 1)),
            nn.Conv3d(deep_ch, 256, kernel_size=1),
        )
        self.controller = nn.Conv3d(2 * 256, N_DYNAMIC_PARAMS, kernel_size=1)
        emb = torch.randn(n_classes, TEXT_DIM) if embeddings is None else _as_float_tensor(embeddings)
        if emb.ndim != 2 or emb.shape[1] != TEXT_DIM:
            raise ValueError(f"embeddings must be [n_classes, {TEXT_DIM}], got {tuple(emb.shape)}")
        self.register_buffer("organ_embedding", emb.float().clone())
        self.text_to_vision = nn.Linear(TEXT_DIM, 256)
        self.new_heads = nn.ParameterList(
            [nn.Parameter(torch.zeros(N_DYNAMIC_PARAMS)) for _ in range(n_added_classes)]
        )

    @property
    def n_classes(self) -> int:
        return int(self.organ_embedding.shape[0])

    @property
    def config(self) -> dict[str, Any]:
        """What rebuilds this architecture: ``UniversalModel(**config)`` (embeddings come separately)."""
        return {
            "backbone": self.backbone_name,
            "n_classes": self.n_classes,
            "in_channels": self.in_channels,
            "small_features": list(self.small_features),
            "n_added_classes": len(self.new_heads),
            "swin_merging": self.swin_merging,
        }

    def set_embeddings(self, embeddings: np.ndarray | torch.Tensor) -> None:
        """Replace the text embeddings [n_classes, 512] (same number of classes)."""
        emb = _as_float_tensor(embeddings)
        if tuple(emb.shape) != tuple(self.organ_embedding.shape):
            raise ValueError(f"embeddings {tuple(emb.shape)} != {tuple(self.organ_embedding.shape)}")
        self.organ_embedding.copy_(emb.to(self.organ_embedding.device))

    def add_class(self, embedding: np.ndarray | torch.Tensor) -> int:
        """Append a class: its text embedding [512] and a new zero head offset; return its channel.

        Existing classes' outputs are unchanged bit-for-bit; train the new class with
        ``new_class_parameters()`` only (see the module docstring).
        """
        row = _as_float_tensor(embedding).reshape(1, TEXT_DIM)
        old: torch.Tensor = self.organ_embedding
        self.organ_embedding = torch.cat([old, row.to(old.device)], dim=0)
        dev = self.controller.weight.device
        self.new_heads.append(nn.Parameter(torch.zeros(N_DYNAMIC_PARAMS, device=dev)))
        return self.n_classes - 1

    def new_class_parameters(self) -> list[nn.Parameter]:
        """The learnable head offsets of the added classes (empty when none was added)."""
        return list(self.new_heads)

    def class_params(self, image_feature: torch.Tensor) -> torch.Tensor:
        """Dynamic head parameters [n_classes, 153] for one item's 256-d image feature."""
        task = F.relu(self.text_to_vision(self.organ_embedding))  # [C, 256]
        cond = torch.cat([image_feature.reshape(1, -1).expand(task.shape[0], -1), task], dim=1)
        params = F.linear(cond, self.controller.weight.flatten(1), self.controller.bias)
        if len(self.new_heads):
            n_old = self.n_classes - len(self.new_heads)
            added = params[n_old:] + torch.stack(list(self.new_heads))
            params = torch.cat([params[:n_old], added], dim=0)
        return params

    @staticmethod
    def dynamic_heads(
        head_input: torch.Tensor, params: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """Run every class's head on one item's 8-channel input.

        Args:
            head_input: [1, 8, X, Y, Z].
            params: [C, 153] in the order w1(64), w2(64), w3(8), b1(8), b2(8), b3(1).
            chunk: voxels per pass; bounds the [8C, chunk] intermediates' memory (default
                ``HEAD_CHUNK_CPU`` for inference on a CPU, ``HEAD_CHUNK_GPU`` on a GPU or in training).

        Returns:
            logits [1, C, X, Y, Z].
        """
        if chunk is None:
            # Under autograd every chunk's intermediates are kept for the backward pass anyway, and many
            # small ops cost more than they save: small chunks only for inference on a CPU.
            building_graph = torch.is_grad_enabled() and (head_input.requires_grad or params.requires_grad)
            cpu_inference = head_input.device.type == "cpu" and not building_graph
            chunk = HEAD_CHUNK_CPU if cpu_inference else HEAD_CHUNK_GPU
        c, k = params.shape[0], HEAD_CHANNELS
        w1, w2, w3, b1, b2, b3 = torch.split(params, [*WEIGHT_NUMS, *BIAS_NUMS], dim=1)
        w1, b1 = w1.reshape(c * k, k), b1.reshape(c * k, 1)
        w2, b2 = w2.reshape(c, k, k), b2.reshape(c, k, 1)
        w3, b3 = w3.reshape(c, 1, k), b3.reshape(c, 1, 1)
        flat = head_input.reshape(k, -1)
        outs = []
        for start in range(0, flat.shape[1], chunk):
            h = torch.addmm(b1, w1, flat[:, start : start + chunk]).relu_()  # [C*8, n]: layer 1, all classes
            h = torch.baddbmm(b2, w2, h.view(c, k, -1)).relu_()  # [C, 8, n]: layer 2, per class
            outs.append(torch.baddbmm(b3, w3, h).view(c, -1))  # [C, n]: layer 3, per class
        return torch.cat(outs, dim=1).view(1, c, *head_input.shape[2:])

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        """Logits [B, n_classes, X, Y, Z] for images [B, in_channels, X, Y, Z] (sides divisible by the
        backbone's stride: 32 swinunetr, 8 unet3d, 16 small_unet); with ``channels`` only those classes'
        heads run and the logits are [B, len(channels), X, Y, Z] in that order."""
        deep, feat = self.backbone(x)
        image_features = self.GAP(deep).flatten(1)  # [B, 256]
        head_inputs = self.precls_conv(feat)  # [B, 8, X, Y, Z]
        pick = slice(None) if channels is None else list(channels)
        logits = [
            self.dynamic_heads(head_inputs[i : i + 1], self.class_params(image_features[i])[pick])
            for i in range(x.shape[0])
        ]
        return torch.cat(logits, dim=0)
