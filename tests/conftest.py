"""Shared test fixtures.

Tests that need the real files in ``../shared/fixtures`` use the ``shared_fixtures`` fixture: on a user's
machine without ``../shared`` they skip with that reason; under CI (``CI=true``) a missing folder fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


def _require(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{path} is missing, and CI always has ../shared")
    pytest.skip(f"needs {path} (the real test files beside the checkout); not present on this machine")


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """``../shared/fixtures``: real CT, labels, DICOM and Universal Model files (read-only)."""
    return _require(SHARED_FIXTURES)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference``: facts read from the original Universal Model repository."""
    return _require(SHARED_REFERENCE)
