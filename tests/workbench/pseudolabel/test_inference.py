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
