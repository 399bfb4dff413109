"""A workspace is one folder: ``catalog.duckdb`` plus the mask store ``masks/``.

It is chosen by ``--workspace``, else the ``WORKBENCH_HOME`` environment variable, else ``./workspace``.

Example:
    >>> ws = Workspace.open("/tmp/my-workspace")  # doctest: +SKIP
    >>> ws.catalog.counts()["scan"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storage.catalog import Catalog
from storage.masks import MaskStore

ENV_VAR = "WORKBENCH_HOME"
DEFAULT_DIR = "workspace"


def resolve_workspace(path: str | Path | None = None) -> Path:
    """``path`` if given, else ``$WORKBENCH_HOME``, else ``./workspace`` (absolute)."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(chosen).expanduser().resolve()


@dataclass
class Workspace:
    """The catalog and the mask store of one workspace folder."""

    root: Path
    catalog: Catalog
    masks: MaskStore

    @classmethod
    def open(cls, path: str | Path | None = None) -> Workspace:
        """Open (creating if needed) the workspace at ``resolve_workspace(path)``."""
        root = resolve_workspace(path)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, Catalog(root / "catalog.duckdb"), MaskStore(root / "masks"))

    @property
    def exists(self) -> bool:
        return (self.root / "catalog.duckdb").exists()
