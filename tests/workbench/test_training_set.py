"""Training-set assembly: revised > original > pseudo per scan x class, unknown stays unknown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.workspace import Workspace
from workbench.ingest import ingest, scan_id_for
from workbench.training_set import assemble_training_set, bases_for, learnt_counts

SHAPE = (64, 56, 40)


def _add(
    ws: Workspace, scan_id: str, origin: str, version: int, masks: dict[str, np.ndarray], known: set[str]
) -> str:
    ls_id = f"ls-{origin}-{version}"
    ws.masks.write_label_set(ls_id, masks, SHAPE)
    coverage = {
        n: ("annotated_present" if n in masks and masks[n].any() else "annotated_absent")
        if n in known
        else "not_annotated"
        for n in class_names()
    }
    ws.catalog.add_label_set(LabelSetRecord(ls_id, scan_id, version, origin, ls_id), coverage, [])
    return ls_id


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    write_native(make_phantom(31, shape=SHAPE), get_protocol("lits"), tmp_path / "lits", "case01")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "lits", tmp_path / "lits", progress=False)
    return ws


def test_priority_per_class(ws: Workspace) -> None:
    scan = scan_id_for("lits", "case01")
    spleen = np.zeros(SHAPE, bool)
    spleen[5:9, 5:9, 5:9] = True
    liver_fix = np.zeros(SHAPE, bool)
    liver_fix[10:20, 10:20, 10:20] = True
    # a model predicted spleen and liver; a reviewer then corrected the liver only
    _add(ws, scan, "pseudo", 2, {"spleen": spleen, "liver": ~liver_fix}, {"spleen", "liver"})
    _add(ws, scan, "revised", 3, {"liver": liver_fix}, {"liver"})
    (entry,) = assemble_training_set(ws)
    assert entry.origins == {"spleen": "pseudo", "liver": "revised", "liver_tumor": "original"}
    assert entry.annotated == ("spleen", "liver", "liver_tumor")  # model order
    np.testing.assert_array_equal(entry.masks["liver"], liver_fix)
    np.testing.assert_array_equal(entry.masks["spleen"], spleen)
    # without pseudo labels the spleen is unknown again, and the original liver is used
    (entry,) = assemble_training_set(ws, origins=("revised", "original"))
    assert "spleen" not in entry.annotated and entry.origins["liver"] == "revised"


def test_original_beats_pseudo_and_absent_is_known(ws: Workspace) -> None:
    scan = scan_id_for("lits", "case01")
    tumour = np.zeros(SHAPE, bool)
    tumour[1:3, 1:3, 1:3] = True
    _add(ws, scan, "pseudo", 2, {"liver_tumor": tumour}, {"liver_tumor"})
    (entry,) = assemble_training_set(ws)
    original = ws.catalog.latest_original(scan)
    assert entry.label_sets["liver_tumor"] == original["id"]
    assert set(entry.masks) == set(entry.present)


def test_unknown_origin_is_refused(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="unknown origins"):
        assemble_training_set(ws, origins=("gold",))


@pytest.mark.parametrize(
    ("decision", "bases", "spleen_basis"),
    [
        (None, ("revised", "original", "pseudo"), "pseudo"),
        (None, ("revised", "original", "accepted"), None),
        ("accept", ("revised", "original", "pseudo"), "accepted"),
        ("accept", ("revised", "original", "accepted"), "accepted"),
        ("reject", ("revised", "original", "pseudo"), None),
        ("needs_correction", ("revised", "original", "pseudo"), None),
    ],
)
def test_review_decisions_reach_the_training_set(
    ws: Workspace, decision: str | None, bases: tuple[str, ...], spleen_basis: str | None
) -> None:
    from workbench.review import record_decision

    scan = scan_id_for("lits", "case01")
    spleen = np.zeros(SHAPE, bool)
    spleen[5:9, 5:9, 5:9] = True
    ls = _add(ws, scan, "pseudo", 2, {"spleen": spleen}, {"spleen"})
    if decision is not None:
        record_decision(ws, scan, "spleen", ls, decision, "Dr Ada")
    (entry,) = assemble_training_set(ws, origins=bases)
    assert entry.bases.get("spleen") == spleen_basis
    assert entry.bases["liver"] == entry.origins["liver"] == "original"
    if spleen_basis is None:
        assert "spleen" not in entry.annotated and "spleen" not in entry.masks
    else:
        assert entry.label_sets["spleen"] == ls and int(entry.masks["spleen"].sum()) == 4**3


def test_held_out_scans_can_be_excluded(ws: Workspace) -> None:
    scan = scan_id_for("lits", "case01")
    assert assemble_training_set(ws, exclude_scans={scan}) == []
    assert [e.scan_id for e in assemble_training_set(ws, exclude_scans={"other:1"})] == [scan]


@pytest.mark.parametrize(
    ("policy", "bases"),
    [
        ("accepted", ("revised", "original", "accepted")),
        ("all", ("revised", "original", "pseudo")),
        ("none", ("revised", "original")),
    ],
)
def test_pseudo_policies(policy: str, bases: tuple[str, ...]) -> None:
    assert bases_for(policy) == bases
    with pytest.raises(ValueError, match="unknown pseudo-label policy"):
        bases_for("gold")


@pytest.mark.parametrize(
    ("decision", "spleen_learnt"),
    [(None, False), ("accept", True), ("reject", False)],
)
def test_learnt_counts_count_expert_and_accepted_labels_only(
    ws: Workspace, decision: str | None, spleen_learnt: bool
) -> None:
    from workbench.review import record_decision

    scan = scan_id_for("lits", "case01")
    spleen = np.zeros(SHAPE, bool)
    spleen[5:9, 5:9, 5:9] = True
    ls = _add(ws, scan, "pseudo", 2, {"spleen": spleen}, {"spleen"})
    if decision is not None:
        record_decision(ws, scan, "spleen", ls, decision, "Dr Ada")
    counts = learnt_counts(assemble_training_set(ws))
    # LiTS annotates the liver and its tumour: one original scan each; the spleen only once accepted.
    assert counts["liver"] == {"sources": ["lits"], "scans": 1}
    assert ("spleen" in counts) is spleen_learnt
    assert set(counts) - {"spleen"} == set(get_protocol("lits").annotated)
