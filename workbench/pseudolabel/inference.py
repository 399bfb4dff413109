"""Inference of a pseudo-label job: probabilities on the inference grid, then masks on the original grid.

1. :func:`predict_lowres` preprocesses the CT as in training (RAS, ``low_res_mm`` or the checkpoint's
   spacing, HU window, foreground crop, padding) on a MONAI ``MetaTensor`` whose affine follows every
   step (:func:`prepare_image`, which a job runs for the next scan in a background thread), then runs
   sliding-window inference (:func:`sliding_window_probs`: the checkpoint's patch as window, Gaussian
   blending, ``overlap``, ``sw_batch_size`` windows per forward) with ``torch.autocast`` float16 on CUDA;
   the blend is accumulated in float32 one slab at a time on the device and kept as float16 on the host
   (never a whole-volume float32 map on the host). A test-time augmentation on a coarser grid (no
   mirroring: left and right are different classes) gives the uncertainty its second opinion, only when
   asked for (``--tta``; a workbench checkpoint's job asks for it by default, a release model's does not).
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

from harmonize.errors import HarmonizeError
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


class GpuOutOfMemory(HarmonizeError):
    """The device ran out of memory during a pseudo-label window; the message names the setting to lower."""


def _window_rows(
    image_size: Sequence[int], patch: Sequence[int], overlap: float
) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """The sliding-window starts (MONAI's ``dense_patch_slices`` with its scan interval), grouped by their
    start on the first axis: ``[(x0, [(x0, y0, z0), ...]), ...]`` with ``x0`` increasing."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(tuple(image_size), tuple(patch), 3, (overlap,) * 3)
    rows: dict[int, list[tuple[int, int, int]]] = {}
    for sl in dense_patch_slices(tuple(image_size), tuple(patch), interval):
        start = tuple(int(s.start) for s in sl)
        rows.setdefault(start[0], []).append(start)  # type: ignore[arg-type]
    return sorted(rows.items())


def _out_of_memory(device: str, sw_batch_size: int, n_classes: int) -> GpuOutOfMemory:
    return GpuOutOfMemory(
        device,
        f"GPU out of memory with {sw_batch_size} window(s) per forward and {n_classes} classes: lower "
        f"--sw-batch-size (now {sw_batch_size}) or predict fewer --classes",
    )


def sliding_window_probs(
    seg: Segmenter,
    image: Any,
    overlap: float,
    device: str,
    *,
    sw_batch_size: int = 1,
) -> np.ndarray:
    """Gaussian-blended sliding-window sigmoid probabilities, float16 on the host.

    The windows, their order within a window and the Gaussian weights are MONAI's
    (``sliding_window_inference`` with ``mode='gaussian'``); the blending is accumulated in float32 on
    ``device`` for one slab of the first axis at a time (one window deep), and every finished slab is
    divided by its weights and moved to the host as float16. So the host never holds the volume's
    probabilities in float32, and the device holds one slab plus ``sw_batch_size`` windows.

    Args:
        seg: the model (``seg.module`` maps [B, 1, *patch] to logits [B, C, *patch]).
        image: [1, 1, X, Y, Z] float32 torch tensor on the CPU (CT scaled to [0, 1]).
        overlap: window overlap fraction in [0, 1).
        device: torch device; on CUDA the forward runs under ``torch.autocast`` (float16).
        sw_batch_size: windows per forward.

    Returns:
        (C, X, Y, Z) float16 probabilities.

    Raises:
        GpuOutOfMemory: the device ran out of memory (the message names ``--sw-batch-size``).
    """
    import torch
    import torch.nn.functional as F
    from monai.data.utils import compute_importance_map

    patch = tuple(int(p) for p in seg.patch)
    shape = tuple(int(s) for s in image.shape[2:])
    pads = [max(p - s, 0) for p, s in zip(patch, shape)]
    if any(pads):  # as MONAI: symmetric zero padding up to one window, cropped off at the end
        pad_arg: list[int] = []
        for d in reversed(pads):
            pad_arg += [d // 2, d - d // 2]
        image = F.pad(image, pad_arg)
    size = tuple(int(s) for s in image.shape[2:])
    dev = torch.device(device)
    module = seg.module.to(dev)
    use_amp = dev.type == "cuda"
    weight = compute_importance_map(
        patch, mode="gaussian", sigma_scale=0.125, device=dev, dtype=torch.float32
    )
    weight = weight.reshape(1, *patch)
    rows = _window_rows(size, patch, overlap)
    n_classes = len(seg.class_names)
    out = np.empty((n_classes, *size), dtype=np.float16)
    depth = patch[0]
    acc = torch.zeros((n_classes, depth, *size[1:]), dtype=torch.float32, device=dev)
    cnt = torch.zeros((1, depth, *size[1:]), dtype=torch.float32, device=dev)
    x_origin = rows[0][0] if rows else 0

    def flush(upto: int) -> None:
        nonlocal acc, cnt, x_origin
        n = upto - x_origin
        if n <= 0:
            return
        out[:, x_origin:upto] = (acc[:, :n] / cnt[:, :n].clamp_min(1e-12)).half().cpu().numpy()
        acc = torch.cat([acc[:, n:], torch.zeros_like(acc[:, :n])], dim=1)
        cnt = torch.cat([cnt[:, n:], torch.zeros_like(cnt[:, :n])], dim=1)
        x_origin = upto

    try:
        with torch.no_grad():
            for x0, starts in rows:
                flush(x0)
                for b in range(0, len(starts), sw_batch_size):
                    batch = starts[b : b + sw_batch_size]
                    windows = torch.cat(
                        [image[:, :, x : x + depth, y : y + patch[1], z : z + patch[2]] for x, y, z in batch]
                    ).to(dev, non_blocking=True)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                        logits = module(windows)
                    probs = torch.sigmoid(logits.float())
                    del logits, windows
                    for (_, y, z), p in zip(batch, probs):
                        acc[:, :, y : y + patch[1], z : z + patch[2]] += p * weight
                        cnt[:, :, y : y + patch[1], z : z + patch[2]] += weight
                    del probs
            flush(size[0])
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory(device, sw_batch_size, n_classes) from exc
    if any(pads):
        crop = tuple(slice(d // 2, d // 2 + s) for d, s in zip(pads, shape))
        out = np.ascontiguousarray(out[(slice(None), *crop)])
    return out


@dataclass
class PreparedImage:
    """A CT preprocessed for inference: [1, 1, X, Y, Z] float32 on the CPU and that grid's affine."""

    image: Any
    affine: np.ndarray
    seconds: float


def prepare_image(seg: Segmenter, volume: Volume, spacing_mm: tuple[float, float, float]) -> PreparedImage:
    """Preprocess ``volume`` like training (RAS, ``spacing_mm``, HU window [-175, 250] -> [0, 1], foreground
    crop, padding to the window).

    Args:
        seg: the model (its window).
        volume: the CT in HU, any orientation.
        spacing_mm: inference grid spacing.

    Returns:
        :class:`PreparedImage`.
    """
    import torch

    from workbench.model.transforms import PipelineConfig, preprocess_transforms

    t0 = time.perf_counter()
    pipe = PipelineConfig(spacing_mm=tuple(spacing_mm), patch=seg.patch)  # type: ignore[arg-type]
    item = {"image": np.asarray(volume.array, dtype=np.float32)[None], "affine": volume.affine}
    pre = preprocess_transforms(pipe, with_label=False)(item)
    del item
    affine = np.asarray(pre["image"].affine, dtype=np.float64)
    image = torch.as_tensor(pre["image"]).as_subclass(torch.Tensor)[None].float()
    return PreparedImage(image, affine, time.perf_counter() - t0)


def predict_prepared(
    seg: Segmenter,
    prepared: PreparedImage,
    *,
    overlap: float = 0.5,
    device: str = "cpu",
    tta: bool = False,
    sw_batch_size: int = 1,
) -> LowResPrediction:
    """Sliding-window inference on a prepared image (and the test-time augmentation when ``tta``).

    Args:
        seg: the model.
        prepared: :func:`prepare_image`'s result.
        overlap: window overlap fraction.
        device: torch device ('cpu', 'cuda', 'cuda:1').
        tta: also run the test-time augmentation (a second prediction: about twice the device time).
        sw_batch_size: windows per forward.

    Returns:
        :class:`LowResPrediction` on the inference grid.
    """
    import torch.nn.functional as F

    t1 = time.perf_counter()
    image = prepared.image
    probs = sliding_window_probs(seg, image, overlap, device, sw_batch_size=sw_batch_size)
    t2 = time.perf_counter()
    out = LowResPrediction(
        probs, prepared.affine, seconds={"preprocess": prepared.seconds, "inference": t2 - t1}
    )
    if tta:
        import torch

        size = [max(8, round(s * TTA_SCALE)) for s in image.shape[2:]]
        small = F.interpolate(image, size=size, mode="trilinear", align_corners=True) + TTA_SHIFT
        tta_small = sliding_window_probs(seg, small, 0.0, device, sw_batch_size=sw_batch_size)
        back = F.interpolate(
            torch.from_numpy(tta_small)[None].float(),
            size=list(image.shape[2:]),
            mode="trilinear",
            align_corners=True,
        )
        out.tta_probs = back[0].numpy().astype(np.float16)
        out.seconds["tta"] = time.perf_counter() - t2
    return out


def predict_lowres(
    seg: Segmenter,
    volume: Volume,
    *,
    spacing_mm: tuple[float, float, float],
    overlap: float = 0.5,
    device: str = "cpu",
    tta: bool = True,
    sw_batch_size: int = 1,
) -> LowResPrediction:
    """Preprocess ``volume`` like training and run sliding-window inference (see module docstring).

    Args:
        seg: the model.
        volume: the CT in HU, any orientation.
        spacing_mm: inference grid spacing.
        overlap: window overlap fraction.
        device: torch device ('cpu', 'cuda', 'cuda:1').
        tta: also run the test-time augmentation.
        sw_batch_size: windows per forward.

    Returns:
        :class:`LowResPrediction` on the inference grid.
    """
    prepared = prepare_image(seg, volume, spacing_mm)
    return predict_prepared(
        seg, prepared, overlap=overlap, device=device, tta=tta, sw_batch_size=sw_batch_size
    )


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
