"""A workspace is one folder: ``catalog.duckdb``, the mask store ``masks/``, and one subfolder per kind of
file the workbench writes (every folder is named here once, as nnU-Net's ``paths.py`` does):

====================  ==============================================================================
``masks/``            the mask store (:class:`storage.masks.MaskStore`)
``uncertainty/``      uncertainty maps, ``<run>/<scan>.npz`` (:mod:`storage.maps`)
``models/``           checkpoints of ``workbench train`` and of active-learning rounds
``reports/``          evaluation reports, ``<run>/``
``exports/``          exports made from the app
``imports/``          staging of uploaded corrections
``slicer/``           cases exported for editing in 3D Slicer / ITK-SNAP
``demo_data/``        the demo's synthetic phantoms (``workbench demo``)
====================  ==============================================================================

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

    @property
    def maps(self) -> Path:
        """Uncertainty maps, one ``.npz`` per run x scan."""
        return self.root / "uncertainty"

    @property
    def models(self) -> Path:
        """Checkpoints written by ``workbench train`` and by active-learning rounds."""
        return self.root / "models"

    @property
    def reports(self) -> Path:
        """Evaluation reports, one folder per evaluate run."""
        return self.root / "reports"

    @property
    def exports(self) -> Path:
        """Exports started from the app."""
        return self.root / "exports"

    @property
    def imports(self) -> Path:
        """Staging folder of uploaded corrections (files live here only while they are read)."""
        return self.root / "imports"

    @property
    def slicer(self) -> Path:
        """Cases exported for editing in 3D Slicer or ITK-SNAP."""
        return self.root / "slicer"

    @property
    def demo_data(self) -> Path:
        """The demo's synthetic phantoms."""
        return self.root / "demo_data"
