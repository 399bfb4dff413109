"""CT intensity statistics over ANNOTATED foreground voxels, in nnU-Net's form.

nnU-Net v2's fingerprint (``DatasetFingerprintExtractor``) samples 10 000 voxels per case from
``segmentation > 0`` and its CT normalisation clips to their 0.5th / 99.5th percentiles and standardises
with their mean and std. With an ignore label that is the highest value, ``> 0`` counts the ignore voxels
as foreground, so the statistics mix in fat, air and bowel that nobody annotated. Our label-map exports
compute the same statistics the same way (per case :data:`SAMPLES_PER_CASE` voxels drawn with
replacement, ``RandomState(1234)`` per case, as nnU-Net does) over voxels of an exported class only
(label 1..n, not ignore) and write them into the manifest as ``foreground_intensity_properties_per_channel``
(nnU-Net's own key and layout), so they can replace nnU-Net's (:func:`patch_intensity_properties`,
``docs/exports.md``).

Example:
    >>> acc = IntensityAccumulator()
    >>> acc.add(np.array([[[-1000, 40]]]), np.array([[[0, 1]]]), ignore=2)
    >>> acc.properties()["0"]["median"]
    40.0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from storage.files import atomic_write_json

#: Voxels sampled per case (nnU-Net's ``num_samples``).
SAMPLES_PER_CASE = 10_000
#: nnU-Net's sampling seed, the same for every case.
SAMPLING_SEED = 1234
#: The manifest / fingerprint / plans key nnU-Net reads its CT normalisation from.
PROPERTIES_KEY = "foreground_intensity_properties_per_channel"


class IntensityAccumulator:
    """Collects a fixed-size sample of annotated foreground HU per case (and, for comparison, of what
    nnU-Net itself would count: every voxel with label > 0, ignore included); :meth:`properties` pools
    them."""

    def __init__(self, samples_per_case: int = SAMPLES_PER_CASE) -> None:
        self.samples_per_case = samples_per_case
        self._samples: list[np.ndarray] = []
        self._nnunet_samples: list[np.ndarray] = []
        self.voxels = 0

    def _sample(self, values: np.ndarray) -> np.ndarray:
        return np.random.RandomState(SAMPLING_SEED).choice(values, self.samples_per_case, replace=True)

    def add(self, ct: np.ndarray, labels: np.ndarray, ignore: int) -> int:
        """Add one case.

        Args:
            ct: (i, j, k) HU.
            labels: (i, j, k) label map of the export (0 background, ``ignore`` unknown).
            ignore: the ignore label's value.

        Returns:
            The case's annotated foreground voxel count.
        """
        hu = np.asarray(ct, np.float64)
        values = hu[(labels > 0) & (labels != ignore)]
        if values.size:
            self._samples.append(self._sample(values))
        with_ignore = hu[labels > 0]
        if with_ignore.size:
            self._nnunet_samples.append(self._sample(with_ignore))
        self.voxels += int(values.size)
        return int(values.size)

    def properties(self) -> dict[str, dict[str, float]]:
        """nnU-Net's ``foreground_intensity_properties_per_channel`` over the annotated voxels of the cases
        added ({} without any).

        Returns:
            ``{"0": {mean, median, std, min, max, percentile_99_5, percentile_00_5}}`` (HU).
        """
        return _properties(self._samples)

    def nnunet_default_properties(self) -> dict[str, dict[str, float]]:
        """The same statistics over label > 0 (ignore included): what nnU-Net's fingerprint would hold."""
        return _properties(self._nnunet_samples)


def _properties(samples: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """nnU-Net's statistics of the pooled per-case samples ({} without any)."""
    if not samples:
        return {}
    pooled = np.concatenate(samples)
    p005, median, p995 = np.percentile(pooled, (0.5, 50.0, 99.5))
    return {
        "0": {
            "mean": float(pooled.mean()),
            "median": float(median),
            "std": float(pooled.std()),
            "min": float(pooled.min()),
            "max": float(pooled.max()),
            "percentile_99_5": float(p995),
            "percentile_00_5": float(p005),
        }
    }


def patch_intensity_properties(nnunet_json: str | Path, manifest: str | Path) -> dict[str, Any]:
    """Replace nnU-Net's foreground intensity statistics in a ``dataset_fingerprint.json`` or a plans file
    (``nnUNetPlans.json``) with the export's, atomically.

    Args:
        nnunet_json: the fingerprint or plans file nnU-Net wrote.
        manifest: the export's ``manifest.json``.

    Returns:
        The statistics written.

    Raises:
        ValueError: the manifest has none, or the file holds no such key (not a fingerprint or plans file).
    """
    props = json.loads(Path(manifest).read_text()).get(PROPERTIES_KEY) or {}
    if not props:
        raise ValueError(f"{manifest}: no {PROPERTIES_KEY} (an export without annotated voxels?)")
    doc = json.loads(Path(nnunet_json).read_text())
    if PROPERTIES_KEY not in doc:
        raise ValueError(f"{nnunet_json}: no {PROPERTIES_KEY}; not an nnU-Net fingerprint or plans file")
    doc[PROPERTIES_KEY] = props
    atomic_write_json(Path(nnunet_json), doc)
    return dict(props)
