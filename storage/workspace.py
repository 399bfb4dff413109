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
import time
from dataclasses import dataclass
from pathlib import Path

from storage.catalog import Catalog
from storage.masks import MaskStore

ENV_VAR = "WORKBENCH_HOME"
#: A mask file younger than this is never collected, referenced or not: its writer may still be about to
#: commit the label set that names it (masks are written before their catalog row).
ORPHAN_MIN_AGE_S = 900.0
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

    def collect_garbage(self, *, min_age_s: float = ORPHAN_MIN_AGE_S, dry_run: bool = False) -> list[Path]:
        """Remove what no writer can still need: temp files of dead writers, and mask files that no
        committed label set references and that are at least ``min_age_s`` old.

        Only ``workbench gc`` calls this, never an ingest or a pseudo-label run as a side effect. The
        catalog is read again just before each removal, so a label set committed meanwhile keeps its
        file.

        Args:
            min_age_s: the youngest unreferenced mask file that may go (seconds since it was written).
            dry_run: list what would be removed and remove nothing.

        Returns:
            The paths removed (or, with ``dry_run``, that would be), sorted.
        """
        found = self.masks.gc(dry_run=dry_run)
        now = time.time()
        referenced = self.catalog.mask_keys()
        for key in self.masks.keys():  # noqa: SIM118 (a MaskStore is not a mapping)
            if key in referenced:
                continue
            path = self.masks.path(key)
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < min_age_s or key in self.catalog.mask_keys():
                continue
            if dry_run or self.masks.delete(key):
                found.append(path)
        return sorted(found)
