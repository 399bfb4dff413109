"""Inference of a pseudo-label job: probabilities on the inference grid, then masks on the original grid.

1. :func:`predict_lowres` preprocesses the CT as in training (RAS, ``low_res_mm`` or the checkpoint's
   spacing, HU window, foreground crop, padding) on a MONAI ``MetaTensor`` whose affine follows every
   step, then runs sliding-window inference (the checkpoint's patch as window, Gaussian blending,
   ``overlap``) with AMP on CUDA; sigmoid probabilities are blended and kept as float16 on the inference
   grid (never float64). A test-time augmentation on a coarser grid (no mirroring: left and right are
   different classes) gives the uncertainty its second opinion.
2. :func:`to_original_grid` resamples each class back onto the scan's ORIGINAL grid (shape, affine, any
   orientation) by trilinear interpolation of its probability through the two affines, only inside the
   box where it can exceed :data:`THRESHOLD`, and thresholds it (``harmonize.geometry.threshold_to_grid``):
   the masks open over the original CT in 3D Slicer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonize.geometry import threshold_to_grid
from harmonize.masks import CroppedMask
from harmonize.volume import Volume
from workbench.pseudolabel.segmenter import Segmenter

THRESHOLD = 0.5
#: Test-time augmentation: inference grid coarser by this factor, intensity shifted by this much (of the
#: [0, 1] window, about 13 HU), windows without overlap: a cheap second opinion that keeps left and right.
TTA_SCALE = 0.7
TTA_SHIFT = 0.03


@dataclass
class LowResPrediction:
    """Probabilities on the inference grid.

    Args:
        probs: (C, X, Y, Z) float16 sigmoid probabilities.
        affine: (4, 4) voxel -> RAS+ mm of that grid.
        tta_probs: (C, X, Y, Z) float16 of the test-time augmentation on the same grid, or None.
        seconds: preprocess / inference / tta timings.
    """

    probs: np.ndarray
    affine: np.ndarray
    tta_probs: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _sliding_window(seg: Segmenter, image: Any, overlap: float, device: str) -> Any:
    """[1, C, X, Y, Z] float32 probabilities on the CPU for a [1, 1, X, Y, Z] image."""
    # Lazy: torch and MONAI load only when a model runs (the CLI and the app import this package).
    import torch
    from monai.inferers import sliding_window_inference

    module = seg.module.to(device)
    use_amp = device.startswith("cuda")

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            return torch.sigmoid(module(x).float())

    with torch.no_grad():
        out = sliding_window_inference(
            image,
            seg.patch,
            1,
            predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=torch.device(device),
            device=torch.device("cpu"),  # stitch on the host: a whole-volume map never sits on the GPU
        )
    assert isinstance(out, torch.Tensor)
    return out


def predict_lowres(
    seg: Segmenter,
    volume: Volume,
    *,
    spacing_mm: tuple[float, float, float],
    overlap: float = 0.5,
    device: str = "cpu",
    tta: bool = True,
) -> LowResPrediction:
    """Preprocess ``volume`` like training and run sliding-window inference (see module docstring).

    Args:
        seg: the model.
        volume: the CT in HU, any orientation.
        spacing_mm: inference grid spacing.
        overlap: window overlap fraction.
        device: torch device ('cpu', 'cuda', 'cuda:1').
        tta: also run the test-time augmentation.

    Returns:
        :class:`LowResPrediction` on the inference grid.
    """
    # Lazy: see _sliding_window.
    import torch
    import torch.nn.functional as F

    from workbench.model.transforms import PipelineConfig, preprocess_transforms

    t0 = time.perf_counter()
    pipe = PipelineConfig(spacing_mm=tuple(spacing_mm), patch=seg.patch)  # type: ignore[arg-type]
    item = {"image": np.asarray(volume.array, dtype=np.float32)[None], "affine": volume.affine}
    pre = preprocess_transforms(pipe, with_label=False)(item)
    del item
    affine = np.asarray(pre["image"].affine, dtype=np.float64)
    image = torch.as_tensor(pre["image"]).as_subclass(torch.Tensor)[None].float()
    del pre
    t1 = time.perf_counter()
    probs_t = _sliding_window(seg, image, overlap, device)
    probs = probs_t[0].numpy().astype(np.float16)
    del probs_t
    t2 = time.perf_counter()
    out = LowResPrediction(probs, affine, seconds={"preprocess": t1 - t0, "inference": t2 - t1})
    if tta:
        size = [max(8, round(s * TTA_SCALE)) for s in image.shape[2:]]
        small = F.interpolate(image, size=size, mode="trilinear", align_corners=True) + TTA_SHIFT
        tta_small = _sliding_window(seg, small, 0.0, device)
        back = F.interpolate(tta_small, size=list(image.shape[2:]), mode="trilinear", align_corners=True)
        out.tta_probs = back[0].numpy().astype(np.float16)
        out.seconds["tta"] = time.perf_counter() - t2
    return out


def to_original_grid(
    pred: LowResPrediction,
    class_names: Sequence[str],
    affine: np.ndarray,
    shape: tuple[int, int, int],
    threshold: float = THRESHOLD,
) -> dict[str, CroppedMask]:
    """Every channel of a prediction as a thresholded mask on the scan's original grid.

    Args:
        pred: the prediction on the inference grid.
        class_names: class of each channel of ``pred.probs``.
        affine: (4, 4) voxel -> RAS+ mm of the original grid.
        shape: original (i, j, k) shape.
        threshold: probability from which a voxel belongs to the class.

    Returns:
        class -> :class:`~harmonize.masks.CroppedMask` on the original grid.
    """
    return {
        name: threshold_to_grid(pred.probs[c], pred.affine, affine, shape, threshold)
        for c, name in enumerate(class_names)
    }
