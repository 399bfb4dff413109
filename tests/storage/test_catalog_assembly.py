"""The assembly rule in the named queries of #13: ``training_rows`` says the basis, ``reference_rows``
(the uncertainty reference ranges) reads expert + accepted labels, never a plain or rejected one."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.catalog import Catalog, LabelSetRecord
from storage.synthetic import synthetic_scan

SCAN = "src:case1"


def _stat(name: str, volume_ml: float) -> dict[str, object]:
    return {
        "name": name,
        "voxels": int(volume_ml * 1000),
        "volume_ml": volume_ml,
        "components": 1,
        "bbox": [0, 0, 0, 1, 1, 1],
        "centroid_mm": [0.0, 0.0, 0.0],
        "hu_mean": 40.0,
        "hu_std": 5.0,
    }


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """One scan: an original liver (1500 mL); a pseudo-label of liver (900 mL), spleen (200 mL) and
    pancreas (80 mL); a revised liver (1400 mL)."""
    cat = Catalog(tmp_path / "catalog.duckdb")
    cat.add_label_set(
        LabelSetRecord("ls-o", SCAN, None, "original", "k-o"),
        {"liver": "annotated_present"},
        [_stat("liver", 1500.0)],
        scan=synthetic_scan(SCAN),
    )
    cat.add_label_set(
        LabelSetRecord("ls-p", SCAN, None, "pseudo", "k-p", run_id="run-1"),
        {n: "annotated_present" for n in ("liver", "spleen", "pancreas")},
        [_stat("liver", 900.0), _stat("spleen", 200.0), _stat("pancreas", 80.0)],
    )
    return cat


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ({}, {"liver": ("original", 1500.0)}),
        ({"spleen": "accept"}, {"liver": ("original", 1500.0), "spleen": ("accepted", 200.0)}),
        ({"spleen": "reject", "pancreas": "needs_correction"}, {"liver": ("original", 1500.0)}),
        ({"liver": "accept"}, {"liver": ("original", 1500.0)}),  # an accepted guess never beats the expert
    ],
)
def test_reference_rows_are_expert_and_accepted_labels(
    catalog: Catalog, decisions: dict[str, str], expected: dict[str, tuple[str, float]]
) -> None:
    for name, decision in decisions.items():
        catalog.add_review(SCAN, name, "ls-p", decision, "", "Dr Ada")
    rows = {r["class_name"]: (r["basis"], r["volume_ml"]) for r in catalog.reference_rows()}
    assert rows == expected


def test_a_correction_replaces_the_original_in_the_reference(catalog: Catalog) -> None:
    catalog.add_label_set(
        LabelSetRecord("ls-r", SCAN, None, "revised", "k-r", parent_id="ls-o"),
        {"liver": "annotated_present"},
        [_stat("liver", 1400.0)],
    )
    (row,) = catalog.reference_rows()
    assert (row["class_name"], row["basis"], row["volume_ml"]) == ("liver", "revised", 1400.0)


def test_training_rows_name_the_basis(catalog: Catalog) -> None:
    catalog.add_review(SCAN, "spleen", "ls-p", "accept", "", "Dr Ada")
    catalog.add_review(SCAN, "pancreas", "ls-p", "reject", "", "Dr Ada")
    rows = catalog.training_rows(["revised", "original", "pseudo"])
    got = {r["class_name"]: (r["basis"], r["label_set_id"]) for r in rows.to_dict("records")}
    assert got == {"liver": ("original", "ls-o"), "spleen": ("accepted", "ls-p")}
    assert set(catalog.training_rows(["original"])["class_name"]) == {"liver"}
