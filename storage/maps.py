"""The uncertainty-map store: the viewer's voxel-wise entropy map, one compressed ``.npz`` per run x scan.

Layout (unchanged since the first workspaces)::

    <workspace>/uncertainty/<run>/<scan>.npz     (Workspace.maps; run and scan ids through
                                                  storage.files.safe_name with ':' -> '__')

Each file holds ``entropy`` (float16 (X, Y, Z), on the inference grid), ``affine`` (float64 (4, 4),
voxel -> RAS+ mm of that grid) and ``classes`` (the predicted classes the maximum runs over). Files are
written atomically (``storage.files.atomic_path``): a reader never sees half a map.

Example:
    >>> p = write_uncertainty_map(ws, "run-1", "kits23:case_1", emap, affine, ["spleen"])  # doctest: +SKIP
    >>> p.relative_to(ws.root).as_posix()  # doctest: +SKIP
    'uncertainty/run-1/kits23__case_1.npz'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.geometry import affine_resample
from storage.files import atomic_path, safe_name
from storage.workspace import Workspace


def uncertainty_map_path(ws: Workspace, run_id: str, scan_id: str) -> Path:
    """Where the map of one run x scan lives (whether or not it exists).

    Args:
        ws: the workspace.
        run_id: the pseudo-label run.
        scan_id: catalog scan id.

    Returns:
        ``<ws>/uncertainty/<run>/<scan>.npz``.
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
        The path written (:func:`uncertainty_map_path`).
    """
    path = uncertainty_map_path(ws, run_id, scan_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            entropy=np.asarray(entropy, dtype=np.float16),
            affine=np.asarray(affine, dtype=np.float64),
            classes=np.array(list(classes), dtype=str),
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
