"""nnU-Net v2 and MONAI exports: label values, the ignore label, overlap priority, folds, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench import export_formats as ef
from workbench import review
from workbench.cli import main
from workbench.training_set import TrainingEntry, assemble_training_set


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["liver"], {"background": 0, "liver": 1, "ignore": 2}),
        (
            ["liver_tumor", "spleen", "liver"],
            {"background": 0, "spleen": 1, "liver": 2, "liver_tumor": 3, "ignore": 4},
        ),
        (class_names(), {"background": 0, **{n: i + 1 for i, n in enumerate(class_names())}, "ignore": 33}),
    ],
)
def test_label_values_are_consecutive_with_ignore_highest(
    classes: list[str], expected: dict[str, int]
) -> None:
    values = ef.label_values(classes)
    assert values == expected
    assert sorted(values.values()) == list(range(len(values)))
    assert values["ignore"] == max(values.values())


def _entry(annotated: tuple[str, ...], masks: dict[str, np.ndarray]) -> TrainingEntry:
    return TrainingEntry("s:1", "s", "/x.nii.gz", annotated, tuple(n for n in annotated if n in masks), masks)


@pytest.mark.parametrize("complete", [True, False])
def test_label_map_partial_labels_and_tumour_inside_organ(complete: bool) -> None:
    shape = (10, 10, 10)
    liver = np.zeros(shape, bool)
    liver[2:8, 2:8, 2:8] = True
    tumour = np.zeros(shape, bool)
    tumour[4:6, 4:6, 4:6] = True
    values = ef.label_values(["liver", "liver_tumor", "spleen"])
    annotated = ("spleen", "liver", "liver_tumor") if complete else ("liver", "liver_tumor")
    out = ef.label_map(_entry(annotated, {"liver": liver, "liver_tumor": tumour}), values, shape)
    assert (out[tumour] == values["liver_tumor"]).all()
    assert (out[liver & ~tumour] == values["liver"]).all()
    rest = out[~liver]
    # spleen annotated and absent: the rest is true background; spleen unknown: the rest is ignored
    assert (rest == (0 if complete else values["ignore"])).all()


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def test_nnunet_export_matches_the_catalog(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "Dataset501_Test"
    classes = ["spleen", "kidney_right", "kidney_left", "liver", "kidney_tumor"]
    manifest = ef.export_nnunet(ws, out, classes=classes, progress=False)
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == ef.label_values(classes)
    assert dataset["numTraining"] == len(manifest["cases"]) == len(list((out / "labelsTr").glob("*.nii.gz")))
    entries = {e.scan_id: e for e in assemble_training_set(ws)}
    for case in manifest["cases"]:
        image, aff_i = _read(out / case["image"])
        label, aff_l = _read(out / case["label"])
        assert case["image"] == f"imagesTr/{case['case']}_0000.nii.gz"
        assert image.shape == label.shape and np.allclose(aff_i, aff_l)
        e = entries[case["scan_id"]]
        known = [c for c in classes if c in e.annotated]
        assert case["annotated"] == known
        values = dataset["labels"]
        for c in known:
            if c in e.present and c != "kidney_tumor":
                m = e.masks[c]
                # the class keeps its value except where a tumour was painted over it
                assert (label[m] == values[c]).mean() > 0.5
        background = label[
            ~np.any([e.masks[c] for c in e.present if c in known] or [np.zeros(label.shape, bool)], axis=0)
        ]
        assert set(np.unique(background)) == {0 if case["complete"] else values["ignore"]}
    assert ef.verify_manifest(out) == []
    first = manifest["cases"][0]["label"]
    (out / first).write_bytes(b"tampered")
    assert ef.verify_manifest(out) == [first]
    assert not list(out.rglob(".partial-*"))


def test_export_uses_revised_over_original(ws: Workspace, tmp_path: Path) -> None:
    scan = "btcv:demo000"
    shape = tuple(int(s) for s in review.scan_row(ws, scan)["shape"])
    fixed = np.zeros(shape, bool)
    fixed[10:14, 10:14, 10:14] = True
    review.correct(ws, scan, "liver", fixed, "Dr Ada")
    manifest = ef.export_nnunet(ws, tmp_path / "d", classes=["liver"], sources=["btcv"], progress=False)
    (case,) = manifest["cases"]
    assert case["origins"] == {"liver": "revised"}
    label, _ = _read(tmp_path / "d" / case["label"])
    assert (label == 1).sum() == 4**3


def test_monai_folds_are_seeded_grouped_and_cover_every_scan(ws: Workspace, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    m1 = ef.export_monai(
        ws,
        tmp_path / "a",
        n_folds=3,
        seed=7,
        progress=False,
        on_progress=lambda d, t, c: calls.append((d, t)),
    )
    datalist = json.loads((tmp_path / "a" / "datalist.json").read_text())
    items = datalist["training"]
    assert len(items) == len(m1["cases"]) == calls[-1][0] == calls[-1][1]
    assert {i["fold"] for i in items} == {0, 1, 2}
    assert datalist["ignore_label"] == datalist["labels"]["ignore"] == 33
    for i in items:
        assert (tmp_path / "a" / i["image"]).is_file() and (tmp_path / "a" / i["label"]).is_file()
    folds = {i["scan_id"]: i["fold"] for i in items}
    assert ef.assign_folds(m1["cases"], 3, 7) == folds
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    assert ef.verify_manifest(tmp_path / "a") == []


def test_fold_assignment_depends_on_the_seed_only() -> None:
    cases = [{"scan_id": f"src{i % 4}:{i}", "source": f"src{i % 4}"} for i in range(40)]
    a, b = ef.assign_folds(cases, 5, 1), ef.assign_folds(list(reversed(cases)), 5, 1)
    assert a == b
    assert a != ef.assign_folds(cases, 5, 2)
    assert sorted(np.bincount(list(a.values())).tolist()) == [8] * 5
    for src in range(4):  # every fold mixes sources: each source is spread over the folds
        assert len({f for s, f in a.items() if s.startswith(f"src{src}:")}) == 5


def test_folds_group_entries_of_one_scan() -> None:
    cases = [{"scan_id": f"s:{i // 2}", "source": "s"} for i in range(10)]  # two entries per scan
    folds = ef.assign_folds(cases, 2, 0)
    assert len(folds) == 5 and set(folds.values()) == {0, 1}
    with pytest.raises(ValueError, match="n_folds"):
        ef.assign_folds(cases, 1, 0)


@pytest.mark.parametrize("fmt", ["nnunet", "monai"])
def test_cli_export(ws: Workspace, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / fmt
    rc = main(
        [
            "--workspace",
            str(ws.root),
            "export",
            fmt,
            str(out),
            "--source",
            "kits23",
            "--class",
            "kidney_left",
            "--no-progress",
            "--folds",
            "2",
        ]
    )
    assert rc == 0
    assert "exported 1 cases" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["parameters"]["classes"] == ["kidney_left"]


def test_unknown_class_is_refused(ws: Workspace, tmp_path: Path) -> None:
    assert (
        main(
            [
                "--workspace",
                str(ws.root),
                "export",
                "nnunet",
                str(tmp_path / "x"),
                "--class",
                "brain",
                "--no-progress",
            ]
        )
        == 2
    )
