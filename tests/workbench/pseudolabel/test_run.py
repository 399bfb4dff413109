"""The pseudo-label job on the catalog: label sets on the original grid, resume after a kill, a refused
write, lost uncertainty completed, the CLI (the coded phantoms and the window model of conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.pseudolabel import RULE_NAMES, Segmenter, pseudolabel

Factory = Callable[..., Segmenter]


def test_pseudolabel_writes_pseudo_label_sets_on_the_original_lps_grid(
    lits_ws, window_segmenter: Factory, dice, native_truth
) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()
    summary = pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert sorted(summary.done) == sorted(truth) and not summary.failed
    for scan_id, (phantom, case) in truth.items():
        ls = ws.catalog.query("SELECT * FROM label_set WHERE scan_id = ? AND origin = 'pseudo'", [scan_id])
        assert len(ls) == 1
        row = ls.iloc[0]
        orig = ws.catalog.latest_original(scan_id)
        assert orig is not None and row["parent_id"] == orig["id"] and row["version"] == 2
        coverage = ws.catalog.coverage(row["id"])
        # LiTS annotates the liver: it is not predicted by default; the others are.
        assert coverage["liver"] == "not_annotated"
        assert {coverage[n] for n in ("spleen", "kidney_left", "kidney_right")} == {"annotated_present"}
        assert sum(v != "not_annotated" for v in coverage.values()) == 3
        for name, floor in (("spleen", 0.75), ("kidney_left", 0.7), ("kidney_right", 0.7)):
            got = ws.masks.read(row["mask_key"], name)
            want = native_truth(phantom, case, name)
            assert (
                got.shape
                == want.shape
                == tuple(ws.catalog.query("SELECT shape FROM scan WHERE id = ?", [scan_id])["shape"].iloc[0])
            )
            assert dice(got, want) > floor, name
        stats = ws.catalog.query("SELECT * FROM class_stats WHERE label_set_id = ?", [row["id"]])
        assert set(stats["class_name"]) == {"spleen", "kidney_left", "kidney_right"}
    run = ws.catalog.query("SELECT * FROM run WHERE id = ?", [summary.run_id]).iloc[0]
    assert run["kind"] == "pseudolabel" and run["checkpoint_sha256"] == "window-model"
    assert run["device"] == "cpu" and run["finished_at"] is not None and "mean_scan_s" in run["timings"]
    # The post-processing rules applied are recorded with the run (as nnU-Net records its pp functions).
    assert json.loads(run["config"])["postprocess"] == list(RULE_NAMES)


def test_resume_after_a_kill_skips_finished_scans(lits_ws, window_segmenter: Factory) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()

    def kill(scan_id: str, outcome: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudolabel(ws, seg, low_res_mm=6.0, progress=False, on_scan=kill)
    first = ws.catalog.query("SELECT scan_id FROM label_set WHERE origin = 'pseudo'")["scan_id"].tolist()
    assert len(first) == 1
    summary = pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert summary.skipped == first and summary.done == [s for s in sorted(truth) if s not in first]
    again = pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(truth)
    assert ws.catalog.query("SELECT count(*) AS n FROM label_set WHERE origin = 'pseudo'")["n"].iloc[0] == 2
    # Another checkpoint is another model: it labels every scan again.
    other = pseudolabel(ws, window_segmenter(sha="other-model"), low_res_mm=6.0, progress=False)
    assert sorted(other.done) == sorted(truth)


def test_a_refused_catalog_write_leaves_no_mask_and_a_hard_kill_orphan_is_collected(
    lits_ws, monkeypatch, window_segmenter: Factory
) -> None:  # type: ignore[no-untyped-def]
    ws, _ = lits_ws
    seg = window_segmenter()
    before = set(ws.masks.keys())

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(ws.catalog, "add_label_set", refuse)
    with pytest.raises(OSError, match="disk full"):
        pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert set(ws.masks.keys()) == before
    monkeypatch.undo()
    # A hard kill between the mask write and the catalog write leaves a file no label set names.
    orphan = "ls-" + "0" * 20
    ws.masks.write_label_set(orphan, {"spleen": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    pseudolabel(ws, seg, low_res_mm=6.0, progress=False)  # a later run leaves it alone: not its business
    assert orphan in set(ws.masks.keys())
    assert ws.collect_garbage() == []  # too young: a running job may be about to commit it
    assert ws.collect_garbage(min_age_s=0) == [ws.masks.path(orphan)]
    assert set(ws.masks.keys()) == ws.catalog.mask_keys()


def test_uncertainty_lost_to_a_kill_is_completed_without_a_second_label_set(
    lits_ws, monkeypatch, window_segmenter: Factory
) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()
    scan = sorted(truth)[0]

    def die(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(ws.catalog, "add_uncertainty", die)  # the kill hits the uncertainty transaction
    with pytest.raises(KeyboardInterrupt):
        pseudolabel(ws, seg, scans=[scan], low_res_mm=6.0, progress=False)
    monkeypatch.undo()
    ls = ws.catalog.query("SELECT id FROM label_set WHERE origin = 'pseudo'")["id"].tolist()
    assert len(ls) == 1 and ws.catalog.query("SELECT count(*) AS n FROM uncertainty")["n"].iloc[0] == 0
    summary = pseudolabel(ws, seg, scans=[scan], low_res_mm=6.0, progress=False)
    assert summary.done == [scan]
    assert ws.catalog.query("SELECT id FROM label_set WHERE origin = 'pseudo'")["id"].tolist() == ls
    unc = ws.catalog.query("SELECT * FROM uncertainty")
    assert set(unc["label_set_id"]) == set(ls) and set(unc["class_name"]) == {
        "spleen",
        "kidney_left",
        "kidney_right",
    }


def test_cli_pseudolabel_and_queue(lits_ws, tmp_path: Path, capsys, random_checkpoint) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    ckpt = random_checkpoint(tmp_path / "m.pt", ("spleen", "liver", "kidney_left", "kidney_right"))
    args = [
        "--workspace",
        str(ws.root),
        "pseudolabel",
        str(ckpt),
        "--low-res-mm",
        "6",
        "--no-progress",
        "--device",
        "cpu",
        "--source",
        "lits",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 scans pseudo-labelled" in out
    assert main(args) == 0
    assert "0 scans pseudo-labelled" in capsys.readouterr().out
    assert main(["--workspace", str(ws.root), "queue", "--top", "3"]) == 0
    notice, *lines = capsys.readouterr().out.strip().splitlines()
    assert notice.endswith(
        "its training record is unknown (an older checkpoint); its items are served as before"
    )
    assert len(lines) == 3 and all(any(s in line for s in truth) for line in lines)
    assert main(["--workspace", str(ws.root), "pseudolabel", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ interrupted runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def _pseudolabel_killed_at_second_uncertainty(ws_root: Path) -> None:
    """Run a pseudo-label job in a subprocess that SIGKILLs itself when it stores the second scan's
    uncertainty rows: scan 1 is complete (but never rescored), scan 2 has its label set and map only."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]
        from conftest import _window_segmenter
        from storage.workspace import Workspace
        from workbench.pseudolabel import pseudolabel
        ws = Workspace.open({str(ws_root)!r})
        real, calls = ws.catalog.add_uncertainty, []
        def add(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        ws.catalog.add_uncertainty = add
        pseudolabel(ws, _window_segmenter(), low_res_mm=6.0, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_is_closed_its_scores_redone_and_its_orphan_map_removed(
    lits_ws, window_segmenter: Factory
) -> None:  # type: ignore[no-untyped-def]
    from storage.maps import uncertainty_map_path
    from workbench.pseudolabel.run import recover_interrupted_runs
    from workbench.pseudolabel.scoring import rescore

    ws, truth = lits_ws
    first, second = sorted(truth)
    _pseudolabel_killed_at_second_uncertainty(ws.root)
    [killed] = ws.catalog.unfinished_runs("pseudolabel")
    run_id = str(killed["id"])
    config = json.loads(killed["config"])
    assert {"pid", "host", "pid_start"} <= set(config)
    assert set(ws.catalog.uncertainty_items(run_id)["scan_id"]) == {first}
    orphan_map = uncertainty_map_path(ws, run_id, second)
    assert orphan_map.is_file() and uncertainty_map_path(ws, run_id, first).is_file()

    summary = pseudolabel(ws, window_segmenter(), low_res_mm=6.0, progress=False)
    assert summary.recovered == [run_id] and f"closed interrupted run {run_id}" in "\n".join(summary.lines())
    row = ws.catalog.query("SELECT finished_at, metrics FROM run WHERE id = ?", [run_id]).iloc[0]
    metrics = json.loads(row["metrics"])
    assert row["finished_at"] is not None and metrics["interrupted"] is True
    assert metrics["label_sets"] == 2 and metrics["maps_removed"] == 1 and metrics["rescored"] > 0
    assert not orphan_map.exists() and uncertainty_map_path(ws, run_id, first).is_file()
    # the killed run's queue scores are those a finished run has: rescoring again changes nothing
    before = ws.catalog.uncertainty_items(run_id).merge(
        ws.catalog.query("SELECT scan_id, class_name, run_id, score FROM uncertainty")
    )
    rescore(ws, run_id)
    after = ws.catalog.uncertainty_items(run_id).merge(
        ws.catalog.query("SELECT scan_id, class_name, run_id, score FROM uncertainty")
    )
    assert before["score"].tolist() == after["score"].tolist()
    # the label set the kill left without uncertainty was completed by the new run, not written twice
    assert summary.done == [second] and summary.skipped == [first]
    assert ws.catalog.query("SELECT count(*) AS n FROM label_set WHERE origin = 'pseudo'")["n"].iloc[0] == 2
    assert uncertainty_map_path(ws, summary.run_id, second).is_file()
    assert recover_interrupted_runs(ws) == []  # closed once
    assert ws.catalog.unfinished_runs("pseudolabel") == []


def test_a_run_whose_process_lives_is_left_alone(lits_ws) -> None:  # type: ignore[no-untyped-def]
    from workbench.pseudolabel.run import process_alive, recover_interrupted_runs, this_process

    ws, _ = lits_ws
    me = this_process()
    ws.catalog.start_run("run-pl-alive", "pseudolabel", config={"pid": me["pid"], "host": me["host"]})
    ws.catalog.start_run("run-pl-elsewhere", "pseudolabel", config={"pid": 1, "host": "another-host"})
    ws.catalog.start_run("run-pl-legacy", "pseudolabel", config={"checkpoint": "x"})
    assert recover_interrupted_runs(ws) == []
    assert len(ws.catalog.unfinished_runs("pseudolabel")) == 3
    assert process_alive(me["pid"], me["pid_start"])
    if me["pid_start"] is not None:
        assert not process_alive(me["pid"], me["pid_start"] + 1)  # the pid reused by a later process


def test_a_run_that_raises_closes_itself(lits_ws, window_segmenter: Factory) -> None:  # type: ignore[no-untyped-def]
    ws, _ = lits_ws

    def interrupt(scan_id: str, outcome: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudolabel(ws, window_segmenter(), low_res_mm=6.0, progress=False, on_scan=interrupt)
    assert ws.catalog.unfinished_runs("pseudolabel") == []
    metrics = ws.catalog.query("SELECT metrics FROM run WHERE kind = 'pseudolabel'")["metrics"].iloc[0]
    assert json.loads(metrics)["interrupted"] is True


@pytest.mark.parametrize(
    ("spacing", "trained", "note"),
    [
        ((3.0, 3.0, 3.0), (1.5, 1.5, 1.5), "inferred at 3 mm; the model was trained at 1.5 mm"),
        ((1.5, 1.5, 1.5), (1.5, 1.5, 1.5), None),
        ((2.0, 2.0, 4.0), (1.5, 1.5, 1.5), "inferred at 2 x 2 x 4 mm; the model was trained at 1.5 mm"),
    ],
)
def test_the_run_record_says_when_a_run_is_coarser_than_the_model(
    spacing: tuple[float, ...], trained: tuple[float, ...], note: str | None
) -> None:
    from workbench.pseudolabel.run import spacing_note

    assert spacing_note(spacing, trained) == note
