"""Active-learning rounds: round records, held-out scans never trained on nor reviewed, learning curves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from harmonize.errors import HarmonizeError
from harmonize.phantoms import write_native
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.ingest import ingest
from workbench.learning.rounds import (
    learning_curves,
    rounds,
    run_round,
    tiny_config,
    training_entries,
    training_inputs,
    training_queue,
)
from workbench.learning.simulated_expert import PhantomSpec, PhantomTruth, SimulatedExpert
from workbench.learning.split import held_out_split, training_scan_ids
from workbench.learning.vocabularies import store_vocabulary
from workbench.model.checkpoint import load_checkpoint
from workbench.model.network import SMALL_UNET_FEATURES
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainConfig
from workbench.model.transforms import PipelineConfig
from workbench.pseudolabel import pseudolabel
from workbench.review import rank, set_share
from workbench.training_set import TrainingEntry

SPEC = {"shape": (40, 36, 24), "spacing": (4.0, 4.0, 5.0)}
#: btcv: 3 cases -> floor(0.2 * 3 + 0.5) = 1 held out; kits23: 1 case -> none held out.
CASES = {"btcv": (11, 12, 13), "kits23": (21,)}
N_TRAIN, N_HELD = 3, 1


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RecordingReviewer:
    """Wraps the simulated expert and keeps every queue it was handed."""

    def __init__(self, expert: SimulatedExpert) -> None:
        self.expert = expert
        self.seen: list[pd.DataFrame] = []

    def __call__(self, items: pd.DataFrame, budget: int) -> list[Any]:
        self.seen.append(items.copy())
        return self.expert.review_items(items, limit=budget)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rounds")
    specs: dict[tuple[str, str], PhantomSpec] = {}
    for source, seeds in CASES.items():
        for seed in seeds:
            spec = PhantomSpec(seed, **SPEC)  # type: ignore[arg-type]
            case = "00" + str(seed) if source == "kits23" else f"case{seed}"
            write_native(spec.make(), get_protocol(source), root / "data" / source, case)
            specs[(source, case)] = spec
    ws = Workspace.open(root / "ws")
    for source in CASES:
        assert not ingest(ws, source, root / "data" / source, progress=False).skipped
    scans = ws.catalog.query("SELECT id, source_id, case_id FROM scan")
    by_id = {str(r.id): specs[(str(r.source_id), str(r.case_id))] for r in scans.itertuples()}
    names = tuple(class_names())
    vocab = TextVocabulary(
        names, names, "V1", "random-test", "none", np.random.default_rng(0).standard_normal((len(names), 512))
    )
    store_vocabulary(ws, vocab, "test-vocab")
    set_share(ws, 0.0)  # single reading: a first reader's correction of a double-read item is held back
    truth = PhantomTruth(ws, by_id)
    config = tiny_config(steps=1)
    first = run_round(ws, vocabulary="test-vocab", config=config, truth=truth.scan_truth)
    # someone computes uncertainty for the held-out scans too: the queue over every run has held-out items
    held_run = pseudolabel(
        ws, first.checkpoint, scans=sorted(held_out_split(ws)), low_res_mm=6.0, progress=False
    )
    reviewer = RecordingReviewer(SimulatedExpert(ws, truth, budget=6))
    second = run_round(
        ws,
        vocabulary="test-vocab",
        config=config,
        review_budget=6,
        reviewer=reviewer,
        truth=truth.scan_truth,
    )
    return {"ws": ws, "first": first, "second": second, "reviewer": reviewer, "held_run": held_run.run_id}


def test_held_out_scans_never_train(two_rounds: dict[str, Any]) -> None:
    ws = two_rounds["ws"]
    held = held_out_split(ws)
    assert len(held) == N_HELD  # by the stratified rule
    train_ids = training_scan_ids(ws)
    assert train_ids.isdisjoint(held) and len(train_ids) == N_TRAIN
    entries, held_again = training_entries(ws)
    assert held_again == held
    assert {e.scan_id for e in entries} == train_ids
    for result in (two_rounds["first"], two_rounds["second"]):
        assert result.inputs["scans"] == N_TRAIN and result.inputs["held_out_scans"] == N_HELD
        run = ws.catalog.query("SELECT kind, config FROM run WHERE id = ?", [result.train_run_id])
        assert run["kind"].tolist() == ["train"]
        assert json.loads(run["config"].iloc[0])["cases"] == N_TRAIN


def test_the_expert_only_sees_training_scans(two_rounds: dict[str, Any]) -> None:
    ws, reviewer = two_rounds["ws"], two_rounds["reviewer"]
    held = held_out_split(ws)
    assert len(reviewer.seen) == 1
    handed = reviewer.seen[0]
    assert len(handed) > 6
    assert not set(handed["scan_id"]) & held
    # round 2 reviewed the queue of round 1's pseudo-label run, in rank order
    assert set(handed["run_id"]) == {two_rounds["first"].pseudolabel_run_id}
    # over every run the queue holds held-out items (from the held-out uncertainty run): filtered out
    full = rank(ws, None, include_decided=True)
    assert set(full[full["run_id"] == two_rounds["held_run"]]["scan_id"]) == held
    kept = training_queue(ws, None, training_scan_ids(ws))
    assert not set(kept["scan_id"]) & held
    assert len(kept) == int((~rank(ws, None)["scan_id"].isin(list(held))).sum()) > 0
    # the revised label sets the expert wrote are all on training scans and enter the next training set
    revised = ws.catalog.query("SELECT scan_id FROM label_set WHERE origin = 'revised'")
    assert not set(revised["scan_id"]) & held
    corrected = sum(o.action == "corrected" for o in two_rounds["second"].outcomes)
    assert two_rounds["second"].inputs["items"].get("revised", 0) == corrected
    assert two_rounds["second"].inputs["reviewed"] == 6


def test_round_records(two_rounds: dict[str, Any]) -> None:
    ws, first, second = two_rounds["ws"], two_rounds["first"], two_rounds["second"]
    df = rounds(ws)
    assert df["round_number"].tolist() == [1, 2]
    assert df["train_run_id"].tolist() == [first.train_run_id, second.train_run_id]
    assert df["pseudolabel_run_id"].tolist() == [first.pseudolabel_run_id, second.pseudolabel_run_id]
    assert df["reviewed"].tolist() == [0, 6]
    for r, res in zip(df.to_dict("records"), (first, second), strict=True):
        assert r["checkpoint_sha256"] == _sha(r["checkpoint_path"]) == res.checkpoint_sha256
        assert r["metrics"]["evaluated"] is True
        ev = ws.catalog.query("SELECT kind FROM run WHERE id = ?", [r["evaluate_run_id"]])
        assert ev["kind"].tolist() == ["evaluate"]
        pl = ws.catalog.query("SELECT kind FROM run WHERE id = ?", [r["pseudolabel_run_id"]])
        assert pl["kind"].tolist() == ["pseudolabel"]
    # round 2 was fine-tuned from round 1's checkpoint; round 1 from fresh weights
    assert df["previous_checkpoint_sha256"].iloc[0] is None or pd.isna(
        df["previous_checkpoint_sha256"].iloc[0]
    )
    assert df["previous_checkpoint_sha256"].iloc[1] == first.checkpoint_sha256
    # round 2 re-pseudo-labelled: its queue is its own run's uncertainty rows
    assert (
        ws.catalog.query(
            "SELECT count(*) AS n FROM uncertainty WHERE run_id = ?", [second.pseudolabel_run_id]
        )["n"].iloc[0]
        > 0
    )


def test_learning_curves_pool_the_stored_evaluation_items(two_rounds: dict[str, Any]) -> None:
    ws = two_rounds["ws"]
    curves = learning_curves(ws)
    assert list(curves.columns) == [
        "round_number", "class_name", "n", "dice", "nsd", "dice_present", "nsd_present", "reviewed"
    ]  # fmt: skip
    assert sorted(set(curves["round_number"])) == [1, 2]
    assert curves.groupby("round_number")["reviewed"].first().tolist() == [0, 6]
    for r in rounds(ws).to_dict("records"):
        items = ws.catalog.query(
            "SELECT class_name, dice FROM evaluation WHERE run_id = ?", [r["evaluate_run_id"]]
        )
        expected = items.groupby("class_name")["dice"].agg(["mean", "size"])
        got = curves[curves["round_number"] == r["round_number"]].set_index("class_name")
        assert sorted(got.index) == sorted(expected.index)
        np.testing.assert_allclose(got.loc[expected.index, "dice"], expected["mean"], atol=1e-9)
        assert got.loc[expected.index, "n"].tolist() == expected["size"].tolist()


def _entry(scan: str, source: str, origins: dict[str, str]) -> TrainingEntry:
    return TrainingEntry(scan, source, "x.nii.gz", tuple(origins), (), {}, origins=origins)


@pytest.mark.parametrize(
    ("entries", "items", "classes"),
    [
        ([], {}, {}),
        ([_entry("a", "btcv", {"liver": "original"})], {"original": 1}, {"original": 1}),
        (
            [
                _entry("a", "btcv", {"liver": "original", "spleen": "pseudo"}),
                _entry("b", "kits23", {"liver": "revised", "spleen": "pseudo", "kidney_left": "original"}),
            ],
            {"original": 2, "pseudo": 2, "revised": 1},
            {"original": 2, "pseudo": 1, "revised": 1},
        ),
    ],
)
def test_training_inputs_count_items_and_classes_by_origin(
    entries: list[TrainingEntry], items: dict[str, int], classes: dict[str, int]
) -> None:
    got = training_inputs(entries, {"h1", "h2", "h3"})
    assert got["scans"] == len(entries) and got["held_out_scans"] == 3
    assert got["items"] == items and got["classes"] == classes
    assert sum(got["scans_by_source"].values()) == len(entries)


def test_round_refuses_a_negative_budget(two_rounds: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="review_budget"):
        run_round(two_rounds["ws"], vocabulary="test-vocab", config=tiny_config(1), review_budget=-1)


def test_demo_records_phantom_specs_that_regenerate_the_truth(tmp_path: Path) -> None:
    from workbench.demo import DEMO_SOURCES, build_demo, demo_truth_specs

    ws = Workspace.open(tmp_path / "ws")
    build_demo(ws, cases_per_source=1, progress=False)
    specs = demo_truth_specs(ws)
    assert len(specs) == len(DEMO_SOURCES) == len(ws.catalog.query("SELECT id FROM scan"))
    truth = PhantomTruth(ws, specs)
    # a DICOM series with PNG labels, a NIfTI pair, one file per class
    picked = [
        min(s for s in specs if s.startswith(src + ":")) for src in ("chaos_ct", "kits23", "totalsegmentator")
    ]
    for scan_id in picked:
        ls = ws.catalog.latest_original(scan_id)
        assert ls is not None
        present = [n for n, s in ws.catalog.coverage(ls["id"]).items() if s == "annotated_present"]
        assert present
        for name in present:
            assert np.array_equal(truth(scan_id, name), ws.masks.read(ls["mask_key"], name)), (scan_id, name)


@pytest.mark.parametrize(
    ("argv", "expected"), [(["demo"], True), (["demo", "--no-round"], False), (["demo", "--round"], True)]
)
def test_demo_runs_a_round_unless_told_not_to(argv: list[str], expected: bool) -> None:
    from workbench.cli import build_parser

    assert build_parser().parse_args(argv).round is expected


def test_round_command_arguments() -> None:
    from workbench.cli import build_parser

    args = build_parser().parse_args(["round", "--vocabulary", "v", "--simulated-expert", "--budget", "7"])
    assert (args.vocabulary, args.simulated_expert, args.budget, args.steps, args.from_scratch) == (
        "v", True, 7, 8, False
    )  # fmt: skip


# -- a round from any model (#12) -----------------------------------------------------------------


def _train_checkpoint(ws: Workspace, vocab: TextVocabulary) -> Path:
    """What `workbench train` leaves: the default small features (not the tiny config's), 6 mm, 32^3."""
    from workbench.learning.catalog_training import train_from_catalog

    store_vocabulary(ws, vocab, "all")
    config = TrainConfig(
        pipeline=PipelineConfig(spacing_mm=(6.0,) * 3, patch=(32,) * 3, num_samples=1), epochs=5, max_steps=1
    )
    _, result = train_from_catalog(ws, ws.models / "latest", vocabulary="all", config=config, progress=False)
    assert result.checkpoint is not None
    return result.checkpoint


def test_a_round_from_a_train_checkpoint_keeps_its_architecture(
    ws: Workspace, random_vocab: TextVocabulary
) -> None:
    """This round used to end in load_state_dict's RuntimeError (size mismatch): it built the tiny
    config's small UNet and loaded the `workbench train` checkpoint's wider one into it."""
    previous = _train_checkpoint(ws, random_vocab)
    first = run_round(ws, config=tiny_config(steps=1), previous_checkpoint=previous)
    loaded = load_checkpoint(first.checkpoint, random_vocab)
    assert tuple(loaded.model.small_features) == SMALL_UNET_FEATURES != tiny_config().small_features
    assert loaded.state["config"]["pipeline"]["patch"] == [32, 32, 32]  # the previous model's, not 32 x 16
    assert (
        loaded.state["init"]["sha256"] == _sha(previous) == ws.catalog.run_config(first.train_run_id)["init"]
    )
    counts = {"liver": {"sources": ["lits"], "scans": 1}, "kidney_left": {"sources": ["kits23"], "scans": 1}}
    assert {k: loaded.state["trained_on"][k] for k in counts} == counts
    # a round from that round re-trains on the same scans: its counts are not added again
    second = run_round(ws, config=tiny_config(steps=1))
    again = load_checkpoint(second.checkpoint, random_vocab).state["trained_on"]
    assert {k: again[k] for k in counts} == counts


def test_a_round_from_a_model_of_another_vocabulary_is_one_line(
    ws: Workspace, random_vocab: TextVocabulary
) -> None:
    previous = _train_checkpoint(ws, random_vocab)
    names = ("liver", "spleen")
    store_vocabulary(ws, TextVocabulary(names, names, "V1", "other", "none", np.ones((2, 512))), "two")
    with pytest.raises(HarmonizeError, match="was trained with another text vocabulary") as err:
        run_round(ws, vocabulary="two", config=tiny_config(steps=1), previous_checkpoint=previous)
    assert "\n" not in str(err.value)
    assert ws.catalog.latest_round() is None  # nothing recorded
    with pytest.raises(ValueError, match="needs --vocabulary"):
        run_round(ws, config=tiny_config(steps=1))


def test_a_round_from_a_registered_release_model(ws: Workspace, release_file) -> None:  # type: ignore[no-untyped-def]
    from workbench.model.registry import RELEASE_SOURCES, import_model, registered_path

    import_model(ws, release_file("unet"), name="paper-unet")
    row = ws.catalog.model("paper-unet")
    assert row is not None
    pipe = PipelineConfig(spacing_mm=(6.0,) * 3, patch=(16,) * 3, num_samples=1)
    result = run_round(
        ws, config=tiny_config(steps=1), previous_checkpoint=registered_path(ws, row), pipeline=pipe
    )
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.model.backbone_name == "unet3d" and loaded.vocabulary.encoder_id.startswith("clip-vit-b32")
    assert loaded.state["init"]["kind"] == "release" and result.inputs["scans"] == 2
    assert loaded.state["trained_on"]["liver"] == {
        "sources": sorted({*RELEASE_SOURCES["liver"], "lits"}), "scans": None
    }  # fmt: skip
    assert len(ws.catalog.uncertainty_items(result.pseudolabel_run_id)) > 0  # the queue was rebuilt


def test_a_rounds_training_set_is_read_in_one_catalog_connection(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-out split, the training scan ids and the assembly share one session: every fresh
    connection to a large catalog costs tens of ms to open and close, and other processes wait for the
    file while one is open, so the round opens it once and briefly."""
    expected, held = training_entries(ws)  # assigns the split (a write) the first time
    opened: list[str] = []
    connect = duckdb.connect

    def counting(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        opened.append(str(args[0]))
        return connect(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counting)
    entries, held_again = training_entries(ws)
    assert opened == [str(ws.catalog.path)]
    assert held_again == held and [e.scan_id for e in entries] == [e.scan_id for e in expected]
    assert [e.label_sets for e in entries] == [e.label_sets for e in expected] and entries
