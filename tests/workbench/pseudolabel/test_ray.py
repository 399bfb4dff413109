"""The pseudo-label job on a local Ray instance with 2 CPU actors: the same label sets as the single-machine
job, and the catalog's write lock free for other processes between scans.

Skipped when Ray is not installed (``pip install ray==2.60.0``), except under CI=true where that fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.pseudolabel import pseudolabel, pseudolabel_ray

REPO = Path(__file__).resolve().parents[3]

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

if not HAVE_RAY and os.environ.get("CI", "").lower() != "true":
    pytest.skip("ray is not installed (pip install ray==2.60.0)", allow_module_level=True)

NAMES = ("spleen", "liver", "kidney_left", "kidney_right")
SEEDS = (0, 1)


def _workspace(root: Path, data: Path) -> Workspace:
    ws = Workspace.open(root)
    assert not ingest(ws, "lits", data, progress=False).skipped
    return ws


def _labels(ws: Workspace) -> dict[tuple[str, str], np.ndarray]:
    rows = ws.catalog.query("SELECT scan_id, mask_key FROM label_set WHERE origin = 'pseudo'")
    out = {}
    for r in rows.to_dict("records"):
        for name in NAMES:
            if name in ws.masks.names(r["mask_key"]):
                out[(r["scan_id"], name)] = ws.masks.read(r["mask_key"], name)
    return out


@pytest.mark.slow
def test_ray_job_matches_the_local_job_and_leaves_the_catalog_writable(
    tmp_path: Path, random_checkpoint: Callable[..., Path]
) -> None:
    if not HAVE_RAY:
        pytest.fail("CI=true needs ray installed (pip install ray==2.60.0)")
    data = tmp_path / "data"
    for seed in SEEDS:
        write_native(
            make_phantom(seed, shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0)),
            get_protocol("lits"),
            data,
            f"case{seed:02d}",
        )
    ckpt = random_checkpoint(tmp_path / "m.pt", NAMES, seed=1)  # the conftest.py model, another seed
    local_ws = _workspace(tmp_path / "local", data)
    ray_ws = _workspace(tmp_path / "ray", data)
    local = pseudolabel(local_ws, ckpt, low_res_mm=6.0, device="cpu", progress=False)

    writes = []

    def another_process_writes(scan_id: str, outcome: str) -> None:
        # Between two scans another process must get the catalog within 5 s (DuckDB: one writer).
        code = (
            "import sys; from storage.catalog import Catalog; "
            "Catalog(sys.argv[1], lock_timeout_s=5).log_issue('test', sys.argv[2], 'written meanwhile')"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(ray_ws.catalog.path), scan_id],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        writes.append((scan_id, proc.returncode, proc.stderr[-300:]))

    summary = pseudolabel_ray(
        ray_ws, ckpt, workers=2, low_res_mm=6.0, progress=False, on_scan=another_process_writes
    )
    assert summary.done == local.done == [f"lits:case{s:02d}" for s in SEEDS] and not summary.failed
    assert [w[1] for w in writes] == [0] * len(SEEDS), writes
    assert len(ray_ws.catalog.query("SELECT * FROM ingest_issue WHERE source_id = 'test'")) == len(SEEDS)
    run = ray_ws.catalog.query("SELECT * FROM run WHERE id = ?", [summary.run_id]).iloc[0]
    assert '"actors": 2' in run["config"] and run["finished_at"] is not None
    a, b = _labels(local_ws), _labels(ray_ws)
    assert set(a) == set(b)
    for key, mask in a.items():
        inter = int((mask & b[key]).sum())
        assert 2 * inter >= 0.99 * (mask.sum() + b[key].sum()), key  # same model, same grid
    unc = ray_ws.catalog.query("SELECT count(*) AS n FROM uncertainty")["n"].iloc[0]
    assert unc == len(SEEDS) * 3  # spleen and both kidneys per scan (LiTS annotates the liver)
    # Resume: the same checkpoint on Ray skips every scan done.
    again = pseudolabel_ray(ray_ws, ckpt, workers=2, low_res_mm=6.0, progress=False)
    assert again.done == [] and sorted(again.skipped) == summary.done


@pytest.mark.parametrize(("overlap", "low_res"), [(1.0, 3.0), (0.5, float("nan"))])
def test_ray_job_refuses_bad_settings_before_ray_starts(
    tmp_path: Path, overlap: float, low_res: float
) -> None:
    if not HAVE_RAY:
        pytest.fail("CI=true needs ray installed (pip install ray==2.60.0)")
    import ray

    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError):
        pseudolabel_ray(ws, tmp_path / "none.pt", overlap=overlap, low_res_mm=low_res, progress=False)
    assert not ray.is_initialized()
