"""FLOPs per window (workbench.model.flops) against hand counts: a Conv3d costs 2 * Cin * Cout * k^3 per
output voxel, a Linear 2 * in * out per row; activations, norms and biases cost nothing in torch's count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.model.flops import PAPER_WINDOW, gflops, window_flops
from workbench.model.network import UniversalModel


class _Small(nn.Module):
    """conv 3^3 (1 -> 4, same size), ReLU, conv 3^3 stride 2 (4 -> 8), GroupNorm, conv 1^3 (8 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.c = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.norm(self.b(torch.relu(self.a(x)))))


def _hand_count(n: int) -> int:
    full, half = n**3, (n // 2) ** 3
    return 2 * 1 * 4 * 27 * full + 2 * 4 * 8 * 27 * half + 2 * 8 * 2 * 1 * half


@pytest.mark.parametrize("n", [8, 16, 96])
def test_a_small_conv_net_costs_its_hand_count(n: int) -> None:
    assert window_flops(_Small(), (n, n, n)) == _hand_count(n)


def test_a_linear_layer_costs_two_flops_per_multiply_add() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(1 * 4 * 4 * 4, 10))
    assert window_flops(net, (4, 4, 4)) == 2 * 64 * 10


def test_the_count_grows_with_the_window_volume() -> None:
    # a same-padded conv costs the same per output voxel: twice the edge, eight times the FLOPs
    conv = nn.Conv3d(1, 3, 3, padding=1)
    assert window_flops(conv, (16, 16, 16)) == 8 * window_flops(conv, (8, 8, 8)) == 2 * 3 * 27 * 16**3


def test_the_model_is_left_as_it_was() -> None:
    net = _Small()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    window_flops(net, (8, 8, 8))
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_universal_model_is_counted_at_the_papers_window() -> None:
    torch.manual_seed(0)
    model = UniversalModel("small_unet", embeddings=torch.randn(3, 512), small_features=(4, 4, 8, 8, 16, 4))
    flops = window_flops(model, PAPER_WINDOW)
    # the first conv alone (1 -> 4 channels, 3^3, same size) costs 2 * 4 * 27 * 96^3
    assert flops > 2 * 4 * 27 * 96**3
    assert gflops(flops) == pytest.approx(flops / 1e9)


@pytest.mark.parametrize("window", [(0, 8, 8), (8, 8)])
def test_a_bad_window_is_refused(window: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="three positive"):
        window_flops(_Small(), window)
