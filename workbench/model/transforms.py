"""The paper's preprocessing and augmentation, as MONAI dictionary transforms.

Items are dicts:

* ``image``: (1, x, y, z) float32 CT in Hounsfield units, on the scan's own voxel grid;
* ``label``: (n_classes, x, y, z) uint8 0/1 masks on the same grid, channel c = vocabulary class c;
* ``annotated``: (n_classes,) float32 0/1, whether the scan's source annotates class c;
* ``affine``: (4, 4) voxel -> RAS+ mm of that grid.

Deterministic part (``preprocess_transforms``), once per scan: orientation RAS, resampling to ``spacing``
(bilinear image, nearest labels), HU window [-175, 250] -> [0, 1] (clipped), crop to the foreground
(voxels above -175 HU), pad up to the patch size.

Random part (``augment_transforms``), per step: patch sampling by label class with tumour oversampling
(ratios background : organ : tumour, the paper's positive/negative 1 : 2 sampling with the positive share
split so tumour voxels get their own weight), RandRotate90 (p 0.1), RandShiftIntensity (offset 0.1,
p 0.2); no mirroring (left and right organs are different classes).

MONAI's ``RandCropByPosNegLabeld`` reads a multi-channel label as one-hot with a background channel 0 and
would ignore class 0 here, so sampling uses a derived one-channel map (0 background, 1 organ, 2 tumour)
with ``RandCropByLabelClassesd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harmonize.taxonomy import CLASSES

HU_WINDOW = (-175.0, 250.0)
TUMOR_CLASSES = frozenset(c.name for c in CLASSES if c.is_tumor)
_SAMPLING_KEY = "sampling_map"


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the pipeline.

    Args:
        spacing_mm: target voxel size (1.5 mm in the paper; 3 mm is practical on a CPU).
        patch: training patch size in voxels (96^3 in the paper; 64^3 or less on a CPU).
        num_samples: patches drawn per scan and step.
        ratios: sampling weights for patch centres in background, organ and tumour voxels.
        rotate90_p: RandRotate90 probability.
        shift_offset: RandShiftIntensity maximum offset (in the [0, 1] scaled intensity).
        shift_p: RandShiftIntensity probability.
    """

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch: tuple[int, int, int] = (96, 96, 96)
    num_samples: int = 2
    ratios: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotate90_p: float = 0.1
    shift_offset: float = 0.1
    shift_p: float = 0.2


class ToMetaTensord:
    """Turn ``image``/``label`` arrays + ``affine`` into MONAI MetaTensors carrying that affine."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from monai.data import MetaTensor

        out = dict(item)
        affine = torch.as_tensor(np.asarray(item["affine"], dtype=np.float64))
        out["image"] = MetaTensor(torch.as_tensor(np.asarray(item["image"], dtype=np.float32)), affine=affine)
        if "label" in item:
            out["label"] = MetaTensor(
                torch.as_tensor(np.asarray(item["label"], dtype=np.uint8)), affine=affine
            )
        return out


class AddSamplingMapd:
    """Add ``sampling_map`` (1, x, y, z): 0 background, 1 any non-tumour class, 2 any tumour class.

    Args:
        class_names: the label channels' class names, to know which are tumours.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.tumor = [i for i, n in enumerate(class_names) if n in TUMOR_CLASSES]
        self.organ = [i for i, n in enumerate(class_names) if n not in TUMOR_CLASSES]

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        label = torch.as_tensor(item["label"])
        smap = torch.zeros((1, *label.shape[1:]), dtype=torch.uint8)
        if self.organ:
            smap[0][label[self.organ].any(dim=0)] = 1
        if self.tumor:
            smap[0][label[self.tumor].any(dim=0)] = 2
        out = dict(item)
        out[_SAMPLING_KEY] = smap
        return out


class DropKeysd:
    """Remove helper keys from an item."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if k not in self.keys}


def preprocess_transforms(config: PipelineConfig, with_label: bool = True) -> Any:
    """The deterministic part: MetaTensor, RAS, spacing, HU window, foreground crop, pad to patch.

    Returns a MONAI ``Compose`` taking an item dict and returning it with ``image`` (1, X, Y, Z) float in
    [0, 1] and ``label`` (C, X, Y, Z) on the resampled, cropped grid (MetaTensors; ``.affine`` is the new
    grid's affine).
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    return Compose(
        [
            ToMetaTensord(),
            Orientationd(keys=keys, axcodes="RAS", labels=None),
            Spacingd(keys=keys, pixdim=config.spacing_mm, mode=modes),
            ScaleIntensityRanged(
                keys=["image"], a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True
            ),
            CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
            SpatialPadd(keys=keys, spatial_size=config.patch),
        ]
    )


def augment_transforms(config: PipelineConfig, class_names: Sequence[str]) -> Any:
    """The random part: class-ratio patch sampling, RandRotate90, RandShiftIntensity.

    Returns a MONAI ``Compose`` mapping one preprocessed item to a list of ``num_samples`` patch items with
    ``image`` (1, *patch) and ``label`` (C, *patch); ``annotated`` is passed through. Seed it with
    ``set_random_state(seed=...)`` for reproducible patches.
    """
    from monai.transforms import Compose, RandCropByLabelClassesd, RandRotate90d, RandShiftIntensityd

    keys = ["image", "label"]
    return Compose(
        [
            AddSamplingMapd(class_names),
            RandCropByLabelClassesd(
                keys=keys,
                label_key=_SAMPLING_KEY,
                spatial_size=config.patch,
                ratios=list(config.ratios),
                num_classes=3,
                num_samples=config.num_samples,
                warn=False,
            ),
            DropKeysd([_SAMPLING_KEY]),
            RandRotate90d(keys=keys, prob=config.rotate90_p, max_k=3),
            RandShiftIntensityd(keys=["image"], offsets=config.shift_offset, prob=config.shift_p),
        ]
    )
