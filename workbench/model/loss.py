"""The partial-label loss: BCE + Dice per class, only on the classes a scan's source annotates.

A public dataset annotates some classes and says nothing about the rest (``not_annotated`` in the catalog).
Treating those as background would teach the model to erase organs that are there, so their logits take no
part in the loss at all: they receive exactly zero gradient. Classes that are annotated but absent (e.g. no
tumour) do count, with an all-zero target.

Per annotated (item b, class c) pair, with p = sigmoid(logit) and t the 0/1 target over the voxels:

* ``bce[b, c]  = mean_v BCEWithLogits(logit, t)``
* ``dice[b, c] = 1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``

and ``loss = bce_weight * mean(bce) + dice_weight * mean(dice)`` over the annotated pairs. With no annotated
pair the loss is 0 (and every gradient is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_label_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    annotated: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """BCE + Dice on annotated classes only.

    Args:
        logits: [B, C, X, Y, Z] raw model outputs.
        target: [B, C, X, Y, Z] 0/1 masks (any numeric dtype).
        annotated: [B, C] 0/1 (or bool): 1 where item b's source annotates class c.
        bce_weight: weight of the mean BCE term.
        dice_weight: weight of the mean Dice-loss term.
        smooth: Dice smoothing added to numerator and denominator.

    Returns:
        A scalar tensor; unannotated channels get exactly zero gradient.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    b, c = logits.shape[:2]
    if tuple(annotated.shape) != (b, c):
        raise ValueError(f"annotated must be [{b}, {c}], got {tuple(annotated.shape)}")
    keep = annotated.reshape(-1).to(torch.bool).to(logits.device)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    # Boolean row selection: the backward of indexing scatters gradient only into the selected rows,
    # so unannotated channels get an exact 0 (not 0 * something that could be NaN).
    z = logits.reshape(b * c, -1)[keep]
    t = target.reshape(b * c, -1)[keep].to(z.dtype)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").mean(dim=1)
    p = torch.sigmoid(z)
    dice = 1.0 - (2.0 * (p * t).sum(dim=1) + smooth) / (p.sum(dim=1) + t.sum(dim=1) + smooth)
    return bce_weight * bce.mean() + dice_weight * dice.mean()


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per channel of two 0/1 masks [..., C, X, Y, Z] -> [..., C]; NaN where both are empty."""
    dims = tuple(range(pred.ndim - 3, pred.ndim))
    p, t = pred.to(torch.float64), target.to(torch.float64)
    inter = (p * t).sum(dim=dims)
    denom = p.sum(dim=dims) + t.sum(dim=dims)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-12), torch.full_like(denom, float("nan")))
