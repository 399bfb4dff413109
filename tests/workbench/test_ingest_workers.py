"""Ingest across processes: the same catalog and mask bytes as a one-process ingest, dead workers, a killed
driver, and the Ray path on a local instance.

Every comparison is against a one-process ingest of the same phantom files: scans, label sets (version,
parent, hashes, notes), coverage, statistics, split decisions and the bytes of every mask file, keyed by
scan id (label set ids are fresh uuids in every ingest).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import KILL_HOOK_ENV, ingest

REPO = Path(__file__).resolve().parents[2]
SHAPE = (56, 48, 40)
SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def kits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five KiTS23 phantom cases (seed 1 without a left kidney), a duplicate of case 0 and a damaged case."""
    root = tmp_path_factory.mktemp("kits-workers")
    for seed in SEEDS:
        missing = ("kidney_left",) if seed == 1 else ()
        write_native(
            make_phantom(seed, shape=SHAPE, missing=missing), get_protocol("kits23"), root, f"case{seed:02d}"
        )
    shutil.copytree(root / "case00", root / "case05")  # the same image again: refused as a duplicate
    damaged = root / "case06"
    shutil.copytree(root / "case02", damaged)
    data = (damaged / "segmentation.nii.gz").read_bytes()
    (damaged / "segmentation.nii.gz").write_bytes(data[: len(data) // 2])
    return root


def _snapshot(ws: Workspace) -> dict[str, Any]:
    """Everything an ingest stores, keyed by scan id and class, with label set ids replaced by scan id."""
    q = ws.catalog.query
    scans = q("SELECT * EXCLUDE (ingested_at) FROM scan ORDER BY id").to_dict("records")
    label_sets = q(
        "SELECT l.scan_id, l.version, l.origin, p.version AS parent_version, l.author, l.protocol_version, "
        "l.label_sha256, l.label_bytes, l.label_mtime, l.midline_x_mm, l.midline_method, l.native_voxels, "
        "l.notes FROM label_set l LEFT JOIN label_set p ON p.id = l.parent_id ORDER BY l.scan_id, l.version"
    ).to_dict("records")
    coverage = q(
        "SELECT l.scan_id, l.version, c.class_name, c.state FROM class_coverage c "
        "JOIN label_set l ON l.id = c.label_set_id ORDER BY 1, 2, 3"
    ).to_dict("records")
    stats = q(
        "SELECT l.scan_id, l.version, s.* EXCLUDE (label_set_id) FROM class_stats s "
        "JOIN label_set l ON l.id = s.label_set_id ORDER BY 1, 2, s.class_name"
    ).to_dict("records")
    splits = q(
        "SELECT l.scan_id, l.version, d.* EXCLUDE (label_set_id) FROM split_decision d "
        "JOIN label_set l ON l.id = d.label_set_id ORDER BY 1, 2, d.pair, d.component"
    ).to_dict("records")
    masks = {
        (r["scan_id"], r["version"]): ws.masks.path(r["mask_key"]).read_bytes()
        for r in q("SELECT scan_id, version, mask_key FROM label_set").to_dict("records")
    }
    issues = sorted(q("SELECT path, problem FROM ingest_issue").itertuples(index=False, name=None))
    return {
        "scans": _plain(scans),
        "label_sets": _plain(label_sets),
        "coverage": coverage,
        "stats": _plain(stats),
        "splits": _plain(splits),
        "masks": masks,
        "issues": issues,
    }


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with arrays as lists (numpy arrays do not compare with ==) and NaN as None."""
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if hasattr(v, "tolist"):
                v = v.tolist()
            if isinstance(v, float) and v != v:
                v = None
            clean[k] = v
        out.append(clean)
    return out


@pytest.fixture(scope="module")
def one_process(kits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: a one-process ingest's summary and snapshot."""
    ws = Workspace.open(tmp_path_factory.mktemp("ws-one"))
    summary = ingest(ws, "kits23", kits_data, progress=False)
    assert len(summary.added) == 5 and len(summary.skipped) == 2, summary.lines()
    return {"summary": summary, "snapshot": _snapshot(ws)}


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "batch_size"), [(2, None), (2, 2), (3, 1)])
def test_workers_give_the_one_process_catalog(
    kits_data: Path, one_process: dict[str, Any], tmp_path: Path, workers: int, batch_size: int | None
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", kits_data, progress=False, workers=workers, batch_size=batch_size)
    reference = one_process["summary"]
    assert (summary.added, summary.updated, summary.unchanged, summary.skipped) == (
        reference.added,
        reference.updated,
        reference.unchanged,
        reference.skipped,
    )
    assert _snapshot(ws) == one_process["snapshot"]
    assert set(ws.masks.keys()) == ws.catalog.mask_keys()  # the duplicate's mask file was taken back
    again = ingest(ws, "kits23", kits_data, progress=False, workers=workers)
    assert len(again.unchanged) == 5 and not again.added and not again.updated


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_rest_completes(
    kits_data: Path, one_process: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "case03.kill").write_text("1")  # the first worker that takes case03 dies by SIGKILL
    monkeypatch.setenv(KILL_HOOK_ENV, str(hooks))
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", kits_data, progress=False, workers=2)
    assert (hooks / "case03.kill").read_text() == "0"  # the hook fired
    assert summary.added == one_process["summary"].added
    assert _snapshot(ws) == one_process["snapshot"]


@pytest.mark.slow
def test_a_case_that_always_kills_its_worker_is_skipped_and_a_rerun_takes_it(
    kits_data: Path, one_process: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "case01.kill").write_text("99")
    monkeypatch.setenv(KILL_HOOK_ENV, str(hooks))
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", kits_data, progress=False, workers=2, retries=1)
    assert int((hooks / "case01.kill").read_text()) == 99 - 3  # once in the pool, twice alone
    assert "kits23:case01" not in summary.added and len(summary.added) == 4
    died = [problem for path, problem in summary.skipped if "case01" in path]
    assert len(died) == 1 and "worker process died 3 time(s)" in died[0]
    monkeypatch.delenv(KILL_HOOK_ENV)
    rerun = ingest(ws, "kits23", kits_data, progress=False, workers=2)
    assert rerun.added == ["kits23:case01"] and len(rerun.unchanged) == 4
    snapshot, reference = _snapshot(ws), one_process["snapshot"]
    assert {k: v for k, v in snapshot.items() if k != "issues"} == {
        k: v for k, v in reference.items() if k != "issues"
    }


@pytest.mark.slow
def _processes_started_from(folder: Path) -> list[int]:
    """Ids of live processes whose command line names ``folder`` (the driver script's folder is the fork
    server's and its workers' ``sys.path[0]``); zombies are not live."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            named = str(folder).encode() in (proc / "cmdline").read_bytes() and int(proc.name) != os.getpid()
            if named and b"\nState:\tZ" not in (proc / "status").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_killed_driver_leaves_whole_batches_and_a_rerun_completes(
    kits_data: Path, one_process: dict[str, Any], tmp_path: Path
) -> None:
    ws_path = tmp_path / "ws"
    script = textwrap.dedent(f"""
        import os, signal
        from storage.catalog import Catalog
        from storage.workspace import Workspace
        from workbench.ingest import ingest

        real = Catalog.add_label_sets
        calls = []

        def add(self, items):
            calls.append(len(items))
            if len(calls) == 2:  # die inside the second batch commit: masks published, rows not
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, items)

        if __name__ == "__main__":
            Catalog.add_label_sets = add
            ingest(Workspace.open({str(ws_path)!r}), "kits23", {str(kits_data)!r}, progress=False,
                   workers=2, batch_size=2)
    """)
    path = tmp_path / "driver.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    # the killed driver's workers (and the fork server they hold) end too: nothing keeps waiting for work
    deadline = time.monotonic() + 15
    while _processes_started_from(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_started_from(tmp_path) == []
    ws = Workspace.open(ws_path)
    assert ws.catalog.counts()["scan"] == 2  # exactly the first batch, nothing of the second
    orphans = set(ws.masks.keys()) - ws.catalog.mask_keys()
    assert len(orphans) >= 2  # the second batch's mask files (and any a worker ran ahead with)
    summary = ingest(ws, "kits23", kits_data, progress=False, workers=2)
    assert len(summary.unchanged) == 2 and len(summary.added) == 3
    snapshot, reference = _snapshot(ws), one_process["snapshot"]
    assert {k: v for k, v in snapshot.items() if k != "issues"} == {
        k: v for k, v in reference.items() if k != "issues"
    }
    assert set(ws.masks.keys()) - ws.catalog.mask_keys() == orphans  # left for `workbench gc`


@pytest.mark.parametrize(("workers", "batch_size", "retries"), [(0, None, 1), (2, 0, 1), (2, None, -1)])
def test_bad_settings_are_refused_before_anything_runs(
    kits_data: Path, tmp_path: Path, workers: int, batch_size: int | None, retries: int
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError, match="workers and batch_size must be >= 1"):
        ingest(
            ws, "kits23", kits_data, progress=False, workers=workers, batch_size=batch_size, retries=retries
        )
    assert ws.catalog.counts()["scan"] == 0


@pytest.mark.slow
def test_ray_gives_the_one_process_catalog(
    kits_data: Path, one_process: dict[str, Any], tmp_path: Path
) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip("ray is not installed (pip install ray==2.60.0)")
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", kits_data, progress=False, ray_address="local", workers=2)
    assert summary.added == one_process["summary"].added
    assert summary.skipped == one_process["summary"].skipped
    assert _snapshot(ws) == one_process["snapshot"]


@pytest.mark.slow
def test_the_cli_ingests_with_workers(kits_data: Path, one_process: dict[str, Any], tmp_path: Path) -> None:
    argv = ["--workspace", str(tmp_path / "ws"), "ingest", "kits23", str(kits_data), "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", *argv, "--batch-size", "3", "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr  # two cases were skipped (a duplicate, a damaged label)
    assert proc.stdout.splitlines()[0] == one_process["summary"].lines()[0]
    assert _snapshot(Workspace.open(tmp_path / "ws")) == one_process["snapshot"]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_the_cli_refuses_a_worker_count_below_one(value: str, tmp_path: Path) -> None:
    from workbench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--workspace", str(tmp_path / "ws"), "ingest", "kits23", str(tmp_path), "--workers", value])
    assert exit_.value.code == 2
