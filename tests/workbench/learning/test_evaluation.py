"""Held-out evaluation end to end: catalog rows, run record, report files, given truths and the CLI.
(``add_scan``, ``add_pseudo`` and ``add_plain_scans`` are in this folder's conftest.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench.cli import main
from workbench.learning import evaluation as ev
from workbench.learning import split
from workbench.learning.metrics import ScanTruth

PRESENT, ABSENT = "annotated_present", "annotated_absent"
SHAPE = (14, 12, 10)
SPACING = (1.5, 2.0, 3.0)
AddScan = Callable[[Workspace, str, str, dict[str, np.ndarray], set[str]], str]
AddPseudo = Callable[[Workspace, str, dict[str, np.ndarray], str], str]
AddPlainScans = Callable[[Workspace, dict[str, int]], None]


def cube(
    shape: tuple[int, int, int], lo: tuple[int, int, int], size: int | tuple[int, int, int]
) -> np.ndarray:
    s = (size,) * 3 if isinstance(size, int) else size
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + s[0], lo[1] : lo[1] + s[1], lo[2] : lo[2] + s[2]] = True
    return m


# ------------------------------------------------------------------------------------- end to end


def build_eval_ws(root: Path, add_scan: AddScan, add_pseudo: AddPseudo) -> dict[str, dict[str, np.ndarray]]:
    """Two sources, four scans each; fraction 0.5 holds out two per source. lits annotates liver and
    liver_tumor, btcv liver and spleen. Run ``run-a`` predicts every class of every scan."""
    ws = Workspace.open(root)
    truths: dict[str, dict[str, np.ndarray]] = {}
    with ws.catalog.session():  # one connection for the burst of writes
        for source, annotated in (("lits", {"liver", "liver_tumor"}), ("btcv", {"liver", "spleen"})):
            for i in range(4):
                masks = {"liver": cube(SHAPE, (2, 2, 2), (6 + i % 2, 5, 4))}
                if source == "lits" and i % 2 == 0:
                    masks["liver_tumor"] = cube(SHAPE, (3, 3, 3), 2)
                if source == "btcv":
                    masks["spleen"] = cube(SHAPE, (9, 6, 5), 3)
                truths[add_scan(ws, source, f"c{i}", masks, annotated)] = masks
        for scan_id, masks in truths.items():
            pred = {
                "liver": np.roll(masks["liver"], 1, axis=2),
                "spleen": masks.get("spleen", np.zeros(SHAPE, bool)),
                "liver_tumor": cube(
                    SHAPE, (4, 4, 4), 1
                ),  # one voxel everywhere: detected, or a false positive
                "stomach": cube(SHAPE, (0, 0, 0), 2),
            }
            add_pseudo(ws, scan_id, pred, "run-a")
    return truths


@pytest.fixture(scope="module")
def eval_template(
    tmp_path_factory: pytest.TempPathFactory, add_scan: AddScan, add_pseudo: AddPseudo
) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("eval") / "ws"
    return root, build_eval_ws(root, add_scan, add_pseudo)


@pytest.fixture
def eval_ws(
    eval_template: tuple[Path, dict[str, dict[str, np.ndarray]]], tmp_path: Path
) -> tuple[Workspace, dict[str, dict[str, np.ndarray]]]:
    """A private copy of the evaluation workspace (:func:`build_eval_ws`)."""
    shutil.copytree(eval_template[0], tmp_path / "ws")
    return Workspace.open(tmp_path / "ws"), eval_template[1]


def test_evaluate_end_to_end(eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]]) -> None:
    ws, truths = eval_ws
    result = ev.evaluate(ws, "run-a", fraction=0.5, seed=0, tolerance_mm=2.0)
    held = split.held_out_split(ws)
    assert len(held) == 4 and {s.split(":")[0] for s in held} == {"lits", "btcv"}
    assert set(result.scans["scan_id"]) == held

    # Every item recomputed independently: the liver is shifted one voxel along k (3 mm > 2 mm tolerance).
    expected = []
    for scan_id in sorted(held):
        truth = truths[scan_id]
        source = scan_id.split(":")[0]
        annotated = {"lits": ["liver", "liver_tumor"], "btcv": ["liver", "spleen"]}[source]
        for name in annotated:
            t = truth.get(name, np.zeros(SHAPE, bool))
            p = {
                "liver": np.roll(truth["liver"], 1, axis=2),
                "spleen": truth.get("spleen", np.zeros(SHAPE, bool)),
                "liver_tumor": cube(SHAPE, (4, 4, 4), 1),
            }[name]
            inter = (t & p).sum()
            dice = 1.0 if not t.any() and not p.any() else 2 * inter / (t.sum() + p.sum())
            expected.append((scan_id, name, dice))
    got = result.items.set_index(["scan_id", "class_name"])["dice"]
    assert len(got) == len(expected)
    for scan_id, name, dice in expected:
        assert got[(scan_id, name)] == pytest.approx(dice)
    assert not result.items["class_name"].eq("stomach").any()
    liver_nsd = result.items[result.items["class_name"] == "liver"]["nsd"]
    assert (liver_nsd < 1).all() and (liver_nsd > 0).all()

    # Stored: the run, its metrics JSON, one evaluation row per item, and the report files.
    run = ws.catalog.query("SELECT * FROM run WHERE id = ?", [result.run_id]).iloc[0]
    assert run["kind"] == "evaluate" and run["finished_at"] is not None
    metrics = json.loads(run["metrics"])
    assert metrics["predictions"] == "run-a" and metrics["tolerance_mm"] == 2.0
    assert metrics["mean_dice"] == pytest.approx(result.mean_dice)
    assert metrics["by_class"]["spleen"]["dice"] == pytest.approx(1.0)
    assert set(metrics["by_source"]) == {"lits", "btcv"}
    assert json.loads(run["config"])["split"] == {"fraction": 0.5, "seed": 0}
    rows = ws.catalog.query("SELECT * FROM evaluation WHERE run_id = ?", [result.run_id])
    assert len(rows) == len(result.items) and set(rows["tolerance_mm"]) == {2.0}
    assert set(rows["prediction_label_set_id"].str.startswith("ls-pseudo-run-a")) == {True}
    report = result.report_dir
    assert report == ws.root / "reports" / result.run_id
    assert {p.name for p in report.iterdir()} >= {"report.md", "metrics.csv", "detection.csv", "items.csv"}
    csv = pd.read_csv(report / "metrics.csv")
    assert set(csv["source_id"]) == {"all", "lits", "btcv"}
    text = (report / "report.md").read_text()
    assert "NSD tolerance: 2 mm" in text and "| liver_tumor |" in text

    # Detection: the held-out lits scans are one tumour scan and one tumour-free scan; one voxel is
    # predicted in both, so sensitivity 1/1 and specificity 0/1; btcv scans are excluded.
    det = result.detection.set_index(["source_id", "class_name"]).loc[("all", "liver_tumor")]
    lits_held = sorted(s for s in held if s.startswith("lits:"))
    n_tumour = sum("liver_tumor" in truths[s] for s in lits_held)
    assert (det["tumour_scans"], det["detected"]) == (n_tumour, n_tumour)
    assert (det["tumour_free"], det["false_positives"]) == (2 - n_tumour, 2 - n_tumour)
    assert det["excluded"] == 2


def test_evaluate_counts_annotated_classes_the_run_did_not_predict(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]], add_pseudo: AddPseudo
) -> None:
    ws, truths = eval_ws
    for scan_id in truths:
        add_pseudo(
            ws, scan_id, {"liver": truths[scan_id]["liver"], "stomach": cube(SHAPE, (0, 0, 0), 2)}, "run-b"
        )
    result = ev.evaluate(ws, "run-b", fraction=0.5)
    assert set(result.items["class_name"]) == {"liver"}
    assert (result.items["dice"] == 1.0).all() and (result.items["nsd"] == 1.0).all()
    assert len(result.unpredicted) == 4  # liver_tumor of two lits scans, spleen of two btcv scans
    assert any("--all-classes" in line for line in result.lines())


def test_evaluate_refuses_unknown_runs_and_empty_splits(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]],
    tmp_path: Path,
    add_pseudo: AddPseudo,
    add_plain_scans: AddPlainScans,
) -> None:
    ws, _ = eval_ws
    with pytest.raises(HarmonizeError, match="run-a"):
        ev.evaluate(ws, "run-nope")
    small = Workspace.open(tmp_path / "small")
    add_plain_scans(small, {"one": 1})
    add_pseudo(small, "one:c000", {"liver": np.zeros(SHAPE, bool)}, "run-s")
    with pytest.raises(HarmonizeError, match="no scan is held out"):
        ev.evaluate(small, "run-s")
    assert small.catalog.counts()["run"] == 0


def test_evaluate_without_predictions_on_held_out_scans_fails_clearly(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]], add_pseudo: AddPseudo
) -> None:
    ws, _ = eval_ws
    train = sorted(split.training_scan_ids(ws, fraction=0.5))
    add_pseudo(ws, train[0], {"liver": np.zeros(SHAPE, bool)}, "run-train-only")
    with pytest.raises(HarmonizeError, match="none of the 4 held-out scans"):
        ev.evaluate(ws, "run-train-only")


def test_cli_evaluate(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]], capsys: pytest.CaptureFixture[str]
) -> None:
    ws, _ = eval_ws
    split.held_out_split(ws, fraction=0.5)
    code = main(["--workspace", str(ws.root), "evaluate", "run-a", "--tolerance-mm", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "NSD tolerance 3 mm" in out and "report:" in out
    assert ws.catalog.query("SELECT count(*) AS n FROM run WHERE kind = 'evaluate'")["n"].iloc[0] == 1
    # liver shifted 3 mm, tolerance 3 mm: every liver boundary voxel is within tolerance
    rows = ws.catalog.query("SELECT nsd FROM evaluation WHERE class_name = 'liver'")
    assert (rows["nsd"] == 1.0).all()
    assert main(["--workspace", str(ws.root), "evaluate", "run-nope"]) == 2
    assert "wrote no pseudo label set" in capsys.readouterr().err


def test_given_truths_replace_the_catalog_and_only_held_out_ones_count(
    eval_ws: tuple[Workspace, dict[str, dict[str, np.ndarray]]],
) -> None:
    ws, truths = eval_ws
    held = split.held_out_split(ws, fraction=0.5)
    # A complete truth for every scan: the stomach is annotated absent everywhere, so the run's stomach
    # guess (8 voxels in every scan) now scores 0, and only the held-out scans are scored.
    given = [
        ScanTruth(
            s, s.split(":")[0], SPACING, {"liver": PRESENT, "stomach": ABSENT}, {"liver": m["liver"]}, SHAPE
        )
        for s, m in truths.items()
    ]
    result = ev.evaluate(ws, "run-a", truths=given)
    assert set(result.scans["scan_id"]) == held and result.truth == "given"
    assert set(result.items["class_name"]) == {"liver", "stomach"}
    stomach = result.items[result.items["class_name"] == "stomach"]
    assert len(stomach) == 4 and (stomach["dice"] == 0).all() and (stomach["predicted_voxels"] == 8).all()
    run = ws.catalog.query("SELECT config FROM run WHERE id = ?", [result.run_id]).iloc[0]
    assert json.loads(run["config"])["truth"] == "given"


# ------------------------------------------------------------------------ truth is expert labels only


def test_an_accepted_pseudo_label_is_never_truth(
    tmp_path: Path, add_scan: AddScan, add_pseudo: AddPseudo
) -> None:
    """The truth is ``current_label_of(['revised', 'original'])``: a held-out scan's accepted spleen
    prediction is not scored, its original liver is; asking for pseudo bases is refused."""
    from workbench.review import record_decision

    ws = Workspace.open(tmp_path / "ws")
    liver = cube(SHAPE, (2, 2, 2), 4)
    scan = add_scan(ws, "lits", "c0", {"liver": liver}, {"liver"})
    ls = add_pseudo(
        ws, scan, {"spleen": cube(SHAPE, (8, 6, 5), 3), "liver": cube(SHAPE, (2, 2, 2), 3)}, "run-a"
    )
    record_decision(ws, scan, "spleen", ls, "accept", "Dr Ada")
    record_decision(ws, scan, "liver", ls, "accept", "Dr Ada")
    (truth,) = ev.catalog_truth(ws, [scan])
    assert truth.states == {"liver": PRESENT}
    assert int(truth.masks["liver"].sum()) == 4**3 and truth.label_sets["liver"] == "ls-orig-lits-c0"
    for bad in (("revised", "original", "accepted"), ("pseudo",), ()):
        with pytest.raises(ValueError, match="evaluation truth must be expert labels"):
            list(ev.catalog_truth(ws, [scan], bad))
        with pytest.raises(ValueError, match="evaluation truth must be expert labels"):
            ev.evaluate_predictions(ws, lambda s: None, name="x", truth_origins=bad)
