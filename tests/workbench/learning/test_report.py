"""The HTML report (workbench.learning.report) on phantoms: every table is there, and its numbers are the
ones ``workbench evaluate`` printed (held-out and external evaluations, read back from the catalog), the
fine-tuned / from-scratch split follows the training runs' ``init``, and the page loads nothing.

:func:`build_report_workspace` is used by ``tests/workbench/test_report_browser.py`` too."""

from __future__ import annotations

import io
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.files import file_sha256
from storage.workspace import Workspace
from workbench.cli import main
from workbench.ingest import ingest
from workbench.learning.report import DEMO_REPORT, TABLES, collect, report_line
from workbench.model.flops import window_flops
from workbench.model.registry import read_model_file
from workbench.pseudolabel import pseudolabel

torch.set_num_threads(2)
CLASSES = ("liver", "spleen", "liver_tumor", "kidney_tumor", "pancreas_tumor")
CASES = {"chaos_ct": ("1", "2"), "lits": ("3", "4"), "kits23": ("case_00001", "case_00002")}


def _run(*argv: str) -> tuple[int, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    assert code == 0, err.getvalue()
    return code, out.getvalue().splitlines()


def _checkpoint(path: Path, seed: int, trained: dict[str, list[str]]) -> Path:
    import numpy as np

    from workbench.model.checkpoint import save_checkpoint
    from workbench.model.network import UniversalModel
    from workbench.model.text import TextVocabulary
    from workbench.model.train import TrainConfig
    from workbench.model.transforms import PipelineConfig

    vocab = TextVocabulary(
        CLASSES, CLASSES, "V1", "random-test", "none", np.random.default_rng(seed).standard_normal((5, 512))
    )
    torch.manual_seed(seed)
    feats = (4, 4, 8, 8, 16, 4)
    model = UniversalModel("small_unet", embeddings=vocab.embeddings, small_features=feats)
    pipeline = PipelineConfig(spacing_mm=(6.0,) * 3, patch=(32, 32, 32))
    cfg = TrainConfig(pipeline=pipeline, small_features=feats)
    state = {
        "step": 1,
        "config": cfg.to_dict(),
        "trained_on": {c: {"sources": s, "scans": 2} for c, s in trained.items()},
    }
    return save_checkpoint(path, model, None, state, vocab)


def build_report_workspace(root: Path) -> dict[str, list[str]]:
    """Phantoms of chaos_ct, lits and kits23; models ``scratch`` and ``tuned`` (trained on kits23's spleen,
    the second fine-tuned from the first, as the catalog's training runs say); a held-out evaluation of
    ``scratch`` and external evaluations of both on chaos_ct + lits.

    Returns:
        What ``workbench evaluate`` printed, by ``held-out``, ``external scratch``, ``external tuned``.
    """
    for s, (source, cases) in enumerate(CASES.items()):
        for i, case in enumerate(cases):
            phantom = make_phantom(60 + 10 * s + i, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0))
            write_native(phantom, get_protocol(source), root / source, case)
    ws_root = root / "ws"
    ws = Workspace.open(ws_root)
    for source in CASES:
        ingest(ws, source, root / source, progress=False)
    scratch = _checkpoint(root / "scratch.pt", 0, {"spleen": ["kits23"]})
    tuned = _checkpoint(root / "tuned.pt", 1, {"spleen": ["kits23"], "liver": ["kits23"]})
    for name, path, init in (("scratch", scratch, None), ("tuned", tuned, file_sha256(scratch))):
        _run("--workspace", str(ws_root), "import-model", str(path), "--name", name)
        run_id = f"run-train-{name}"
        ws.catalog.start_run(run_id, "train", config={"sources": ["kits23"], "init": init})
        ws.catalog.finish_run(run_id, checkpoint_sha256=file_sha256(path))
    printed: dict[str, list[str]] = {}
    # at the models' own 6 mm (one window per phantom), not the workbench default of 3 mm
    pl = pseudolabel(ws, "scratch", all_classes=True, uncertainty=False, low_res_mm=6.0, progress=False)
    _, printed["held-out"] = _run(
        "--workspace", str(ws_root), "evaluate", pl.run_id, "--fraction", "0.5", "--no-progress"
    )
    for name in ("scratch", "tuned"):
        _, printed[f"external {name}"] = _run(
            "--workspace", str(ws_root), "evaluate", name, "--external", "chaos_ct", "lits",
            "--low-res-mm", "6", "--no-progress",
        )  # fmt: skip
    return printed


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("report")
    return root / "ws", build_report_workspace(root)


@pytest.fixture
def page(built: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> tuple[Path, str, dict[str, list[str]]]:
    ws_root, printed = built
    ws = tmp_path / "ws"
    shutil.copytree(ws_root, ws)
    out = tmp_path / "out" / "report.html"
    _, lines = _run("--workspace", str(ws), "report", "scratch", str(out), "--against", "tuned")
    assert lines[0].startswith(f"report: {out}")
    return ws, out.read_text(encoding="utf-8"), printed


class _Tables(HTMLParser):
    """Every <table id=...> of a page as a list of {header: cell text} rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._id: str | None = None
        self._row: list[str] | None = None
        self._head: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._id, self._head = dict(attrs).get("id"), []
            self.tables[str(self._id)] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._id is not None:
            if not self._head:
                self._head = self._row
            else:
                self.tables[self._id].append(dict(zip(self._head, self._row)))
            self._row = None
        elif tag == "table":
            self._id = None


def tables(page: str) -> dict[str, list[dict[str, str]]]:
    """The page's tables by id."""
    parser = _Tables()
    parser.feed(page)
    return parser.tables


CLASS_LINE = re.compile(r"^  (\S+)\s+n=(\d+)\s+Dice (\S+)  NSD (\S+)$")
DETECTION_LINE = re.compile(r"^  detection (\S+)\s+sensitivity (\d+/\d+), specificity (\d+/\d+)")
MEAN_LINE = re.compile(r"^mean over classes: Dice (\S+), NSD (\S+)$")
EFFICIENCY_LINE = re.compile(
    r"^efficiency: (\S+) GFLOPs per 96x96x96 window, (\S+) s per CT \(n=(\d+) scans\)$"
)


def _run_id(lines: list[str]) -> str:
    return lines[0].split()[1]


def _rows(table: list[dict[str, str]], run_id: str, **match: str) -> list[dict[str, str]]:
    return [
        r for r in table if r["evaluation"].startswith(run_id) and all(r[k] == v for k, v in match.items())
    ]


def test_the_report_holds_every_table(page: tuple[Path, str, dict[str, list[str]]]) -> None:
    _, text, _ = page
    got = tables(text)
    assert set(TABLES) <= set(got)
    assert all(got[t] for t in TABLES), {t: len(got[t]) for t in TABLES}
    models = {r["model"]: r for r in got["models"]}
    assert (models["scratch"]["held-out"], models["scratch"]["external"]) == ("1", "1")
    assert (models["tuned"]["held-out"], models["tuned"]["external"]) == ("0", "1")


@pytest.mark.parametrize("which", ["held-out", "external scratch", "external tuned"])
def test_every_number_evaluate_printed_is_in_the_report(
    page: tuple[Path, str, dict[str, list[str]]], which: str
) -> None:
    _, text, printed = page
    got, lines = tables(text), printed[which]
    run_id = _run_id(lines)
    n_class_lines = 0
    for line in lines:
        if m := CLASS_LINE.match(line):
            name, n, dice, nsd = m.groups()
            (row,) = _rows(got["dice"], run_id, source="all", **{"class": name})
            assert (row["n"], row["Dice"], row["NSD"]) == (n, dice, nsd)
            n_class_lines += 1
        elif m := DETECTION_LINE.match(line):
            name, sensitivity, specificity = m.groups()
            (row,) = _rows(got["detection"], run_id, source="all", **{"class": name})
            assert row["detected / tumour scans"] == sensitivity
            assert row["true negatives / tumour-free"] == specificity
        elif m := MEAN_LINE.match(line):
            (row,) = _rows(got["efficiency"], run_id)
            assert row["mean Dice"] == m.group(1)
            if which != "held-out":
                (mean,) = _rows(got["external"], run_id, **{"class": "mean over classes"})
                assert (mean["Dice"], mean["NSD"]) == m.groups()
        elif m := EFFICIENCY_LINE.match(line):
            (row,) = _rows(got["efficiency"], run_id)
            assert (row["GFLOPs per 96^3 window"], row["seconds per CT"], row["CTs timed"]) == m.groups()
    assert n_class_lines >= 1


def test_the_external_tumour_free_patients_give_the_specificity(
    page: tuple[Path, str, dict[str, list[str]]],
) -> None:
    _, text, printed = page
    run_id = _run_id(printed["external scratch"])
    chaos = _rows(tables(text)["detection"], run_id, source="chaos_ct")
    assert {r["class"] for r in chaos} == {"liver_tumor", "kidney_tumor", "pancreas_tumor"}
    assert all(r["true negatives / tumour-free"].endswith("/2") for r in chaos)  # both CHAOS patients


def test_a_held_out_evaluation_gets_the_flops_of_its_model_file(
    page: tuple[Path, str, dict[str, list[str]]],
) -> None:
    ws, text, printed = page
    model = read_model_file(Path(ws) / "models" / "registry" / next(
        p.name for p in (Path(ws) / "models" / "registry").iterdir() if p.name.startswith("scratch")
    )).model  # fmt: skip
    (row,) = _rows(tables(text)["efficiency"], _run_id(printed["held-out"]))
    assert row["GFLOPs per 96^3 window"] == f"{window_flops(model) / 1e9:.1f}"


def test_fine_tuned_and_from_scratch_follow_the_training_runs(
    page: tuple[Path, str, dict[str, list[str]]],
) -> None:
    ws, text, _ = page
    rows = tables(text)["transfer"]
    scratch = Workspace.open(ws).catalog.model("scratch")
    assert scratch is not None
    starts = {r["training run"]: r["start"] for r in rows}
    assert starts["run-train-scratch"] == "from scratch"
    assert starts["run-train-tuned"] == f"fine-tuned from {str(scratch['sha256'])[:12]}"
    assert "no pair to compare" not in text


def test_the_page_loads_nothing_and_embeds_plotly_once(page: tuple[Path, str, dict[str, list[str]]]) -> None:
    _, text, _ = page
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text
    assert text.count("* plotly.js v") == 1  # the library's header, once
    assert text.count("Plotly.newPlot(") == 2  # two scatters


def test_the_tables_are_the_ones_collect_returns(page: tuple[Path, str, dict[str, list[str]]]) -> None:
    ws, text, _ = page
    data = collect(Workspace.open(ws), "scratch", ["tuned"])
    got = tables(text)
    assert {t: len(got[t]) for t in TABLES} == {t: len(df) for t, df in data.tables.items()}


def test_an_unknown_model_is_one_line(tmp_path: Path) -> None:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["--workspace", str(tmp_path / "ws"), "report", "nope", str(tmp_path / "r.html")])
    assert code == 2
    assert err.getvalue().count("\n") == 1 and "no registered model of that name" in err.getvalue()
    assert not (tmp_path / "r.html").exists()


def test_a_model_without_evaluations_gets_empty_tables_that_say_so(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    path = _checkpoint(tmp_path / "m.pt", 3, {"spleen": ["kits23"]})
    _run("--workspace", str(ws), "import-model", str(path), "--name", "lonely")
    _, lines = _run("--workspace", str(ws), "report", "lonely", str(tmp_path / "r.html"))
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    got = tables(text)
    assert [r["model"] for r in got["models"]] == ["lonely"] and got["models"][0]["evaluations"] == "0"
    for name in TABLES[1:]:
        assert f'id="{name}-empty"' in text
    assert "rows: models 1, dice 0, detection 0, external 0, efficiency 0, transfer 0" in lines[0]


def test_the_demos_report_line_writes_the_report_into_the_workspace(
    page: tuple[Path, str, dict[str, list[str]]],
) -> None:
    ws, text, _ = page
    workspace = Workspace.open(ws)
    scratch, tuned = (workspace.catalog.model(n) for n in ("scratch", "tuned"))
    assert scratch is not None and tuned is not None
    # the demo passes its rounds' checkpoint files; here: the registered copies, as files
    line = report_line(workspace, ws / str(tuned["file"]), [ws / str(scratch["file"])])
    written = workspace.reports / DEMO_REPORT
    assert line.startswith(f"report: {written} (rows: models 2, ")
    assert tables(written.read_text(encoding="utf-8"))["transfer"] == tables(text)["transfer"]
