"""Fixtures shared by the workbench tests: one demo workspace per test session, copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.workspace import Workspace


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-case-per-source demo workspace (synthetic phantoms), built once per test session."""
    from workbench.demo import build_demo

    base = tmp_path_factory.getbasetemp() / "demo-template-1"
    if not (base / ".built").exists():
        shutil.rmtree(base, ignore_errors=True)
        build_demo(Workspace.open(base), cases_per_source=1, progress=False)
        (base / ".built").write_text("ok")
    return base


@pytest.fixture(scope="session")
def demo_copy(demo_template: Path) -> Callable[[Path], Path]:
    """``demo_copy(root)``: a private copy of the demo workspace's catalog and masks at ``root`` (the
    images stay in the template, where the catalog points)."""

    def copy(root: Path) -> Path:
        shutil.copytree(demo_template, root, ignore=shutil.ignore_patterns("demo_data", ".built"))
        return root

    return copy


@pytest.fixture
def demo_ws(demo_copy: Callable[[Path], Path], tmp_path: Path) -> Workspace:
    """A private, writable copy of the demo workspace for one test."""
    return Workspace.open(demo_copy(tmp_path / "ws"))


def _uncertainty_item(
    scan: str, cls: str, ls: str, signals: dict[str, object], run: str = "run-1"
) -> dict[str, object]:
    return {
        "scan_id": scan,
        "class_name": cls,
        "run_id": run,
        "label_set_id": ls,
        "score": 0.0,
        "signals": signals,
        "reasons": [],
    }


@pytest.fixture()
def uncertainty_ws(tmp_path: Path) -> Workspace:
    """An empty workspace holding four uncertainty items (two scans, two runs) and nothing else: the
    input of the queue's scoring and ranking."""
    from workbench.pseudolabel.uncertainty import store_uncertainty

    ws = Workspace.open(tmp_path / "ws")
    store_uncertainty(
        ws,
        [
            _uncertainty_item(
                "a:1", "kidney_left", "ls-a", {"volume_z": 3.1, "components": 2, "expected_components": 1}
            ),
            _uncertainty_item("a:1", "spleen", "ls-a", {"entropy": 0.3}),
            _uncertainty_item("b:2", "liver_tumor", "ls-b", {"outside_parent": 0.9, "parent": "liver"}),
            _uncertainty_item(
                "b:2", "spleen", "ls-b", {"overlap": 0.1, "overlap_with": "stomach"}, run="run-2"
            ),
        ],
    )
    return ws
