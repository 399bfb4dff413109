"""Floating-point operations of one sliding window: the paper's efficiency axis (FLOPs per 96^3 window).

Counted with torch's own counter (``torch.utils.flop_counter.FlopCounterMode``) over one forward pass of a
[1, C, X, Y, Z] window, on the ``meta`` device (shapes only, no arithmetic, no memory: a Swin UNETR at 96^3
is counted in well under a second); a model that cannot run on ``meta`` is counted on the CPU instead.
torch counts the multiply-adds of convolutions, transposed convolutions, matrix products and attention as
2 FLOPs each (a Conv3d: ``2 * Cin * Cout * k^3`` per output voxel, bias not counted) and leaves out
element-wise work (normalisation, activations, additions), as the papers' FLOP tables do.

Example:
    >>> import torch
    >>> window_flops(torch.nn.Conv3d(1, 2, 3, padding=1), (4, 4, 4))
    6912
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

#: The paper's window (voxels).
PAPER_WINDOW = (96, 96, 96)


def _count(module: torch.nn.Module, window: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(window)
    return int(counter.get_total_flops())


def window_flops(module: torch.nn.Module, window: Sequence[int] = PAPER_WINDOW, in_channels: int = 1) -> int:
    """FLOPs of one forward pass of ``module`` over one window.

    Args:
        module: a network taking [B, in_channels, X, Y, Z] (e.g. ``UniversalModel``); not modified.
        window: (X, Y, Z) voxels of the window (default the paper's 96^3).
        in_channels: input channels (CT: 1).

    Returns:
        FLOPs (multiply-add = 2) of a batch of one window, as torch's counter counts them.

    Raises:
        ValueError: a window that is not three positive sizes.
    """
    shape = tuple(int(s) for s in window)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a window is three positive voxel sizes, got {tuple(window)}")
    try:
        meta = copy.deepcopy(module).to("meta").eval()
        return _count(meta, torch.zeros((1, in_channels, *shape), device="meta"))
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count a real pass
        cpu = copy.deepcopy(module).to("cpu").eval()
        return _count(cpu, torch.zeros((1, in_channels, *shape)))


def gflops(flops: float) -> float:
    """FLOPs in GFLOPs (10^9)."""
    return float(flops) / 1e9
