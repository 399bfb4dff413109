"""Pseudo-labelling: geometry round trips in any orientation, post-processing, the catalog writes, resume
after a kill, bad input, the CLI.

Most tests use a "coded" phantom CT (air outside the body, -100 HU inside, one HU code per organ: spleen
240, both kidneys 140, liver 40) and an intensity-window "model" (a torch module that calls a voxel a class
when its HU lies in the class's window). That model is equivariant to flips and axis permutations, so a
prediction that lands on the wrong side or the wrong voxels after the round trip through the inference grid
can only be a geometry bug; and it calls both kidneys "kidney_left" AND "kidney_right", so only the
post-processing can tell them apart. A randomly initialised small Universal Model checkpoint covers the
checkpoint path, the CLI and resume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harmonize.errors import HarmonizeError
from harmonize.masks import CroppedMask
from harmonize.phantoms import make_phantom, write_native
from harmonize.phantoms.native import reorient
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_names
from harmonize.volume import Volume
from storage.workspace import Workspace
from workbench import pseudolabel as pl
from workbench.cli import main
from workbench.ingest import ingest

torch.set_num_threads(2)

#: Class -> HU code of the coded phantom.
CODE = {"spleen": 240.0, "kidney_right": 140.0, "kidney_left": 140.0, "liver": 40.0}
SHAPE, SPACING = (96, 96, 64), (3.0, 3.0, 3.0)


class WindowNet(torch.nn.Module):
    """Logits positive where the HU lies within 30 HU of the class's code."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.codes = [CODE[n] for n in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x * 425.0 - 175.0
        return torch.cat([0.5 * (30.0 - (hu - c).abs()) for c in self.codes], dim=1)


def coded_image(phantom) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The phantom's CT replaced by its organ codes (RAS order, float32)."""
    image = np.where(phantom.ct.array > -500, -100.0, -1000.0).astype(np.float32)
    for name, code in CODE.items():
        if name in phantom.masks:
            image[phantom.masks[name]] = code
    return image


def window_segmenter(names: tuple[str, ...] = tuple(CODE), sha: str = "window-model") -> pl.Segmenter:
    return pl.Segmenter(WindowNet(names), names, (6.0, 6.0, 6.0), (32, 32, 32), sha, "none", "none", "window")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def _ingest(tmp_path: Path, source: str, seeds: tuple[int, ...]) -> tuple[Workspace, dict[str, object]]:
    protocol = get_protocol(source)
    truth = {}
    for seed in seeds:
        phantom = make_phantom(seed, shape=SHAPE, spacing=SPACING)
        case = write_native(
            phantom, protocol, tmp_path / "data" / source, f"case{seed:02d}", image=coded_image(phantom)
        )
        truth[f"{source}:case{seed:02d}"] = (phantom, case)
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, source, tmp_path / "data" / source, progress=False)
    assert not summary.skipped, summary.skipped
    return ws, truth


def _native_truth(phantom, case, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return reorient(phantom.masks[name], phantom.ct.affine, case.axcodes)[0]


# ------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("codes", ["RAS", "LPS", "IPL", "LAS", "PIR"])
@pytest.mark.parametrize(("spacing", "floor"), [(3.0, 0.97), (4.5, 0.8)])
def test_prediction_returns_to_the_original_grid_in_any_orientation(
    codes: str, spacing: float, floor: float
) -> None:
    phantom = make_phantom(3, shape=SHAPE, spacing=SPACING)
    array, affine = reorient(coded_image(phantom), phantom.ct.affine, tuple(codes))
    volume = Volume(array, affine)
    seg = window_segmenter(("spleen",))
    pred = pl.predict_lowres(seg, volume, spacing_mm=(spacing,) * 3, tta=False)
    assert pred.probs.dtype == np.float16 and pred.probs.shape[0] == 1
    mask = pl.resample_to_original(pred.probs[0], pred.affine, affine, volume.shape)
    truth = reorient(phantom.masks["spleen"], phantom.ct.affine, tuple(codes))[0]
    kept, _, _ = pl.largest_component(mask)
    assert dice(kept.full(), truth) > floor
    # The same world position whatever the orientation: the centroid in RAS mm matches the truth's.
    got = volume.world(np.argwhere(kept.full()).mean(axis=0)[None])[0]
    want = volume.world(np.argwhere(truth).mean(axis=0)[None])[0]
    assert np.abs(got - want).max() < spacing / 2


def test_resample_computes_only_the_hot_box_and_matches_a_full_resampling() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    prob = np.zeros((20, 18, 16), np.float32)
    prob[5:12, 4:9, 6:10] = rng.uniform(0.3, 1.0, (7, 5, 4))
    src = np.diag([3.0, 3.0, 3.0, 1.0])
    src[:3, 3] = (-10.0, 4.0, 7.0)
    dst = np.array([[-1.0, 0, 0, 50.0], [0, 0, -1.2, 60.0], [0, 1.5, 0, 2.0], [0, 0, 0, 1]])
    shape = (70, 40, 45)
    got = pl.resample_to_original(prob, src, dst, shape).full()
    m = np.linalg.inv(src) @ dst
    full = ndimage.affine_transform(prob, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1) >= 0.5
    assert full.sum() > 100
    np.testing.assert_array_equal(got, full)


# -------------------------------------------------------------------------------- post-processing


def _cm(full: np.ndarray) -> CroppedMask:
    return CroppedMask.from_full(full)


def test_postprocess_keeps_the_largest_component_and_records_it() -> None:
    m = np.zeros((30, 30, 30), bool)
    m[2:10, 2:10, 2:10] = True
    m[20:23, 20:23, 20:23] = True
    res = pl.postprocess({"spleen": _cm(m)}, np.eye(4), midline_x_mm=100.0)
    assert res.masks["spleen"].voxels == 512
    assert res.changes == [
        {
            "class": "spleen",
            "step": "largest_component",
            "voxels_before": 539,
            "voxels_after": 512,
            "detail": "kept the largest of 2 components",
        }
    ]
    assert "spleen: kept the largest of 2 components (539 -> 512 voxels)" in res.notes


def test_postprocess_resplits_pairs_at_the_midline_in_world_coordinates() -> None:
    # LPS-like grid: index i grows towards the patient's LEFT (x = -i). Midline at x = -20 (i = 20).
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    left_kidney = np.zeros((40, 20, 20), bool)
    left_kidney[28:34, 5:10, 5:10] = True  # i > 20: x < -20: patient's left
    right_kidney = np.zeros((40, 20, 20), bool)
    right_kidney[6:12, 5:10, 5:10] = True
    # The model swapped the channels; both kidneys also leak into each other's channel.
    res = pl.postprocess(
        {"kidney_left": _cm(right_kidney | left_kidney), "kidney_right": _cm(left_kidney)},
        affine,
        midline_x_mm=-20.0,
    )
    np.testing.assert_array_equal(res.masks["kidney_left"].full(), left_kidney)
    np.testing.assert_array_equal(res.masks["kidney_right"].full(), right_kidney)
    assert {d.side for d in res.splits} == {"left", "right"}
    assert any(c["step"] == "split_left_right" for c in res.changes)


@pytest.mark.parametrize("parent_source", ["predicted", "annotated", "annotated_absent"])
def test_postprocess_keeps_tumour_only_inside_its_organ(parent_source: str) -> None:
    liver = np.zeros((40, 40, 40), bool)
    liver[5:25, 5:25, 5:25] = True
    tumour = np.zeros_like(liver)
    tumour[10:15, 10:15, 10:15] = True  # inside
    tumour[32:36, 32:36, 32:36] = True  # far outside (> 5 mm)
    masks = {"liver_tumor": _cm(tumour)}
    known = {}
    if parent_source == "predicted":
        masks["liver"] = _cm(liver)
    elif parent_source == "annotated":
        known["liver"] = _cm(liver)
    else:
        known["liver"] = CroppedMask.empty(liver.shape)  # type: ignore[arg-type]
    res = pl.postprocess(masks, np.eye(4), midline_x_mm=0.0, known=known)
    expected = 0 if parent_source == "annotated_absent" else 125
    assert res.masks["liver_tumor"].voxels == expected
    assert res.changes[-1]["step"] == "inside_parent"


def test_postprocess_removes_portal_vein_below_the_pancreas() -> None:
    pancreas = np.zeros((20, 20, 30), bool)
    pancreas[5:15, 5:10, 12:16] = True
    vein = np.zeros_like(pancreas)
    vein[8:10, 12:14, 4:25] = True
    res = pl.postprocess(
        {"pancreas": _cm(pancreas), "portal_vein_and_splenic_vein": _cm(vein)}, np.eye(4), midline_x_mm=10.0
    )
    kept = res.masks["portal_vein_and_splenic_vein"].full()
    assert kept[:, :, :12].sum() == 0 and kept[:, :, 12:].sum() == 4 * 13


# ---------------------------------------------------------------------------- the catalog job


@pytest.fixture()
def lits_ws(tmp_path: Path) -> tuple[Workspace, dict[str, object]]:
    return _ingest(tmp_path, "lits", (0, 1))


def test_pseudolabel_writes_pseudo_label_sets_on_the_original_lps_grid(lits_ws) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()
    summary = pl.pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
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
            want = _native_truth(phantom, case, name)
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


def test_all_classes_predicts_annotated_classes_too(lits_ws) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    scan_id = sorted(truth)[0]
    pl.pseudolabel(ws, window_segmenter(), scans=[scan_id], all_classes=True, low_res_mm=6.0, progress=False)
    ls = ws.catalog.query("SELECT id FROM label_set WHERE scan_id = ? AND origin = 'pseudo'", [scan_id])
    assert ws.catalog.coverage(ls["id"].iloc[0])["liver"] == "annotated_present"


def test_a_vanished_scan_fails_with_one_line_and_writes_nothing(lits_ws) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    gone, kept = sorted(truth)
    image = Path(ws.catalog.query("SELECT image_path FROM scan WHERE id = ?", [gone])["image_path"].iloc[0])
    image.unlink()
    summary = pl.pseudolabel(ws, window_segmenter(), low_res_mm=6.0, progress=False)
    assert summary.done == [kept]
    assert len(summary.failed) == 1 and summary.failed[0][0] == gone and str(image) in summary.failed[0][1]
    assert "not found" in summary.failed[0][1]
    assert (
        ws.catalog.query(
            "SELECT count(*) AS n FROM label_set WHERE scan_id = ? AND origin = 'pseudo'", [gone]
        )["n"].iloc[0]
        == 0
    )
    assert any(f"failed {gone}" in line for line in summary.lines())


def test_resume_after_a_kill_skips_finished_scans(lits_ws) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()

    def kill(scan_id: str, outcome: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pl.pseudolabel(ws, seg, low_res_mm=6.0, progress=False, on_scan=kill)
    first = ws.catalog.query("SELECT scan_id FROM label_set WHERE origin = 'pseudo'")["scan_id"].tolist()
    assert len(first) == 1
    summary = pl.pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert summary.skipped == first and summary.done == [s for s in sorted(truth) if s not in first]
    again = pl.pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(truth)
    assert ws.catalog.query("SELECT count(*) AS n FROM label_set WHERE origin = 'pseudo'")["n"].iloc[0] == 2
    # Another checkpoint is another model: it labels every scan again.
    other = pl.pseudolabel(ws, window_segmenter(sha="other-model"), low_res_mm=6.0, progress=False)
    assert sorted(other.done) == sorted(truth)


def test_a_refused_catalog_write_leaves_no_mask_and_a_hard_kill_orphan_is_collected(
    lits_ws, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ws, _ = lits_ws
    seg = window_segmenter()
    before = set(ws.masks.keys())

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(ws.catalog, "add_label_set", refuse)
    with pytest.raises(OSError, match="disk full"):
        pl.pseudolabel(ws, seg, low_res_mm=6.0, progress=False)
    assert set(ws.masks.keys()) == before
    monkeypatch.undo()
    # A hard kill between the mask write and the catalog write leaves a file no label set names.
    orphan = "ls-" + "0" * 20
    ws.masks.write_label_set(orphan, {"spleen": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    assert pl.remove_orphan_masks(ws) == []  # too young: a running job may be about to commit it
    assert pl.remove_orphan_masks(ws, min_age_s=0) == [ws.masks.path(orphan)]
    assert set(ws.masks.keys()) == before


def test_uncertainty_lost_to_a_kill_is_completed_without_a_second_label_set(lits_ws, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    seg = window_segmenter()
    scan = sorted(truth)[0]

    def die(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(pl.unc, "store_uncertainty", die)
    with pytest.raises(KeyboardInterrupt):
        pl.pseudolabel(ws, seg, scans=[scan], low_res_mm=6.0, progress=False)
    monkeypatch.undo()
    ls = ws.catalog.query("SELECT id FROM label_set WHERE origin = 'pseudo'")["id"].tolist()
    assert len(ls) == 1 and ws.catalog.query("SELECT count(*) AS n FROM uncertainty")["n"].iloc[0] == 0
    summary = pl.pseudolabel(ws, seg, scans=[scan], low_res_mm=6.0, progress=False)
    assert summary.done == [scan]
    assert ws.catalog.query("SELECT id FROM label_set WHERE origin = 'pseudo'")["id"].tolist() == ls
    unc = ws.catalog.query("SELECT * FROM uncertainty")
    assert set(unc["label_set_id"]) == set(ls) and set(unc["class_name"]) == {
        "spleen",
        "kidney_left",
        "kidney_right",
    }


@pytest.mark.parametrize(("overlap", "low_res"), [(1.0, 3.0), (-0.1, 3.0), (0.5, 0.0), (0.5, float("nan"))])
def test_bad_settings_are_refused(tmp_path: Path, overlap: float, low_res: float) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError):
        pl.pseudolabel(ws, window_segmenter(), overlap=overlap, low_res_mm=low_res, progress=False)


# ------------------------------------------------------------------------- checkpoints and CLI


def _save_random_checkpoint(path: Path, names: tuple[str, ...]) -> Path:
    from workbench.model.checkpoint import save_checkpoint
    from workbench.model.network import UniversalModel
    from workbench.model.text import TextVocabulary
    from workbench.model.train import TrainConfig
    from workbench.model.transforms import PipelineConfig

    vocab = TextVocabulary(
        names, names, "V1", "random-test", "none", np.random.default_rng(0).standard_normal((len(names), 512))
    )
    torch.manual_seed(0)
    feats = (4, 4, 8, 8, 16, 4)
    model = UniversalModel("small_unet", embeddings=vocab.embeddings, small_features=feats)
    cfg = TrainConfig(
        pipeline=PipelineConfig(spacing_mm=(6.0,) * 3, patch=(32, 32, 32)), small_features=feats
    )
    save_checkpoint(path, model, None, {"step": 0, "config": cfg.to_dict()}, vocab)
    return path


def test_checkpoints_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    bad = _save_random_checkpoint(tmp_path / "bad.pt", ("spleen", "my_new_organ"))
    with pytest.raises(HarmonizeError, match="my_new_organ"):
        pl.Segmenter.from_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(HarmonizeError, match=r"junk\.pt"):
        pl.Segmenter.from_checkpoint(junk)


def test_checkpoint_records_its_identity(tmp_path: Path) -> None:
    path = _save_random_checkpoint(tmp_path / "m.pt", ("spleen", "liver"))
    seg = pl.Segmenter.from_checkpoint(path)
    assert seg.class_names == ("spleen", "liver") and seg.patch == (32, 32, 32)
    assert seg.spacing_mm == (6.0, 6.0, 6.0) and seg.backbone == "small_unet"
    assert seg.sha256 == pl.file_sha256(path) and seg.encoder_id == "random-test"
    assert set(seg.class_names) <= set(class_names())


def test_cli_pseudolabel_and_queue(lits_ws, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    ckpt = _save_random_checkpoint(tmp_path / "m.pt", ("spleen", "liver", "kidney_left", "kidney_right"))
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
