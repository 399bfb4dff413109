"""The uncertainty-map store: the viewer's voxel-wise entropy map, one compressed ``.npz`` per run x scan.

Layout::

    <workspace>/uncertainty/<run>/<source>__<case>.npz     (Workspace.maps; run id and case id through
                                                            storage.files.unique_name)

``kits23:case_1`` keeps the name of the first workspaces (``kits23__case_1.npz``); a case id that
sanitising would change gets a digest of its scan id (``case 1`` -> ``kits23__case_1-<8 hex>.npz``), so
``case 1``, ``case_1`` and ``case(1)`` no longer share one file. Maps written under the old name
(``storage.files.safe_name`` of the whole id, ``:`` -> ``__``) are still found (:func:`uncertainty_map_path`
looks up the new name first, then the old one).

Each file holds ``entropy`` (float16 (X, Y, Z), on the inference grid), ``affine`` (float64 (4, 4),
voxel -> RAS+ mm of that grid), ``classes`` (the predicted classes the maximum runs over) and, since #11,
``scan_id`` and ``run_id`` (the name maps back to them). Files are written atomically
(``storage.files.atomic_path``): a reader never sees half a map.

Example:
    >>> p = write_uncertainty_map(ws, "run-1", "kits23:case_1", emap, affine, ["spleen"])  # doctest: +SKIP
    >>> p.relative_to(ws.root).as_posix()  # doctest: +SKIP
    'uncertainty/run-1/kits23__case_1.npz'
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.geometry import affine_resample
from storage.files import atomic_path, safe_name, unique_name
from storage.workspace import Workspace


def uncertainty_map_path(ws: Workspace, run_id: str, scan_id: str) -> Path:
    """Where the map of one run x scan lives (whether or not it exists).

    Args:
        ws: the workspace.
        run_id: the pseudo-label run.
        scan_id: catalog scan id.

    Returns:
        The map under its unique name (:func:`map_file_path`), unless only a map under the name of
        earlier workspaces (:func:`legacy_map_path`) exists and is not another scan's (a map written
        since #11 names its scan): then that one.
    """
    path = map_file_path(ws, run_id, scan_id)
    if path.is_file():
        return path
    legacy = legacy_map_path(ws, run_id, scan_id)
    if legacy.is_file() and _map_scan_id(legacy) in (None, scan_id):
        return legacy
    return path


def _map_scan_id(path: Path) -> str | None:
    """The scan a map file names (None: a map from before #11, or unreadable)."""
    try:
        with np.load(path) as z:
            return str(z["scan_id"]) if "scan_id" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def map_file_path(ws: Workspace, run_id: str, scan_id: str) -> Path:
    """The unique name new maps are written under: ``<ws>/uncertainty/<run>/<source>__<case>.npz``.

    Args:
        ws: the workspace.
        run_id: the pseudo-label run.
        scan_id: catalog scan id ``<source>:<case>``.

    Returns:
        The path (whether or not it exists); run and case through :func:`storage.files.unique_name`.
    """
    source, sep, case = scan_id.partition(":")
    stem = f"{safe_name(source)}__{unique_name(case, key=scan_id)}" if sep else unique_name(scan_id)
    return ws.maps / unique_name(run_id) / f"{stem}.npz"


def legacy_map_path(ws: Workspace, run_id: str, scan_id: str) -> Path:
    """The name maps had before #11 (``safe_name`` with ``:`` -> ``__``; not unique), still read.

    Args:
        ws: the workspace.
        run_id / scan_id: whose map.

    Returns:
        ``<ws>/uncertainty/<safe run>/<safe scan>.npz`` (whether or not it exists).
    """
    return ws.maps / safe_name(run_id, colon="__") / f"{safe_name(scan_id, colon='__')}.npz"


def write_uncertainty_map(
    ws: Workspace, run_id: str, scan_id: str, entropy: np.ndarray, affine: np.ndarray, classes: Sequence[str]
) -> Path:
    """Write the entropy map of one run x scan as a compressed ``.npz``, atomically.

    Args:
        ws: the workspace.
        run_id / scan_id: whose map it is.
        entropy: float16 (X, Y, Z) voxel-wise entropy on the inference grid.
        affine: (4, 4) voxel -> RAS+ mm of that grid.
        classes: the classes it covers.

    Returns:
        The path written (:func:`map_file_path`, the unique name).
    """
    path = map_file_path(ws, run_id, scan_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            entropy=np.asarray(entropy, dtype=np.float16),
            affine=np.asarray(affine, dtype=np.float64),
            classes=np.array(list(classes), dtype=str),
            scan_id=np.array(scan_id),
            run_id=np.array(run_id),
        )
    return path


def load_uncertainty_map(
    ws: Workspace, run_id: str, scan_id: str, *, on_original_grid: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The entropy map of one scan.

    Args:
        ws: the workspace.
        run_id / scan_id: whose map.
        on_original_grid: resample the map (trilinear) onto the scan's original grid, so it overlays the
            CT voxel for voxel; otherwise return the stored inference-grid map.

    Returns:
        ``(entropy, affine)``: the float16 map and its (4, 4) voxel -> RAS+ mm affine.

    Raises:
        HarmonizeError: no map for this run x scan, or (``on_original_grid``) the scan is not in the
            catalog.
    """
    path = uncertainty_map_path(ws, run_id, scan_id)
    if not path.is_file():
        raise HarmonizeError(path, f"no uncertainty map for scan {scan_id} in run {run_id}")
    with np.load(path) as z:
        entropy, affine = z["entropy"], z["affine"]
    if not on_original_grid:
        return entropy, affine
    geometry = ws.catalog.scan_grid(scan_id)
    if geometry is None:
        raise HarmonizeError(path, f"scan {scan_id} is not in the catalog")
    shape, flat = geometry
    orig = np.asarray(flat, dtype=np.float64).reshape(4, 4)
    m = np.linalg.inv(affine) @ orig
    out = affine_resample(entropy.astype(np.float32), m[:3, :3], m[:3, 3], shape, order=1, mode="nearest")
    return out.astype(np.float16), orig
