"""Fixtures shared by the workbench tests: one demo workspace per test session, copied per test; the
fault ledger.

The fault ledger: every fault a test injects (the fault suite in ``faults/``, the hostile strings of the
app tests) is counted, and the table is printed at the end of the run. Each row is a fault kind (the rows
of ``docs/reliability.md``): how often it was tried, how often the workspace survived it, and how many
committed items were lost, how many half-written ones were left, and how many hostile strings escaped as
live markup. The tests' own assertions fail on any of these; the table says what was tried."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.synthetic import synthetic_scan
from storage.workspace import Workspace


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-case-per-source demo workspace (synthetic phantoms), built once per test session."""
    from workbench.demo import build_demo

    base = tmp_path_factory.getbasetemp() / "demo-template-1"
    if not (base / ".built").exists():
        shutil.rmtree(base, ignore_errors=True)
        build_demo(Workspace.open(base), cases_per_source=1, progress=False)
        (base / ".built").write_text("ok")
    return base


@pytest.fixture(scope="session")
def demo_copy(demo_template: Path) -> Callable[[Path], Path]:
    """``demo_copy(root)``: a private copy of the demo workspace's catalog and masks at ``root`` (the
    images stay in the template, where the catalog points)."""

    def copy(root: Path) -> Path:
        shutil.copytree(demo_template, root, ignore=shutil.ignore_patterns("demo_data", ".built"))
        return root

    return copy


@pytest.fixture
def demo_ws(demo_copy: Callable[[Path], Path], tmp_path: Path) -> Workspace:
    """A private, writable copy of the demo workspace for one test."""
    return Workspace.open(demo_copy(tmp_path / "ws"))


def _uncertainty_item(
    scan: str, cls: str, ls: str, signals: dict[str, object], run: str = "run-1"
) -> dict[str, object]:
    return {
        "scan_id": scan,
        "class_name": cls,
        "run_id": run,
        "label_set_id": ls,
        "score": 0.0,
        "signals": signals,
        "reasons": [],
    }


@pytest.fixture()
def uncertainty_ws(tmp_path: Path) -> Workspace:
    """An empty workspace holding four uncertainty items (two scans, two runs) and nothing else: the
    input of the queue's scoring and ranking."""
    from workbench.pseudolabel.uncertainty import store_uncertainty

    ws = Workspace.open(tmp_path / "ws")
    store_uncertainty(
        ws,
        [
            _uncertainty_item(
                "a:1", "kidney_left", "ls-a", {"volume_z": 3.1, "components": 2, "expected_components": 1}
            ),
            _uncertainty_item("a:1", "spleen", "ls-a", {"entropy": 0.3}),
            _uncertainty_item("b:2", "liver_tumor", "ls-b", {"outside_parent": 0.9, "parent": "liver"}),
            _uncertainty_item(
                "b:2", "spleen", "ls-b", {"overlap": 0.1, "overlap_with": "stomach"}, run="run-2"
            ),
        ],
    )
    return ws


def _add_pseudo(ws: Workspace, scan_id: str, ls_id: str, scores: dict[str, float]) -> str:
    """A pseudo label set of run-1 on ``scan_id`` with colon (a block and a stray fragment) and intestine,
    and one uncertainty item per class of ``scores``; returns its id."""
    shape = tuple(int(s) for s in ws.catalog.scan_row(scan_id)["shape"])  # type: ignore[index]
    colon = np.zeros(shape, bool)
    colon[20:40, 20:40, 20:40] = True
    colon[60:63, 60:63, 50:53] = True  # a stray fragment
    intestine = np.zeros(shape, bool)
    intestine[50:60, 30:40, 10:20] = True
    ws.masks.write_label_set(ls_id, {"colon": colon, "intestine": intestine}, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov.update({"colon": "annotated_present", "intestine": "annotated_present"})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=None, origin="pseudo", mask_key=ls_id, run_id="run-1"
        ),
        cov,
        [],
    )
    with ws.catalog.transaction() as con:
        for cls, score in scores.items():
            con.execute(
                "INSERT INTO uncertainty VALUES (?, ?, 'run-1', ?, ?, ?, ?)",
                [scan_id, cls, ls_id, score, json.dumps({"entropy": score}), ["high_entropy"]],
            )
    return ls_id


@pytest.fixture(scope="session")
def add_pseudo() -> Callable[[Workspace, str, str, dict[str, float]], str]:
    """``add_pseudo(ws, scan_id, label_set_id, {class: score})``: a pseudo label set (colon + intestine)
    with one queue item per class; returns its id."""
    return _add_pseudo


def _add_hostile_scan(ws: Workspace, case_id: str) -> tuple[str, str]:
    """A BTCV scan whose case folder is ``case_id`` (the CT and labels of ``btcv:demo000``), at the top of
    the review queue (colon, score 0.99); returns (scan id, pseudo label set id)."""
    row = ws.catalog.scan_row("btcv:demo000")
    assert row is not None
    scan_id = f"btcv:{case_id}"
    shape = tuple(int(s) for s in row["shape"])
    record = dataclasses.replace(
        synthetic_scan(scan_id, shape=shape, affine=np.reshape(row["affine"], (4, 4))),
        image_path=row["image_path"],
        label_path=row["label_path"],
    )
    original = ws.catalog.label_sets("btcv:demo000").iloc[0]
    original_id = "ls-hostile-original"
    masks = ws.masks.read_many(original["mask_key"])
    ws.masks.write_label_set(original_id, masks, shape)  # type: ignore[arg-type]
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=original_id, scan_id=scan_id, version=None, origin="original", mask_key=original_id
        ),
        ws.catalog.coverage(original["id"]),
        [],
        scan=record,
    )
    return scan_id, _add_pseudo(ws, scan_id, "ls-hostile-pseudo", {"colon": 0.99})


@pytest.fixture(scope="session")
def add_hostile_scan() -> Callable[[Workspace, str], tuple[str, str]]:
    """``add_hostile_scan(ws, case_id)``: a scan named by a hostile case folder at the top of the review
    queue; returns (scan id, pseudo label set id)."""
    return _add_hostile_scan


# ------------------------------------------------------------------------------- a random model


def _save_random_checkpoint(path: Path, names: tuple[str, ...], seed: int = 0) -> Path:
    import torch

    from workbench.model.checkpoint import save_checkpoint
    from workbench.model.network import UniversalModel
    from workbench.model.text import TextVocabulary
    from workbench.model.train import TrainConfig
    from workbench.model.transforms import PipelineConfig

    embeddings = np.random.default_rng(seed).standard_normal((len(names), 512))
    vocab = TextVocabulary(names, names, "V1", "random-test", "none", embeddings)
    torch.manual_seed(seed)
    feats = (4, 4, 8, 8, 16, 4)
    model = UniversalModel("small_unet", embeddings=vocab.embeddings, small_features=feats)
    cfg = TrainConfig(
        pipeline=PipelineConfig(spacing_mm=(6.0,) * 3, patch=(32, 32, 32)), small_features=feats
    )
    save_checkpoint(path, model, None, {"step": 0, "config": cfg.to_dict()}, vocab)
    return path


@pytest.fixture(scope="session")
def random_checkpoint() -> Callable[..., Path]:
    """``random_checkpoint(path, names, seed=0)``: a randomly initialised small Universal Model checkpoint
    (6 mm, 32^3 patches), written to ``path``."""
    return _save_random_checkpoint


# ------------------------------------------------------------------------------------ fault ledger


@dataclasses.dataclass
class FaultTally:
    """Counts of one fault kind."""

    tried: int = 0
    survived: int = 0
    lost: int = 0
    half_written: int = 0
    escaped: int = 0


@dataclasses.dataclass
class FaultLedger:
    """Fault kind -> :class:`FaultTally`, in the order kinds were first seen."""

    kinds: dict[str, FaultTally] = dataclasses.field(default_factory=dict)

    def record(
        self, kind: str, *, lost: int = 0, half_written: int = 0, escaped: int = 0, handled: bool = True
    ) -> None:
        """Count one injected fault of ``kind``; it survived when it was ``handled`` (e.g. one clear
        line instead of a traceback) and nothing was lost, half-written or escaped."""
        t = self.kinds.setdefault(kind, FaultTally())
        t.tried += 1
        t.survived += int(handled and lost == 0 and half_written == 0 and escaped == 0)
        t.lost += lost
        t.half_written += half_written
        t.escaped += escaped

    def lines(self) -> list[str]:
        """The table, one line per kind plus a header."""
        out = [
            f"{'fault kind':<52} {'tried':>5} {'survived':>8} {'lost':>4} {'half-written':>12} {'escaped':>7}"
        ]
        for kind, t in self.kinds.items():
            out.append(
                f"{kind:<52} {t.tried:>5} {t.survived:>8} {t.lost:>4} {t.half_written:>12} {t.escaped:>7}"
            )
        return out


LEDGER = FaultLedger()


@pytest.fixture(scope="session")
def ledger() -> FaultLedger:
    """The session's :class:`FaultLedger`."""
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if LEDGER.kinds:
        terminalreporter.section("fault suite: n tried / n survived / n lost")
        for line in LEDGER.lines():
            terminalreporter.write_line(line)


def _seeded_release_state(layout: dict, embeddings: Any, seed: int) -> dict[str, Any]:
    """Seeded weights with exactly a release layout (names, shapes, dtypes of
    ``universal_model_<backbone>_state_dict.json``), keyed and saved as the release saves them.

    Weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), biases and running means ~ N(0, 0.05), running
    variances ~ 1 + U(0, 0.1); integer buffers (Swin's relative position index, BN step counters) are the
    deterministic values a freshly built network holds; ``organ_embedding`` is ``embeddings``.
    """
    import torch

    from workbench.model.network import UniversalModel

    backbone = layout["backbone"]
    gen = torch.Generator().manual_seed(seed)
    fresh = UniversalModel(backbone).state_dict()
    net: dict[str, Any] = {}
    for name, shape, dtype in layout["entries"]:
        if name == "organ_embedding":
            t = embeddings.float().clone()
        elif not dtype.startswith("float"):
            t = fresh[name].clone()
        elif "running_var" in name:
            t = 1.0 + 0.1 * torch.rand(shape, generator=gen)
        elif len(shape) == 1 and name.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            t = torch.randn(shape, generator=gen) / np.sqrt(fan_in)
        # train.py wraps the model in DDP ('module.'); the Swin release has no 'backbone.' segment.
        raw = name.removeprefix("backbone.") if backbone == "swinunetr" else name
        net["module." + raw] = t
    return net


@pytest.fixture(scope="session")
def release_file(tmp_path_factory: pytest.TempPathFactory, shared_fixtures: Path) -> Callable[[str], Path]:
    """``release_file(backbone)``: a release-keyed ``.pth`` ('unet' or 'swinunetr') with seeded weights
    from the shared key layouts and the released ``txt_encoding.pth`` as its embeddings (built once)."""
    import torch

    made: dict[str, Path] = {}

    def make(backbone: str) -> Path:
        if backbone not in made:
            folder = shared_fixtures / "universal_model"
            layout = json.loads((folder / f"universal_model_{backbone}_state_dict.json").read_text())
            emb = torch.load(folder / "txt_encoding.pth", map_location="cpu", weights_only=True)
            path = tmp_path_factory.mktemp("release") / f"release_{backbone}.pth"
            torch.save({"net": _seeded_release_state(layout, emb, seed=12), "epoch": 0}, path)
            made[backbone] = path
        return made[backbone]

    return make
