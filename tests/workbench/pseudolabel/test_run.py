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
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(any(s in line for s in truth) for line in lines)
    assert main(["--workspace", str(ws.root), "pseudolabel", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
