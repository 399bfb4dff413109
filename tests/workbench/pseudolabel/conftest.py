"""Fixtures of the pseudo-label tests: a "coded" phantom CT, an intensity-window model, a LiTS workspace
and a random small Universal Model checkpoint.

The coded phantom has air outside the body, -100 HU inside, one HU code per organ (spleen 240, both
kidneys 140, liver 40). The intensity-window "model" is a torch module that calls a voxel a class when its
HU lies in the class's window. That model is equivariant to flips and axis permutations, so a prediction
that lands on the wrong side or the wrong voxels after the round trip through the inference grid can only
be a geometry bug; and it calls both kidneys "kidney_left" AND "kidney_right", so only the post-processing
can tell them apart. A randomly initialised small Universal Model checkpoint (``random_checkpoint``, in
``tests/workbench/conftest.py``) covers the checkpoint path, the CLI and resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonize.phantoms import make_phantom, write_native
from harmonize.phantoms.native import reorient
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.pseudolabel import Segmenter

torch.set_num_threads(2)

#: Class -> HU code of the coded phantom.
CODE = {"spleen": 240.0, "kidney_right": 140.0, "kidney_left": 140.0, "liver": 40.0}
SHAPE, SPACING = (96, 96, 64), (3.0, 3.0, 3.0)


class WindowNet(torch.nn.Module):
    """Logits positive where the HU lies within 30 HU of the class's code."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.codes = [CODE[n] for n in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x * 425.0 - 175.0
        return torch.cat([0.5 * (30.0 - (hu - c).abs()) for c in self.codes], dim=1)


def _coded_image(phantom) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The phantom's CT replaced by its organ codes (RAS order, float32)."""
    image = np.where(phantom.ct.array > -500, -100.0, -1000.0).astype(np.float32)
    for name, code in CODE.items():
        if name in phantom.masks:
            image[phantom.masks[name]] = code
    return image


def _window_segmenter(names: tuple[str, ...] = tuple(CODE), sha: str = "window-model") -> Segmenter:
    return Segmenter(WindowNet(names), names, (6.0, 6.0, 6.0), (32, 32, 32), sha, "none", "none", "window")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def _ingest(tmp_path: Path, source: str, seeds: tuple[int, ...]) -> tuple[Workspace, dict[str, object]]:
    protocol = get_protocol(source)
    truth = {}
    for seed in seeds:
        phantom = make_phantom(seed, shape=SHAPE, spacing=SPACING)
        case = write_native(
            phantom, protocol, tmp_path / "data" / source, f"case{seed:02d}", image=_coded_image(phantom)
        )
        truth[f"{source}:case{seed:02d}"] = (phantom, case)
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, source, tmp_path / "data" / source, progress=False)
    assert not summary.skipped, summary.skipped
    return ws, truth


@pytest.fixture()
def coded_image() -> Callable[..., np.ndarray]:
    """``coded_image(phantom)``: the phantom's CT replaced by its organ codes."""
    return _coded_image


@pytest.fixture()
def window_segmenter() -> Callable[..., Segmenter]:
    """``window_segmenter(names=..., sha=...)``: the intensity-window model as a :class:`Segmenter`."""
    return _window_segmenter


@pytest.fixture()
def dice() -> Callable[[np.ndarray, np.ndarray], float]:
    """``dice(a, b)`` of two bool masks."""
    return _dice


@pytest.fixture()
def native_truth() -> Callable[..., np.ndarray]:
    """``native_truth(phantom, case, name)``: a phantom's class mask in the written file's orientation."""

    def truth(phantom, case, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
        return reorient(phantom.masks[name], phantom.ct.affine, case.axcodes)[0]

    return truth


@pytest.fixture()
def lits_ws(tmp_path: Path) -> tuple[Workspace, dict[str, object]]:
    """A workspace with two coded LiTS phantoms ingested, and scan id -> (phantom, written case)."""
    return _ingest(tmp_path, "lits", (0, 1))
