"""External-set evaluation (workbench.learning.external) on phantoms: the refusal of sources a model's
training record includes, the tumour-free specificity rule, and what is recorded.

The numbers come from stub networks whose output is known: one that predicts nothing, one that predicts
every class everywhere in the body (then a scan's Dice is 2|T| / (|T| + |P|), |T| the truth's voxels,
counted here from the mask store, and |P| the predicted body's)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonize.errors import HarmonizeError
from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.learning import external
from workbench.learning.evaluation import evaluate_predictions
from workbench.learning.external import ExternalModel, TrainingRecord, evaluate_external
from workbench.model.flops import window_flops
from workbench.model.registry import RELEASE_SOURCES, import_model
from workbench.pseudolabel.segmenter import Segmenter

torch.set_num_threads(2)
CLASSES = ("liver", "spleen", "liver_tumor", "kidney_tumor", "pancreas_tumor")
TUMOURS = ("liver_tumor", "kidney_tumor", "pancreas_tumor")
CASES = {"chaos_ct": ("1", "2"), "lits": ("3", "4")}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with two CHAOS phantoms (tumour-free by protocol) and two LiTS phantoms."""
    root = tmp_path_factory.mktemp("external")
    for s, (source, cases) in enumerate(CASES.items()):
        for seed, case in enumerate(cases):  # distinct images: an ingest skips a CT it holds already
            phantom = make_phantom(40 + 10 * s + seed, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0))
            write_native(phantom, get_protocol(source), root / source, case)
    ws = Workspace.open(root / "ws")
    for source in CASES:
        ingest(ws, source, root / source, progress=False)
    return root / "ws"


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    import shutil

    shutil.copytree(template, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


class _Constant(torch.nn.Module):
    """Logits of one value for every class and voxel (+10: everything, -10: nothing)."""

    def __init__(self, n: int, value: float) -> None:
        super().__init__()
        self.n, self.value = n, value
        self.conv = torch.nn.Conv3d(1, 1, 1)  # gives torch's FLOP counter one known layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mul(0).add(self.value).expand(x.shape[0], self.n, *x.shape[2:])


def _stub(value: float, trained: dict[str, tuple[str, ...]]) -> ExternalModel:
    seg = Segmenter(
        module=_Constant(len(CLASSES), value),
        class_names=CLASSES,
        spacing_mm=(6.0, 6.0, 6.0),
        patch=(16, 16, 16),
        sha256="f" * 64,
        name="stub",
        settings={"tta": False},
    )
    return ExternalModel(seg, TrainingRecord("stub", "f" * 64, "workbench", trained), "stub")


@pytest.fixture
def use_stub(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``use_stub(value)``: evaluate_external loads a :class:`_Constant` net trained on kits23's spleen."""

    def use(value: float) -> None:
        monkeypatch.setattr(
            external, "load_external_model", lambda *a, **k: _stub(value, {"spleen": ("kits23",)})
        )

    return use


def _truth_voxels(ws: Workspace, scan_id: str, name: str) -> tuple[int, int]:
    """(truth voxels of the class, voxels of the scan) from the scan's original labels."""
    ls = ws.catalog.label_sets(scan_id)
    row = ls[ls["origin"] == "original"].iloc[-1]
    shape = tuple(int(s) for s in ws.catalog.scan_geometry([scan_id]).iloc[0]["shape"])
    names = set(ws.masks.names(str(row["mask_key"])))
    t = int(ws.masks.read(str(row["mask_key"]), name).sum()) if name in names else 0
    return t, int(np.prod(shape))


# ---------------------------------------------------------------------------------- the refusal

RELEASE = TrainingRecord("release-unet", "a" * 64, "release", RELEASE_SOURCES)
OURS = TrainingRecord("ours", "b" * 64, "workbench", {"liver": ("lits",), "spleen": ("kits23",)})


@pytest.mark.parametrize(
    ("record", "source", "external_to_it"),
    [
        (RELEASE, "ircadb", True),  # the paper's external set, "06"
        (RELEASE, "totalsegmentator", True),  # not one of the paper's datasets
        (RELEASE, "lits", False),  # "04"
        (RELEASE, "chaos_ct", False),  # "03"
        (RELEASE, "pancreas_ct", False),  # "02": Gibson's relabel of its scans
        (RELEASE, "ct_org", False),  # "12"
        (OURS, "lits", False),  # by name
        (OURS, "msd_liver", False),  # LiTS' scans are MSD Task03's
        (OURS, "ct_org", False),  # and 131 of CT-ORG's
        (OURS, "kits19", False),  # KiTS19's scans are KiTS23's ("05")
        (OURS, "chaos_ct", True),
        (OURS, "ircadb", True),
    ],
)
def test_a_source_in_the_training_record_is_refused(
    record: TrainingRecord, source: str, external_to_it: bool
) -> None:
    problem = record.refusal(source)
    assert (problem is None) is external_to_it
    if problem is not None:
        assert f"source {source!r} is not external to model {record.model!r}" in problem
        assert "\n" not in problem


def test_the_refusal_names_the_classes_that_learnt_from_it() -> None:
    problem = OURS.refusal("msd_liver")
    assert problem is not None and "(paper dataset 04, 10_03, 12) for liver;" in problem


def test_a_model_without_a_training_record_is_refused() -> None:
    problem = TrainingRecord("x", "c" * 64, "workbench", {}).refusal("ircadb")
    assert problem is not None and "has no training record" in problem


def test_a_registered_checkpoint_is_refused_a_source_of_its_trained_on(
    ws: Workspace, tmp_path: Path, random_checkpoint: Callable[..., Path]
) -> None:
    path = random_checkpoint(tmp_path / "m.pt", CLASSES)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    obj["state"]["trained_on"] = {"liver": {"sources": ["lits"], "scans": 2}}
    torch.save(obj, path)
    import_model(ws, path, name="tiny")
    runs = len(ws.catalog.evaluation_runs())
    with pytest.raises(HarmonizeError, match="source 'lits' is not external to model 'tiny'"):
        evaluate_external(ws, "tiny", ["chaos_ct", "lits"])
    with pytest.raises(HarmonizeError, match="source 'word' has no scans in this catalog"):
        evaluate_external(ws, "tiny", ["word"])
    assert len(ws.catalog.evaluation_runs()) == runs  # nothing recorded


# ----------------------------------------------------------------------- the tumour-free rule


def test_nothing_predicted_is_specific_on_tumour_free_scans_and_misses_every_tumour(
    ws: Workspace, use_stub: Callable[[float], None]
) -> None:
    use_stub(-10.0)
    ev = evaluate_external(ws, "stub", ["chaos_ct", "lits"])
    det = ev.detection.set_index(["source_id", "class_name"])
    for name in TUMOURS:  # every CHAOS patient counts for the specificity of every tumour class
        row = det.loc[("chaos_ct", name)]
        assert (row["tumour_free"], row["false_positives"], row["specificity"]) == (2, 0, 1.0)
        assert row["tumour_scans"] == 0
    with_tumour = sum(_truth_voxels(ws, f"lits:{c}", "liver_tumor")[0] > 0 for c in CASES["lits"])
    lits = det.loc[("lits", "liver_tumor")]
    assert (lits["tumour_scans"], lits["detected"]) == (with_tumour, 0)
    assert ("lits", "kidney_tumor") not in det.index  # LiTS patients are not a tumour-free cohort


def test_everything_predicted_is_sensitive_and_never_specific(
    ws: Workspace, use_stub: Callable[[float], None]
) -> None:
    use_stub(10.0)
    ev = evaluate_external(ws, "stub", ["chaos_ct", "lits"])
    det = ev.detection.set_index(["source_id", "class_name"])
    for name in TUMOURS:
        row = det.loc[("chaos_ct", name)]
        assert (row["tumour_free"], row["false_positives"], row["specificity"]) == (2, 2, 0.0)
    items = ev.items.set_index(["scan_id", "class_name"])
    for source, cases in CASES.items():
        for case in cases:
            t, v = _truth_voxels(ws, f"{source}:{case}", "liver")
            item = items.loc[(f"{source}:{case}", "liver")]
            p = int(item["predicted_voxels"])  # the body: inference crops the air around it
            assert t < p <= v and int(item["truth_voxels"]) == t
            assert item["dice"] == pytest.approx(2 * t / (t + p))  # the truth lies inside the prediction


def test_the_rule_is_off_for_a_held_out_style_call(ws: Workspace) -> None:
    scans = [f"chaos_ct:{c}" for c in CASES["chaos_ct"]]
    shape = tuple(int(s) for s in ws.catalog.scan_geometry(scans[:1]).iloc[0]["shape"])
    nothing = {n: np.zeros(shape, bool) for n in CLASSES}

    def predict(scan_id: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        return nothing, {}

    off = evaluate_predictions(ws, predict, name="x", scan_ids=scans, store=False)
    on = evaluate_predictions(ws, predict, name="x", scan_ids=scans, store=False, tumour_free=True)
    assert off.detection.empty and set(off.items["class_name"]) == {"liver"}
    assert len(on.detection[on.detection["source_id"] == "chaos_ct"]) == 3


# --------------------------------------------------------------------------------- the record


def test_the_evaluation_is_recorded_with_its_model_sources_and_efficiency(
    ws: Workspace, use_stub: Callable[[float], None]
) -> None:
    use_stub(-10.0)
    ev = evaluate_external(ws, "stub", ["chaos_ct"])
    row = ws.catalog.run_row(ev.run_id)
    assert row is not None
    config, metrics = json.loads(row["config"]), json.loads(row["metrics"])
    assert config["scope"] == "external" and config["external_sources"] == ["chaos_ct"]
    assert config["model"]["sha256"] == "f" * 64 and config["tumour_free"] is True
    # the stub's one 1x1x1 conv (1 -> 1 channel) over a 96^3 window: 2 FLOPs per voxel
    assert metrics["flops_per_window"] == 2 * 96**3 == window_flops(_Constant(5, 0.0))
    assert metrics["timed_scans"] == 2 and metrics["seconds_per_scan"] > 0
    stored = ws.catalog.query("SELECT count(*) AS n FROM evaluation WHERE run_id = ?", [ev.run_id])
    assert int(stored["n"].iloc[0]) == len(ev.items) == 2 * (1 + 3)  # liver + three tumour classes
    assert any("GFLOPs per 96x96x96 window" in line for line in ev.lines())
    # nothing written to the label sets: the evaluation predicts in memory
    assert ws.catalog.pseudo_label_run_ids() == []
