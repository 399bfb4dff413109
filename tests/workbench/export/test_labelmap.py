"""Label-map exports: label values, the ignore label and overlap priority (labelmap), and both formats
through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.cli import main
from workbench.export import labelmap
from workbench.training_set import TrainingEntry


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
    values = labelmap.label_values(classes)
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
    values = labelmap.label_values(["liver", "liver_tumor", "spleen"])
    annotated = ("spleen", "liver", "liver_tumor") if complete else ("liver", "liver_tumor")
    out = labelmap.label_map(_entry(annotated, {"liver": liver, "liver_tumor": tumour}), values, shape)
    assert (out[tumour] == values["liver_tumor"]).all()
    assert (out[liver & ~tumour] == values["liver"]).all()
    rest = out[~liver]
    # spleen annotated and absent: the rest is true background; spleen unknown: the rest is ignored
    assert (rest == (0 if complete else values["ignore"])).all()


# ----------------------------------------------------------------------- both formats through the CLI


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
