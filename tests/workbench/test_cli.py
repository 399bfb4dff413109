"""The ``workbench`` command: a thin layer, checked end to end in a subprocess and in-process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import all_protocols, get_protocol
from storage.workspace import resolve_workspace
from workbench.cli import main

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_python_dash_m_workbench_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "sources", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["source"] for r in rows} == set(all_protocols())
    kits = next(r for r in rows if r["source"] == "kits23")
    assert kits["annotated"] == "kidney_right, kidney_left, kidney_tumor, kidney_cyst"
    assert kits["split"] == "kidney"


def test_ingest_stats_export(tmp_path: Path) -> None:
    write_native(make_phantom(21, shape=(64, 56, 40)), get_protocol("abdomenct_1k"), tmp_path / "d", "00001")
    ws = str(tmp_path / "ws")
    code, out, _ = _run("--workspace", ws, "ingest", "abdomenct_1k", str(tmp_path / "d"), "--no-progress")
    assert code == 0 and "1 added" in out
    code, out, _ = _run("--workspace", ws, "stats", "--format", "json")
    rows = {r["class"]: r for r in json.loads(out)}
    assert len(rows) == 32
    assert rows["kidney_left"]["present"] == 1 and rows["kidney_left"]["abdomenct_1k"] == 1
    assert rows["spleen"]["annotated"] == 1 and rows["stomach"]["not_annotated"] == 1
    code, out, _ = _run("--workspace", ws, "stats", "--by-source", "--format", "csv")
    assert out.splitlines()[0] == "class_name,source_id,annotated,present,absent,not_annotated"
    code, out, _ = _run("--workspace", ws, "export", "abdomenatlas", str(tmp_path / "out"), "--no-progress")
    assert (
        code == 0
        and (tmp_path / "out" / "abdomenct_1k_00001" / "segmentations" / "kidney_left.nii.gz").exists()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "no_such_source", "."], "unknown source 'no_such_source'; known sources: abdomenatlas10"),
        (["ingest", "kits23", "/no/such/folder"], "/no/such/folder: dataset root is not a folder"),
        (["export", "abdomenatlas", "OUT", "--class", "kidneys"], "unknown classes ['kidneys']"),
    ],
)
def test_errors_are_one_clear_line(argv: list[str], message: str, tmp_path: Path) -> None:
    code, _, err = _run("--workspace", str(tmp_path / "ws"), *argv)
    assert code == 2
    assert err.startswith("workbench: error: ") and message in err
    assert err.count("\n") == 1


def test_workspace_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKBENCH_HOME", raising=False)
    assert resolve_workspace() == tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "env"))
    assert resolve_workspace() == tmp_path / "env"
    assert resolve_workspace(tmp_path / "flag") == tmp_path / "flag"
    assert os.environ["WORKBENCH_HOME"] == str(tmp_path / "env")


def test_embed_stores_a_vocabulary_and_clip_offline_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = str(tmp_path / "ws")
    code, out, _ = _run("--workspace", ws, "embed", "--encoder", "minilm", "--template", "V2")
    assert code == 0 and "stored text vocabulary 'minilm-V2': 32 classes" in out and "not CLIP" in out
    code, _, err = _run("--workspace", ws, "embed", "--encoder", "clip")
    assert code == 2 and err.startswith("workbench: error: CLIP weights") and "local file" in err
    code, _, err = _run("--workspace", ws, "train", "--vocabulary", "nope")
    assert code == 2 and "no text vocabulary 'nope'" in err


def test_train_with_a_two_class_vocabulary_records_its_schedule_and_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_native(make_phantom(22, shape=(48, 48, 32)), get_protocol("abdomenct_1k"), tmp_path / "d", "00001")
    ws = str(tmp_path / "ws")
    assert _run("--workspace", ws, "ingest", "abdomenct_1k", str(tmp_path / "d"), "--no-progress")[0] == 0
    code, out, _ = _run("--workspace", ws, "embed", "--class", "spleen", "--class", "liver", "--name", "two")
    assert code == 0 and "stored text vocabulary 'two': 2 classes" in out
    code, _, err = _run("--workspace", ws, "embed", "--class", "kidneys")
    assert code == 2 and "unknown classes ['kidneys']" in err
    # The scan annotates five classes; the model has heads for two and trains on those only.
    argv = ["--spacing", "6", "--patch", "32", "--epochs", "5", "--max-steps", "2", "--no-progress"]
    flags = ["--lr", "2e-3", "--lr-schedule", "cosine", "--grad-clip", "1.0"]
    code, out, err = _run("--workspace", ws, "train", "--vocabulary", "two", *argv, *flags)
    assert code == 0, err
    assert "2 steps" in out
    from storage.workspace import Workspace
    from workbench.learning.vocabularies import load_vocabulary
    from workbench.model.checkpoint import load_checkpoint

    workspace = Workspace.open(ws)
    run = workspace.catalog.query("SELECT config FROM run WHERE kind = 'train'")
    config = json.loads(run["config"].iloc[0])
    assert config["lr_schedule"] == "cosine" and config["grad_clip"] == 1.0 and config["lr"] == 2e-3
    vocab = load_vocabulary(workspace, "two")
    assert vocab.class_names == ("spleen", "liver")
    assert load_checkpoint(workspace.root / "models" / "latest" / "last.pt", vocab).model.n_classes == 2


@pytest.mark.parametrize(
    ("backbone", "patch", "ok"),
    [
        ("small_unet", 16, False),
        ("small_unet", 32, True),
        ("small_unet", 40, False),
        ("swinunetr", 64, True),
        ("swinunetr", 48, False),
        ("unet3d", 24, True),
        ("unet3d", 20, False),
    ],
)
def test_train_config_checks_the_patch_against_the_backbone(backbone: str, patch: int, ok: bool) -> None:
    from workbench.model.train import TrainConfig
    from workbench.model.transforms import PipelineConfig

    make = lambda: TrainConfig(backbone=backbone, pipeline=PipelineConfig(patch=(patch,) * 3))  # noqa: E731
    if ok:
        make()
    else:
        with pytest.raises(ValueError, match=f"does not fit the {backbone} backbone"):
            make()


def test_gc_lists_then_removes_only_old_unreferenced_masks(tmp_path: Path) -> None:
    import numpy as np

    from storage.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    ws.masks.write_label_set("ls-orphan", {"liver": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    path = ws.masks.path("ls-orphan")
    code, out, _ = _run("--workspace", str(ws.root), "gc", "--dry-run")
    assert code == 0 and "would remove 0 file(s)" in out  # too young by default
    code, out, _ = _run("--workspace", str(ws.root), "gc", "--dry-run", "--min-age-s", "0")
    assert code == 0 and f"would remove {path}" in out and path.exists()
    code, out, _ = _run("--workspace", str(ws.root), "gc", "--min-age-s", "0")
    assert code == 0 and f"removed {path}" in out and "removed 1 file(s)" in out
    assert not path.exists()


def test_export_skips_a_damaged_case_names_it_and_exits_1(demo_ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scan = "btcv:demo000"
    path = demo_ws.masks.path(demo_ws.catalog.latest_original(scan)["id"])
    path.write_bytes(path.read_bytes()[:-10])
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        "--workspace", str(demo_ws.root), "export", "nnunet", str(out), "--source", "btcv", "--no-progress"
    )
    assert code == 1
    assert f"skipped {scan} (btcv_demo000): {path}: mask store file is truncated" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["scan_id"] for s in manifest["skipped"]] == [scan]
    assert f"exported {len(manifest['cases'])} cases" in stdout and "skipped 1 damaged case(s)" in stdout


def _ingested(tmp_path: Path) -> str:
    write_native(make_phantom(23, shape=(40, 36, 24)), get_protocol("abdomenct_1k"), tmp_path / "d", "00001")
    ws = str(tmp_path / "ws")
    assert _run("--workspace", ws, "ingest", "abdomenct_1k", str(tmp_path / "d"), "--no-progress")[0] == 0
    return ws


def test_check_backup_and_restore_on_the_command_line(tmp_path: Path) -> None:
    from storage.workspace import Workspace

    ws = _ingested(tmp_path)
    code, out, _ = _run("--workspace", ws, "check")
    assert (
        code == 0
        and out.strip() == "checked 1 label sets, 1 mask files, 0 uncertainty maps: 0 problem(s), 0 orphan(s)"
    )
    bk = str(tmp_path / "bk")
    code, out, _ = _run("--workspace", ws, "backup", bk)
    assert code == 0 and f"1 mask files and 0 uncertainty maps to {bk}" in out

    (key,) = Workspace.open(ws).masks.keys()
    mask = Workspace.open(ws).masks.path(key)
    os.truncate(mask, mask.stat().st_size - 10)
    code, out, _ = _run("--workspace", ws, "check")
    assert code == 1 and out.splitlines()[0].startswith(f"{mask}: mask file is damaged")
    code, out, _ = _run("--workspace", ws, "check", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and [p["path"] for p in report["problems"]] == [str(mask)]

    code, out, _ = _run("--workspace", ws, "check", "--repair-from", bk)
    assert code == 0 and out.splitlines()[0] == f"{mask}: restored from {bk}"
    os.truncate(mask, mask.stat().st_size - 10)

    code, _, err = _run("restore", bk, ws)
    assert (
        code == 2
        and err.startswith("workbench: error: ")
        and "pass --force" in err
        and len(err.splitlines()) == 1
    )
    code, out, _ = _run("restore", bk, ws, "--force")
    assert code == 0 and "were moved to" in out
    assert _run("--workspace", ws, "check")[0] == 0
    assert _run("--workspace", str(tmp_path / "new"), "restore", bk)[0] == 0  # target from --workspace
    assert _run("--workspace", str(tmp_path / "new"), "check")[0] == 0


def test_check_and_backup_refuse_a_folder_without_a_workspace(tmp_path: Path) -> None:
    for argv in (["check"], ["backup", str(tmp_path / "bk")]):
        code, _, err = _run("--workspace", str(tmp_path / "none"), *argv)
        assert code == 2 and "no workspace here (no catalog.duckdb)" in err
    assert not (tmp_path / "none").exists() and not (tmp_path / "bk").exists()


def test_a_damaged_catalog_gives_one_line_and_the_way_back_without_a_traceback(tmp_path: Path) -> None:
    ws = _ingested(tmp_path)
    catalog = Path(ws) / "catalog.duckdb"
    data = bytearray(catalog.read_bytes())
    data[:64] = bytes(64)
    catalog.write_bytes(bytes(data))
    for command in ("stats", "check", "queue"):
        proc = subprocess.run(
            [sys.executable, "-m", "workbench", "--workspace", ws, command],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(
            f"workbench: error: {catalog}: the catalog is damaged or not a workbench catalog"
        )
        assert "`workbench restore BACKUP WS`" in line and "move the file aside and re-ingest" in line
    assert catalog.read_bytes() == bytes(data)


# ------------------------------------------------------------------------------- workbench review (#13)


def _queued_colon(ws_root: Path, offset: int = 0) -> str:
    """One pseudo colon (btcv does not annotate it) of btcv:demo000 in the queue; returns its label set."""
    import numpy as np

    from harmonize.taxonomy import class_names
    from storage.catalog import LabelSetRecord
    from storage.workspace import Workspace

    ws = Workspace.open(ws_root)
    shape = tuple(int(s) for s in ws.catalog.scan_row("btcv:demo000")["shape"])  # type: ignore[index]
    colon = np.zeros(shape, bool)
    colon[10 + offset : 18 + offset, 10:18, 10:18] = True
    ls = f"ls-cli-{offset}"
    ws.masks.write_label_set(ls, {"colon": colon}, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov["colon"] = "annotated_present"
    record = LabelSetRecord(id=ls, scan_id="btcv:demo000", version=None, origin="pseudo", mask_key=ls)
    ws.catalog.add_label_set(record, cov, [])
    ws.catalog.add_uncertainty(
        [
            {
                "scan_id": "btcv:demo000",
                "class_name": "colon",
                "run_id": f"run-{offset}",
                "label_set_id": ls,
                "score": 0.99,
                "signals": {},
                "reasons": [],
            }
        ]
    )
    return ls


def test_review_list_accept_undo_on_the_command_line(demo_ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = str(demo_ws.root)
    ls = _queued_colon(demo_ws.root)
    code, out, _ = _run("--workspace", root, "review", "list", "--class", "colon", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [(r["scan_id"], r["label_set_id"], r["status"]) for r in rows] == [
        ("btcv:demo000", ls, "pending")
    ]
    code, out, _ = _run(
        "--workspace", root, "review", "accept", "btcv:demo000", "colon", "--reviewer", "Dr Ada"
    )
    assert code == 0 and out.startswith(f"recorded accept of colon on btcv:demo000 ({ls}) by Dr Ada: rv-")
    review_id = out.strip().rsplit(" ", 1)[-1]
    code, out, _ = _run("--workspace", root, "review", "list", "--class", "colon", "--format", "json")
    assert json.loads(out) == []
    # the next run predicts the cube moved by 2 voxels along i: 6 x 8 x 8 shared, Dice 0.75 < 0.9: back
    _queued_colon(demo_ws.root, offset=2)
    code, out, _ = _run("--workspace", root, "review", "list", "--class", "colon", "--format", "json")
    (row,) = json.loads(out)
    assert (
        row["note"]
        == "re-queued: the new prediction differs from the label Dr Ada accepted, Dice 0.75 (< 0.9)"
    )
    code, out, _ = _run("--workspace", root, "review", "undo", review_id, "--reviewer", "Dr Ada")
    assert code == 0 and out.startswith(f"undid {review_id} by Dr Ada: rv-")


def test_review_double_reading_and_adjudication_on_the_command_line(demo_ws) -> None:  # type: ignore[no-untyped-def]
    root = str(demo_ws.root)
    ls = _queued_colon(demo_ws.root)
    assert _run("--workspace", root, "review", "share", "1")[0] == 0
    base = ("--workspace", root, "review")
    assert _run(*base, "accept", "btcv:demo000", "colon", "--reviewer", "Dr A")[0] == 0
    code, out, _ = _run(*base, "list", "--reviewer", "Dr B", "--class", "colon", "--format", "json")
    assert [(r["status"], r["readings"]) for r in json.loads(out)] == [("pending", 1)]
    code, out, _ = _run(*base, "list", "--reviewer", "Dr A", "--class", "colon", "--format", "json")
    assert json.loads(out) == []
    assert _run(*base, "reject", "btcv:demo000", "colon", "--reviewer", "Dr B")[0] == 0
    code, out, _ = _run(*base, "list", "--adjudication", "--format", "json")
    assert [(r["label_set_id"], r["decision_a"], r["decision_b"]) for r in json.loads(out)] == [
        (ls, "accept", "reject")
    ]
    code, _, err = _run(*base, "accept", "btcv:demo000", "colon", "--reviewer", "Dr A")
    assert code == 2 and "a third reviewer must adjudicate it" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _run(*base, "reject", "btcv:demo000", "colon", "--reviewer", "Dr C")
    assert code == 0 and out.startswith("adjudicated reject of colon")
    code, out, _ = _run(*base, "agreement")
    assert out.startswith("double reading (share 100%): 1 pairs, decisions agree 0.00")


def test_review_edit_writes_the_case_for_slicer(demo_ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "case"
    code, out, _ = _run(
        "--workspace", str(demo_ws.root), "review", "edit", "btcv:demo000", "liver", str(out_dir)
    )
    assert code == 0 and (out_dir / "labels.ctbl").is_file() and (out_dir / "ct.nii.gz").is_file()
    assert "edit liver (label value" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["accept", "btcv:nope", "liver", "--reviewer", "Dr A"], "btcv:nope"),
        (["accept", "btcv:demo000", "not_a_class", "--reviewer", "Dr A"], "not_a_class"),
        (["reject", "btcv:demo000", "liver", "--reviewer", "   "], "reviewer"),
        (["undo", "rv-nope", "--reviewer", "Dr A"], "rv-nope"),
        (["import", "btcv:demo000", "liver", "/nonexistent/x.nii.gz", "--reviewer", "Dr A"], "x.nii.gz"),
        (["share", "2"], "between 0 and 1"),
    ],
)
def test_review_bad_input_is_one_line_and_exit_2(demo_ws, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _run("--workspace", str(demo_ws.root), "review", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# -- release models through the loop (#12): import-model, pseudolabel, queue, Review page, export -------


@pytest.mark.parametrize("backbone", ["unet", "swinunetr"])
def test_a_release_model_goes_through_the_loop(
    backbone: str,
    tmp_path: Path,
    release_file,  # type: ignore[no-untyped-def]
    shared_fixtures: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release-keyed file (seeded weights from the shared layouts, the released txt_encoding.pth as its
    embeddings) on a 64x56x40 phantom at 3 mm: one 96^3 window (Swin UNETR takes ~40 s of it on a CPU)."""
    from streamlit.testing.v1 import AppTest

    from storage.workspace import Workspace
    from workbench.pseudolabel.scoring import TTA_NOT_RUN

    write_native(make_phantom(5, shape=(64, 56, 40)), get_protocol("abdomenct_1k"), tmp_path / "d", "00001")
    ws = str(tmp_path / "ws")
    assert _run("--workspace", ws, "ingest", "abdomenct_1k", str(tmp_path / "d"), "--no-progress")[0] == 0
    model, txt = str(release_file(backbone)), str(shared_fixtures / "universal_model" / "txt_encoding.pth")
    name = f"paper-{backbone}"
    code, out, _ = _run("--workspace", ws, "import-model", model, "--name", name, "--embeddings", txt)
    want = {"unet": "unet3d"}.get(backbone, backbone)
    assert code == 0 and out.startswith(
        f"registered model '{name}' (release {want}, 32 classes, clip-vit-b32"
    )
    code, out, _ = _run("--workspace", ws, "import-model", model)
    assert code == 0 and out.startswith(f"already registered, nothing changed: model '{name}'")

    args = ["--workspace", ws, "pseudolabel", name, "--low-res-mm", "3", "--device", "cpu", "--no-progress"]
    code, out, err = _run(*args)
    assert code == 0 and "1 scans pseudo-labelled" in out, err
    catalog = Workspace.open(ws).catalog
    run_id = catalog.pseudo_label_run_ids()[-1]
    config = catalog.run_config(run_id)
    assert config["model"] == {"name": name, "kind": "release"} and config["backbone"] == want
    assert config["trained_spacing_mm"] == [1.5, 1.5, 1.5] and config["spacing_mm"] == [3.0, 3.0, 3.0]
    assert config["spacing_note"] == "inferred at 3 mm; the model was trained at 1.5 mm"
    assert config["tta"]["run"] is False and config["window"] == [96, 96, 96] and config["overlap"] == 0.5
    items = catalog.uncertainty_items(run_id)
    assert (
        len(items) == 27
    )  # the 32 classes less the 5 AbdomenCT-1K annotates (liver, kidneys, spleen, pancreas)
    signals = [json.loads(s) for s in items["signals"]]
    assert all(s["tta_disagreement"] is None and s["tta_not_run"] == TTA_NOT_RUN for s in signals)
    assert "0 scans pseudo-labelled" in _run(*args)[1]  # a re-run resumes: nothing left to do

    code, out, _ = _run("--workspace", ws, "queue", "--top", "5")
    assert code == 0 and len(out.strip().splitlines()) == 5 and "no test-time augmentation was run" in out

    monkeypatch.setenv("WORKBENCH_HOME", ws)
    at = AppTest.from_file(str(REPO / "workbench" / "app.py"), default_timeout=60)
    at.session_state["reviewer"] = "Dr Ada"
    at.run()
    at.switch_page("app_pages/review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value.replace("\\", "") for c in at.caption]
    assert any("the model was trained at 1.5 mm" in c for c in captions), captions

    code, out, _ = _run("--workspace", ws, "export", "nnunet", str(tmp_path / "out"), "--no-progress")
    assert code == 0
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    (case,) = manifest["cases"]
    assert case["scan_id"] == "abdomenct_1k:00001" if "scan_id" in case else case


def test_round_previous_takes_a_registered_name(tmp_path: Path, random_checkpoint) -> None:  # type: ignore[no-untyped-def]
    from storage.files import file_sha256
    from storage.workspace import Workspace
    from workbench.cli import _previous_model

    ws = str(tmp_path / "ws")
    ckpt = random_checkpoint(tmp_path / "m.pt", ("spleen", "liver"))
    assert _run("--workspace", ws, "import-model", str(ckpt), "--name", "ours")[0] == 0
    resolved = _previous_model(Workspace.open(ws), "ours")
    assert resolved is not None and file_sha256(resolved) == file_sha256(ckpt)
    assert _previous_model(Workspace.open(ws), str(ckpt)) == str(ckpt)  # a file stays a file
    assert _previous_model(Workspace.open(ws), None) is None


# -- fine-tuning and rounds from any model (#12) ---------------------------------------------------


@pytest.fixture
def trained_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One AbdomenCT-1K phantom, a MiniLM vocabulary of spleen and liver, and a `workbench train`
    checkpoint of it registered as 'base' (the default small features, 6 mm, 32^3)."""
    from harmonize.taxonomy import set_added_classes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_native(make_phantom(23, shape=(48, 48, 32)), get_protocol("abdomenct_1k"), tmp_path / "d", "00001")
    ws = str(tmp_path / "ws")
    assert _run("--workspace", ws, "ingest", "abdomenct_1k", str(tmp_path / "d"), "--no-progress")[0] == 0
    assert _run("--workspace", ws, "embed", "--class", "spleen", "--class", "liver", "--name", "two")[0] == 0
    argv = ["--spacing", "6", "--patch", "32", "--epochs", "5", "--max-steps", "1", "--no-progress"]
    code, out, err = _run("--workspace", ws, "train", "--vocabulary", "two", *argv, "--name", "base")
    assert code == 0 and "registered model 'base' (workbench small_unet, 2 classes" in out, err
    yield ws
    set_added_classes(())


def test_round_previous_on_a_train_checkpoint_runs(trained_ws: str) -> None:
    """It used to end in a RuntimeError traceback (the round's tiny config could not hold the weights)."""
    ws = trained_ws
    for previous in (str(Path(ws) / "models" / "latest" / "last.pt"), "base"):
        code, out, err = _run(
            "--workspace", ws, "round", "--previous", previous, "--steps", "1", "--no-progress"
        )
        assert code == 0 and "run train-" in out and "queue rebuilt" in out, err
    assert _run("--workspace", ws, "embed", "--class", "spleen", "--name", "one")[0] == 0
    code, _, err = _run(
        "--workspace", ws, "round", "--vocabulary", "one", "--previous", "base", "--no-progress"
    )
    assert code == 2 and "was trained with another text vocabulary" in err and err.count("\n") == 1


def test_train_init_add_class_registers_the_model_and_the_class(trained_ws: str) -> None:
    from storage.workspace import Workspace

    ws = trained_ws
    code, _, err = _run("--workspace", ws, "train", "--init", "base", "--class", "stomach", "--no-progress")
    assert code == 2 and "base: has no head for ['stomach']" in err and err.count("\n") == 1
    flags = ["--add-class", "left_liver_lobe", "--prompt", "Left Lobe of Liver", "--parent", "liver"]
    argv = ["--freeze", "old_classes", "--max-steps", "1", "--epochs", "5", "--no-progress"]
    code, out, err = _run("--workspace", ws, "train", "--init", "base", *flags, *argv)
    assert code == 0, err
    assert "from workbench model 'base' (small_unet" in out and "added classes: left_liver_lobe" in out
    assert "left_liver_lobe: no training scan annotates it yet" in out
    name = out.split("registered as model '")[1].split("'")[0]
    assert name.startswith("base-ft-")
    catalog = Workspace.open(ws).catalog
    row = catalog.model(name)
    assert row is not None and list(row["class_names"]) == ["spleen", "liver", "left_liver_lobe"]
    added = catalog.added_classes()
    assert added[["name", "class_index", "prompt_name", "kind"]].values.tolist() == [
        ["left_liver_lobe", 33, "Left Lobe of Liver", "organ"]
    ]
    # pseudolabel NAME: the scan lacks the new class, so the model fills it in
    code, out, err = _run("--workspace", ws, "pseudolabel", name, "--low-res-mm", "6", "--no-progress")
    assert code == 0 and "1 scans pseudo-labelled" in out, err
    items = catalog.uncertainty_items(catalog.pseudo_label_run_ids()[-1])
    assert "left_liver_lobe" in set(items["class_name"])
    # a reviewer's label of the new class comes in like any class's (label value 1 of a mask file)
    import nibabel as nib
    import numpy as np

    ct = nib.load(str(next((Path(ws).parent / "d").rglob("*_0000.nii.gz"))))
    lobe = np.zeros(ct.shape, dtype=np.uint8)
    lobe[10:20, 12:24, 8:16] = 1
    nib.save(nib.Nifti1Image(lobe, ct.affine), str(Path(ws).parent / "lobe.nii.gz"))
    scan = str(items["scan_id"].iloc[0])
    code, _, err = _run(
        "--workspace", ws, "review", "import", scan, "left_liver_lobe", str(Path(ws).parent / "lobe.nii.gz"),
        "--reviewer", "Dr Ada",
    )  # fmt: skip
    assert code == 0, err
    rows = catalog.training_rows(["revised"], scan_ids=[scan])
    revised = rows[rows["class_name"] == "left_liver_lobe"]
    assert revised["state"].tolist() == ["annotated_present"]
    mask = Workspace.open(ws).masks.read(str(revised["mask_key"].iloc[0]), "left_liver_lobe")
    assert int(mask.sum()) == 10 * 12 * 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--init", "nope"],
            "nope: is neither a registered model (none registered) nor a model file",
        ),
        (["train", "--vocabulary", "v", "--add-class", "x"], "--add-class, --classes and --freeze fine-tune"),
        (["train"], "train needs --vocabulary NAME (or --init MODEL"),
        (
            ["train", "--init", "m", "--vocabulary", "v"],
            "--init keeps the model's own vocabulary and backbone",
        ),
        (
            ["train", "--init", "m", "--backbone", "unet3d"],
            "--init keeps the model's own vocabulary and backbone",
        ),
        (
            ["train", "--init", "m", "--prompt", "Renal Vein"],
            "--prompt given more often than --add-class (0)",
        ),
    ],
)
def test_train_init_errors_are_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    code, _, err = _run("--workspace", str(tmp_path / "ws"), *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_release_models_new_class_needs_its_clip_encoder(
    tmp_path: Path,
    release_file,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from storage.workspace import Workspace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = str(tmp_path / "ws")
    assert _run("--workspace", ws, "import-model", str(release_file("unet")), "--name", "paper")[0] == 0
    code, _, err = _run("--workspace", ws, "train", "--init", "paper", "--add-class", "renal_vein")
    assert code == 2 and err.count("\n") == 1
    assert "paper: cannot embed the new class 'renal_vein': its text encoder (clip-vit-b32" in err
    assert Workspace.open(ws).catalog.added_classes().empty  # nothing registered


# ------------------------------------------------------------ evaluate --external and report (#16)


def _trained_on(path: Path, record: dict[str, object]) -> Path:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    obj["state"]["trained_on"] = record
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["lits"], "source 'lits' is not external to model 'ours'"),
        (["msd_liver"], "source 'msd_liver' is not external to model 'ours'"),  # LiTS' scans
        (["ircadb"], "source 'ircadb' has no scans in this catalog"),
    ],
)
def test_evaluate_external_refuses_with_one_line(  # type: ignore[no-untyped-def]
    tmp_path: Path, random_checkpoint, sources: list[str], message: str
) -> None:
    ws = str(tmp_path / "ws")
    ckpt = _trained_on(
        random_checkpoint(tmp_path / "m.pt", ("liver", "liver_tumor")),
        {"liver": {"sources": ["lits"], "scans": 3}},
    )
    assert _run("--workspace", ws, "import-model", str(ckpt), "--name", "ours")[0] == 0
    code, out, err = _run("--workspace", ws, "evaluate", "ours", "--external", *sources, "--no-progress")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_evaluate_keeps_its_run_usage_and_report_needs_a_model(tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    code, _, err = _run("--workspace", ws, "evaluate", "run-pl-nope", "--no-progress")
    assert code == 2 and "wrote no pseudo label set" in err  # a run id, as before
    code, _, err = _run("--workspace", ws, "report", "nope", str(tmp_path / "r.html"), "--against", "x")
    assert code == 2 and err.count("\n") == 1 and "no registered model of that name" in err


# -- the queue knows what a model learnt (#12 item 5) -------------------------------------------------------
def test_queue_and_review_list_hold_back_classes_the_model_never_learnt(demo_ws) -> None:  # type: ignore[no-untyped-def]
    from storage.workspace import Workspace

    _queued_colon(demo_ws.root)  # run-0's colon item
    catalog = Workspace.open(demo_ws.root).catalog
    record = {"liver": {"sources": ["btcv"], "scans": 2}}  # the model never saw a colon
    catalog.start_run(
        "run-0",
        "pseudolabel",
        checkpoint_sha256="f" * 64,
        config={"classes": ["colon"], "trained_on": record},
    )
    ws = str(demo_ws.root)
    line = "colon: the model never learnt this class (1 item held back; --include-unlearnt shows them)"
    code, out, _ = _run("--workspace", ws, "queue")
    assert code == 0 and out.splitlines() == [line, "the queue is empty (no undecided uncertainty items)"]
    code, out, _ = _run("--workspace", ws, "queue", "--include-unlearnt")
    assert (
        code == 0 and out.splitlines()[0] == "colon: the model never learnt this class (1 item shown anyway)"
    )
    assert "btcv:demo000  colon" in out.splitlines()[1]
    code, out, _ = _run("--workspace", ws, "review", "list")
    assert code == 0 and out.splitlines()[0] == line and "colon" not in "".join(out.splitlines()[1:])
    code, out, err = _run("--workspace", ws, "review", "list", "--include-unlearnt", "--format", "csv")
    assert code == 0 and "btcv:demo000,colon" in out and "shown anyway" in err


def test_queue_reviewer_is_that_reviewers_blind_queue(demo_ws) -> None:  # type: ignore[no-untyped-def]
    ls = _queued_colon(demo_ws.root)
    ws = str(demo_ws.root)
    assert _run("--workspace", ws, "review", "share", "1")[0] == 0  # double-read: one reading leaves it open
    assert (
        _run("--workspace", ws, "review", "accept", "btcv:demo000", "colon", "--reviewer", "Dr Ada")[0] == 0
    )
    _, out, _ = _run("--workspace", ws, "queue", "--reviewer", "Dr Ada")
    assert "colon" not in out and "the queue is empty" in out
    _, out, _ = _run("--workspace", ws, "queue", "--reviewer", "Dr Bo")
    assert "btcv:demo000  colon" in out, ls
