"""Inference: a prediction returns to the original grid in any orientation (the coded phantom and the
intensity-window model of conftest.py: only a geometry bug can move it)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from harmonize.geometry import largest_component
from harmonize.phantoms import make_phantom
from harmonize.phantoms.native import reorient
from harmonize.volume import Volume
from workbench.pseudolabel import Segmenter, inference

SHAPE, SPACING = (96, 96, 64), (3.0, 3.0, 3.0)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "IPL", "LAS", "PIR"])
@pytest.mark.parametrize(("spacing", "floor"), [(3.0, 0.97), (4.5, 0.8)])
def test_prediction_returns_to_the_original_grid_in_any_orientation(
    codes: str,
    spacing: float,
    floor: float,
    coded_image: Callable[..., np.ndarray],
    window_segmenter: Callable[..., Segmenter],
    dice: Callable[[np.ndarray, np.ndarray], float],
) -> None:
    phantom = make_phantom(3, shape=SHAPE, spacing=SPACING)
    array, affine = reorient(coded_image(phantom), phantom.ct.affine, tuple(codes))
    volume = Volume(array, affine)
    seg = window_segmenter(("spleen",))
    pred = inference.predict_lowres(seg, volume, spacing_mm=(spacing,) * 3, tta=False)
    assert pred.probs.dtype == np.float16 and pred.probs.shape[0] == 1
    mask = inference.to_original_grid(pred, ("spleen",), affine, volume.shape)["spleen"]
    truth = reorient(phantom.masks["spleen"], phantom.ct.affine, tuple(codes))[0]
    kept = largest_component(mask.full())[0]
    assert dice(kept, truth) > floor
    # The same world position whatever the orientation: the centroid in RAS mm matches the truth's.
    got = volume.world(np.argwhere(kept).mean(axis=0)[None])[0]
    want = volume.world(np.argwhere(truth).mean(axis=0)[None])[0]
    assert np.abs(got - want).max() < spacing / 2


# -- the sliding window of the GPU path (#12) -----------------------------------------------------------


def _small_model_segmenter(n_classes: int = 3) -> Segmenter:
    import torch

    from workbench.model.network import UniversalModel

    torch.manual_seed(0)
    model = UniversalModel("small_unet", n_classes=n_classes, small_features=(4, 4, 8, 8, 16, 4)).eval()
    names = ("spleen", "liver", "kidney_left")[:n_classes]
    return Segmenter(model, names, (3.0, 3.0, 3.0), (32, 32, 32), "small")


@pytest.mark.parametrize(
    ("shape", "sw_batch_size"), [((70, 45, 28), 1), ((70, 45, 28), 3), ((33, 64, 40), 2)]
)
def test_slab_blending_equals_monai_sliding_window_inference(
    shape: tuple[int, ...], sw_batch_size: int
) -> None:
    """The same windows, Gaussian weights and blend as MONAI's ``sliding_window_inference`` (which keeps
    the whole float32 volume); ours comes back as float16, so they agree to float16's half step."""
    import torch
    from monai.inferers import sliding_window_inference

    seg = _small_model_segmenter()
    image = torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(1))
    ours = inference.sliding_window_probs(seg, image, 0.5, "cpu", sw_batch_size=sw_batch_size)
    with torch.no_grad():
        ref = sliding_window_inference(
            image, (32, 32, 32), 1, lambda x: torch.sigmoid(seg.module(x)), overlap=0.5, mode="gaussian"
        )[0].numpy()
    assert ours.dtype == np.float16 and ours.shape == ref.shape == (3, *shape)
    assert float(np.abs(ours.astype(np.float32) - ref).max()) < 5e-4


def test_out_of_device_memory_is_one_line_naming_the_settings() -> None:
    import torch

    class Exhausted(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    seg = Segmenter(Exhausted(), ("spleen", "liver"), (1.5,) * 3, (32, 32, 32), "oom")
    with pytest.raises(inference.GpuOutOfMemory) as err:
        inference.sliding_window_probs(seg, torch.zeros((1, 1, 40, 40, 40)), 0.5, "cpu", sw_batch_size=4)
    text = str(err.value)
    assert "\n" not in text and "lower --sw-batch-size (now 4) or predict fewer --classes" in text
    assert "2 classes" in text


def test_classes_run_only_their_heads_and_give_the_same_probabilities() -> None:
    import torch

    seg = _small_model_segmenter()
    image = torch.rand((1, 1, 40, 36, 32), generator=torch.Generator().manual_seed(2))
    every = inference.sliding_window_probs(seg, image, 0.5, "cpu")
    two = seg.with_classes(("kidney_left", "spleen"))
    assert two.class_names == ("kidney_left", "spleen") and two.sha256 == seg.sha256
    part = inference.sliding_window_probs(two, image, 0.5, "cpu")
    np.testing.assert_array_equal(part, every[[2, 0]])
    with pytest.raises(ValueError, match="does not predict"):
        seg.with_classes(("colon",))
