"""Fixtures of the review tests: the demo workspace, and helpers that add pseudo label sets and masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.workspace import Workspace
from workbench import review


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


def _add_pseudo(ws: Workspace, scan_id: str, masks: dict[str, np.ndarray], run_id: str = "run-1") -> str:
    """A pseudo label set holding ``masks`` (other classes not annotated), as issue 4's jobs write them."""
    shape = tuple(int(s) for s in review.scan_row(ws, scan_id)["shape"])
    version = int(ws.catalog.label_sets(scan_id)["version"].max()) + 1
    ls_id = f"ls-pseudo-{run_id}-{scan_id.replace(':', '-')}-{version}"
    ws.masks.write_label_set(ls_id, masks, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov.update({n: "annotated_present" if m.any() else "annotated_absent" for n, m in masks.items()})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=version, origin="pseudo", mask_key=ls_id, run_id=run_id
        ),
        cov,
        [],
    )
    return ls_id


def _original_mask(ws: Workspace, scan_id: str, cls: str) -> np.ndarray:
    ls = ws.catalog.latest_original(scan_id)
    assert ls is not None
    return ws.masks.read(ls["mask_key"], cls)


def _blob(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


@pytest.fixture
def add_pseudo() -> Callable[..., str]:
    """``add_pseudo(ws, scan_id, masks, run_id="run-1")``: store a pseudo label set, return its id."""
    return _add_pseudo


@pytest.fixture
def original_mask() -> Callable[..., np.ndarray]:
    """``original_mask(ws, scan_id, cls)``: the class's mask in the scan's newest original label set."""
    return _original_mask


@pytest.fixture
def blob() -> Callable[..., np.ndarray]:
    """``blob(shape, lo, size)``: a bool volume holding one cube of ``size`` voxels a side at ``lo``."""
    return _blob
