"""A segmentation tool's outputs ingested as pseudo-labels of its run (``workbench.pseudolabel.tool_runs``).

The workspace: three KiTS23 phantoms (expert labels, the reference ranges) and two phantoms written as the
TotalSegmentator v2 tool's multilabel output. Expected numbers are computed here from the catalog's
statistics and the phantoms, not by calling the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest, scan_id_for
from workbench.learning.evaluation import catalog_truth
from workbench.pseudolabel.tool_runs import record_tool_run, tool_context, tool_output_rows, tool_run_id
from workbench.review import record_decision

TOOL = "totalsegmentator_v2"
RUN = "tool-totalsegmentator_v2-p1"
SHAPE = (72, 64, 48)


def _write(source: str, root: Path, seeds: tuple[int, ...]) -> list[str]:
    cases = []
    for seed in seeds:
        case = f"case{seed:02d}"
        write_native(make_phantom(seed, shape=SHAPE), get_protocol(source), root, case)
        cases.append(case)
    return cases


@pytest.fixture
def tool_ws(tmp_path: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    _write("kits23", tmp_path / "kits", (0, 1, 2))
    _write(TOOL, tmp_path / "ts", (3, 4))
    assert ingest(ws, "kits23", tmp_path / "kits", progress=False).skipped == []
    assert ingest(ws, TOOL, tmp_path / "ts", progress=False).skipped == []
    return ws


def _tool_scans(ws: Workspace) -> list[str]:
    return [scan_id_for(TOOL, c) for c in ("case03", "case04")]


def test_tool_outputs_are_pseudo_label_sets_of_one_tool_run(tool_ws: Workspace) -> None:
    sets = tool_ws.catalog.query("SELECT scan_id, origin, run_id, version FROM label_set ORDER BY scan_id")
    ts = sets[sets["scan_id"].str.startswith(TOOL)]
    assert list(ts["origin"]) == ["pseudo", "pseudo"] and set(ts["run_id"]) == {RUN}
    assert set(sets[~sets["scan_id"].str.startswith(TOOL)]["origin"]) == {"original"}
    run = tool_ws.catalog.run_row(RUN)
    assert run is not None and run["kind"] == "tool"
    assert json.loads(run["config"]) == {
        "tool": "TotalSegmentator 2.x",
        "source": TOOL,
        "protocol_version": 1,
        "reference": get_protocol(TOOL).reference,
    }
    assert tool_run_id(get_protocol(TOOL)) == RUN and tool_run_id(get_protocol("kits23")) is None


def test_tool_outputs_are_no_ground_truth_and_not_annotated_in_the_statistics(tool_ws: Workspace) -> None:
    assert list(catalog_truth(tool_ws, _tool_scans(tool_ws))) == []
    table = tool_ws.catalog.long_tail_table().set_index("class")
    assert int(table[TOOL].sum()) == 0  # the tool's source annotates nothing
    assert table.loc["spleen", "annotated"] == 0  # only the tool "annotates" the spleen here
    assert table.loc["kidney_right", "annotated"] == 3  # the three KiTS scans
    assert {r["scan_id"] for r in tool_ws.catalog.reference_rows()} == {
        scan_id_for("kits23", f"case{s:02d}") for s in (0, 1, 2)
    }


def test_every_class_the_tool_labels_gets_a_plausibility_row(tool_ws: Workspace) -> None:
    protocol = get_protocol(TOOL)
    items = tool_ws.catalog.uncertainty_items(RUN)
    assert len(items) == 2 * len(protocol.annotated) == 46
    for scan_id in _tool_scans(tool_ws):
        rows = items[items["scan_id"] == scan_id]
        assert set(rows["class_name"]) == set(protocol.annotated)
        ls = tool_ws.catalog.label_sets(scan_id).iloc[-1]
        assert set(rows["label_set_id"]) == {ls["id"]}
        stats = {r["name"]: r for r in tool_ws.catalog.class_stats_rows(str(ls["id"]))}
        for _, row in rows.iterrows():
            sig = json.loads(row["signals"])
            assert sig["entropy"] is None and sig["tta_disagreement"] is None  # no probabilities
            name = str(row["class_name"])
            if name in stats:
                assert sig["voxels"] == stats[name]["voxels"]
                assert sig["volume_ml"] == pytest.approx(stats[name]["volume_ml"], abs=1e-4)
                assert sig["components"] == stats[name]["components"]
            else:
                assert sig["present"] is False


def test_volume_z_is_measured_against_the_expert_labels(tool_ws: Workspace) -> None:
    kits = tool_ws.catalog.query(
        "SELECT st.volume_ml FROM class_stats st JOIN label_set l ON l.id = st.label_set_id "
        "WHERE l.origin = 'original' AND st.class_name = 'kidney_right'"
    )["volume_ml"]
    logv = np.log(kits.to_numpy())
    assert len(logv) == 3
    mean, sd = logv.mean(), max(logv.std(ddof=1), 0.15)
    scan = _tool_scans(tool_ws)[0]
    ls = str(tool_ws.catalog.label_sets(scan)["id"].iloc[-1])
    volume = {r["name"]: r["volume_ml"] for r in tool_ws.catalog.class_stats_rows(ls)}["kidney_right"]
    items = tool_ws.catalog.uncertainty_items(RUN)
    row = items[(items["scan_id"] == scan) & (items["class_name"] == "kidney_right")].iloc[0]
    assert json.loads(row["signals"])["volume_z"] == pytest.approx((math.log(volume) - mean) / sd, abs=2e-4)
    # the spleen has no expert reference here: no z-score, no reference scans
    spleen = items[(items["scan_id"] == scan) & (items["class_name"] == "spleen")].iloc[0]
    assert json.loads(spleen["signals"])["volume_z"] is None
    assert json.loads(spleen["signals"])["n_reference"] == 0


def test_tool_outputs_are_queued_and_reviewed_like_our_pseudo_labels(tool_ws: Workspace) -> None:
    queue = tool_ws.catalog.review_queue(sources=[TOOL])
    assert len(queue) == 46 and set(queue["origin"]) == {"pseudo"} and set(queue["status"]) == {"pending"}
    scan = _tool_scans(tool_ws)[0]
    ls = str(tool_ws.catalog.label_sets(scan)["id"].iloc[-1])
    record_decision(tool_ws, scan, "liver", ls, "accept", "Dr Ada")
    record_decision(tool_ws, scan, "spleen", ls, "reject", "Dr Ada")
    basis = tool_ws.catalog.query(
        "SELECT class_name, basis FROM current_label WHERE scan_id = ? AND class_name IN ('liver', 'spleen', "
        "'stomach')",
        [scan],
    )
    assert dict(zip(basis["class_name"], basis["basis"])) == {"liver": "accepted", "stomach": "pseudo"}
    assert len(tool_ws.catalog.review_queue(sources=[TOOL], status="pending")) == 44


def test_re_ingesting_unchanged_tool_outputs_creates_nothing(tool_ws: Workspace, tmp_path: Path) -> None:
    before = tool_ws.catalog.counts()
    items = tool_ws.catalog.uncertainty_items().sort_values(["scan_id", "class_name"]).reset_index(drop=True)
    runs = tool_ws.catalog.run_ids()
    again = ingest(tool_ws, TOOL, tmp_path / "ts", progress=False)
    assert len(again.unchanged) == 2 and not again.added and not again.updated
    assert tool_ws.catalog.counts() == before and tool_ws.catalog.run_ids() == runs
    after = tool_ws.catalog.uncertainty_items().sort_values(["scan_id", "class_name"]).reset_index(drop=True)
    assert after.equals(items)


def test_a_changed_tool_output_is_a_new_pseudo_version_with_fresh_rows(
    tool_ws: Workspace, tmp_path: Path
) -> None:
    first = tool_ws.catalog.label_sets(scan_id_for(TOOL, "case03")).iloc[-1]
    label = tmp_path / "ts" / "case03" / "segmentations.nii.gz"
    img = nib.load(label)
    data = np.asarray(img.dataobj).copy()
    data[data == 5] = 0  # the tool's next version finds no liver
    nib.save(nib.Nifti1Image(data, img.affine, img.header), label)
    summary = ingest(tool_ws, TOOL, tmp_path / "ts", progress=False)
    assert summary.updated == [scan_id_for(TOOL, "case03")]
    sets = tool_ws.catalog.label_sets(scan_id_for(TOOL, "case03"))
    assert list(sets["origin"]) == ["pseudo", "pseudo"] and list(sets["version"]) == [1, 2]
    new = sets.iloc[-1]
    assert new["parent_id"] == first["id"] and new["run_id"] == RUN
    items = tool_ws.catalog.uncertainty_items(RUN)
    assert set(items[items["scan_id"] == scan_id_for(TOOL, "case03")]["label_set_id"]) == {new["id"]}
    assert len(items) == 46  # replaced, not added
    liver = items[(items["scan_id"] == scan_id_for(TOOL, "case03")) & (items["class_name"] == "liver")]
    assert json.loads(liver["signals"].iloc[0])["present"] is False
    assert tool_ws.catalog.coverage(str(new["id"]))["liver"] == "annotated_absent"


def test_expert_sources_have_no_tool_run(tool_ws: Workspace) -> None:
    kits = get_protocol("kits23")
    with pytest.raises(ValueError, match="kits23 holds expert labels"):
        record_tool_run(tool_ws, kits)
    assert tool_ws.catalog.run_ids() == {RUN}
    assert tool_context(tool_ws, kits) is None
    assert tool_output_rows(None, "x", "y", None, None) == []  # type: ignore[arg-type]
