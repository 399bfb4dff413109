"""Tests for workbench.model.loss: partial labels get no gradient; values by hand."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.model.loss import dice_score, partial_label_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "annotated", [[[1, 0, 1], [0, 1, 0]], [[1, 1, 1], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]]]
)
def test_unannotated_channels_get_exactly_zero_gradient(seed: int, annotated) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g, requires_grad=True)
    target = (torch.rand(2, 3, 4, 4, 4, generator=g) > 0.5).float()
    mask = torch.tensor(annotated, dtype=torch.float32)
    partial_label_loss(logits, target, mask).backward()
    grad = logits.grad
    assert grad is not None
    for b in range(2):
        for c in range(3):
            if mask[b, c] == 0:
                assert torch.equal(grad[b, c], torch.zeros_like(grad[b, c]))
            else:
                assert grad[b, c].abs().sum() > 0


def test_unannotated_channels_ignore_even_nonfinite_logits() -> None:
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[0, 1] = float("nan")
    logits.requires_grad_(True)
    loss = partial_label_loss(logits, torch.ones(1, 2, 2, 2, 2), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert math.isfinite(float(loss)) and torch.equal(logits.grad[0, 1], torch.zeros(2, 2, 2))


def test_hand_computed_value() -> None:
    # One item, two classes; class 1 unannotated. Class 0 has 2 voxels: logits 0 and ln 3, target 1 and 0.
    logits = torch.tensor([0.0, math.log(3.0), 5.0, -5.0]).reshape(1, 2, 2, 1, 1)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1, 1)
    annotated = torch.tensor([[1, 0]])
    # p = (0.5, 0.75). BCE = mean(-ln 0.5, -ln 0.25) = (ln 2 + ln 4) / 2 = 1.5 ln 2.
    bce = 1.5 * math.log(2.0)
    smooth = 1e-5
    dice = 1 - (2 * 0.5 + smooth) / (0.5 + 0.75 + 1 + smooth)
    got = partial_label_loss(logits, target, annotated, smooth=smooth)
    assert float(got) == pytest.approx(bce + dice, rel=1e-6)
    got_weighted = partial_label_loss(
        logits, target, annotated, bce_weight=2.0, dice_weight=0.0, smooth=smooth
    )
    assert float(got_weighted) == pytest.approx(2 * bce, rel=1e-6)


def test_mean_over_annotated_pairs() -> None:
    logits = torch.zeros(2, 1, 1, 1, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(2, 1, 1, 1, 2)
    smooth = 1e-5
    # item 0: p = 0.5, t = 1 -> dice loss 1 - (2*1 + s)/(1 + 2 + s); item 1: t = 0 -> 1 - s/(1 + s)
    d0 = 1 - (2.0 + smooth) / (3.0 + smooth)
    d1 = 1 - smooth / (1.0 + smooth)
    expected = math.log(2.0) + (d0 + d1) / 2
    got = partial_label_loss(logits, target, torch.ones(2, 1), smooth=smooth)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_nothing_annotated_gives_zero_loss_and_zero_gradient() -> None:
    logits = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    loss = partial_label_loss(logits, torch.ones(1, 3, 2, 2, 2), torch.zeros(1, 3))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize(("shape", "mask"), [((1, 2, 2, 2, 2), (1, 3)), ((1, 2, 2, 2, 2), (2, 2))])
def test_shape_errors(shape, mask) -> None:
    with pytest.raises(ValueError, match="annotated"):
        partial_label_loss(torch.zeros(shape), torch.zeros(shape), torch.ones(mask))


def test_dice_score() -> None:
    pred = torch.zeros(1, 3, 2, 2, 2, dtype=torch.bool)
    true = torch.zeros(1, 3, 2, 2, 2, dtype=torch.bool)
    pred[0, 0, 0, 0, :] = True  # 2 voxels
    true[0, 0, 0, :, 0] = True  # 2 voxels, 1 shared
    pred[0, 1] = True
    true[0, 1] = True
    d = dice_score(pred, true)
    assert d[0, 0] == pytest.approx(0.5) and d[0, 1] == 1.0 and math.isnan(float(d[0, 2]))
