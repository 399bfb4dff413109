"""CT statistics over annotated voxels, sampled the way nnU-Net samples them, ignore voxels left out."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.export.intensity import SAMPLES_PER_CASE, IntensityAccumulator


def test_ignore_and_background_never_count() -> None:
    ct = np.full((10, 10, 10), -1000.0)
    labels = np.zeros(ct.shape, np.uint8)
    labels[:2] = 1  # 200 voxels of a class at 50 HU
    ct[:2] = 50.0
    labels[5:] = 3  # ignore: 500 voxels of fat
    ct[5:] = -100.0
    acc = IntensityAccumulator()
    assert acc.add(ct, labels, ignore=3) == 200
    props = acc.properties()["0"]
    assert props == {
        "mean": 50.0,
        "median": 50.0,
        "std": 0.0,
        "min": 50.0,
        "max": 50.0,
        "percentile_99_5": 50.0,
        "percentile_00_5": 50.0,
    }


def test_every_case_weighs_the_same_as_in_nnunet() -> None:
    """Two cases of 1 000 and 100 000 annotated voxels: each contributes SAMPLES_PER_CASE samples."""
    acc = IntensityAccumulator()
    small = np.full((10, 10, 10), 0.0)
    big = np.full((100, 100, 10), 100.0)
    acc.add(small, np.ones(small.shape, np.uint8), ignore=2)
    acc.add(big, np.ones(big.shape, np.uint8), ignore=2)
    props = acc.properties()["0"]
    assert acc.voxels == 101_000
    assert props["mean"] == pytest.approx(50.0) and props["std"] == pytest.approx(50.0)
    assert props["percentile_00_5"] == 0.0 and props["percentile_99_5"] == 100.0


def test_the_sample_is_nnunets_own() -> None:
    fingerprint = pytest.importorskip(
        "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
        reason="nnunetv2 is not installed (optional extra: pip install .[nnunet])",
    )
    rng = np.random.default_rng(3)
    ct = rng.normal(40, 30, (20, 20, 10))
    labels = (rng.random(ct.shape) < 0.3).astype(np.uint8)
    acc = IntensityAccumulator()
    acc.add(ct, labels, ignore=2)
    theirs, _ = fingerprint.DatasetFingerprintExtractor.collect_foreground_intensities(
        labels[None], ct[None], num_samples=SAMPLES_PER_CASE
    )
    pooled = np.asarray(theirs[0])
    ours = acc.properties()["0"]
    assert ours["mean"] == pytest.approx(float(pooled.mean()))
    assert ours["percentile_99_5"] == pytest.approx(float(np.percentile(pooled, 99.5)))
    assert IntensityAccumulator().properties() == {}


def test_nnunets_default_would_count_the_ignore_voxels() -> None:
    ct = np.full((10, 10, 10), 50.0)
    ct[5:] = -1000.0
    labels = np.ones(ct.shape, np.uint8)
    labels[5:] = 2  # ignore
    acc = IntensityAccumulator()
    acc.add(ct, labels, ignore=2)
    assert acc.properties()["0"]["min"] == 50.0
    default = acc.nnunet_default_properties()["0"]
    assert default["min"] == -1000.0 and default["max"] == 50.0
