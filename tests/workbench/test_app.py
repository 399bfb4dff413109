"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page, and the review actions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.workspace import Workspace
from workbench import review

APP = str(Path(__file__).resolve().parents[2] / "workbench" / "app.py")
SCAN = "btcv:demo000"
TIMEOUT = 60


@pytest.fixture
def ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("WORKBENCH_HOME", str(demo_ws.root))
    return demo_ws


@pytest.fixture
def queued(ws: Workspace) -> str:
    """One pseudo label set on SCAN (colon + intestine, which BTCV does not annotate) with two uncertainty
    items; returns its id."""
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    colon = np.zeros(shape, bool)
    colon[20:40, 20:40, 20:40] = True
    colon[60:63, 60:63, 50:53] = True  # a stray fragment
    intestine = np.zeros(shape, bool)
    intestine[50:60, 30:40, 10:20] = True
    ls_id = "ls-pseudo-test"
    ws.masks.write_label_set(ls_id, {"colon": colon, "intestine": intestine}, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov.update({"colon": "annotated_present", "intestine": "annotated_present"})
    ws.catalog.add_label_set(
        LabelSetRecord(id=ls_id, scan_id=SCAN, version=2, origin="pseudo", mask_key=ls_id, run_id="run-1"),
        cov,
        [],
    )
    with ws.catalog.transaction() as con:
        for cls, score in (("colon", 0.9), ("intestine", 0.4)):
            con.execute(
                "INSERT INTO uncertainty VALUES (?, ?, 'run-1', ?, ?, ?, ?)",
                [SCAN, cls, ls_id, score, json.dumps({"entropy": score}), ["high_entropy"]],
            )
    return ls_id


def _app(page: str | None = None, reviewer: str | None = "Dr Ada") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if reviewer is not None:
        at.session_state["reviewer"] = reviewer
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _button(at: AppTest, key: str) -> None:
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_without_a_workspace_the_app_offers_the_synthetic_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_template: Path
) -> None:
    root = tmp_path / "empty"
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    from workbench import demo

    def fake_build(ws: Workspace, cases_per_source: int = 3, progress: bool = True) -> list[str]:
        # the real build is tested in tests/workbench; here only the wiring counts
        shutil.copy(demo_template / "catalog.duckdb", ws.root / "catalog.duckdb")
        return [f"built {cases_per_source} per source"]

    monkeypatch.setattr(demo, "build_demo", fake_build)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "No workspace" in at.warning[0].value
    assert any("SYNTHETIC" in m.value for m in at.markdown)
    at.number_input(key="demo_cases").set_value(1)
    at.button(key="build_demo").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (root / "catalog.duckdb").exists()
    assert at.title[0].value == "Overview"  # the rerun opened the new workspace


def test_overview_page(ws: Workspace) -> None:
    at = _app()
    assert at.title[0].value == "Overview"
    assert [m.value for m in at.metric][:2] == ["9", "9"]
    assert any("SYNTHETIC" in i.value for i in at.info) or any(
        "SYNTHETIC" in i.value for i in at.sidebar.info
    )
    assert any("no model run" in m.value for m in at.markdown)


def test_long_tail_page_and_log_scale(ws: Workspace) -> None:
    at = _app("long_tail")
    assert at.title[0].value == "Long tail"
    assert len(at.get("plotly_chart")) == 5
    at.toggle(key="lt_log").set_value(True).run()
    assert not at.exception


def test_review_page_empty_queue_state_and_browse(ws: Workspace) -> None:
    at = _app("review")
    assert any("review queue is empty" in i.value for i in at.info)
    assert len(at.image) == 1
    at.selectbox(key="v_class").set_value("liver").run()
    at.radio(key="v_view").set_value("coronal").run()
    assert not at.exception and len(at.image) == 1


@pytest.mark.parametrize("decision", ["accept", "reject", "needs_correction"])
def test_review_decisions_from_the_queue(ws: Workspace, queued: str, decision: str) -> None:
    at = _app("review")
    assert "colon" in at.selectbox(key="q_item").format_func(at.selectbox(key="q_item").value)
    at.text_area(key="v_comment").set_value("<b>checked</b>")
    _button(at, f"d_{decision}")
    rows = ws.catalog.query("SELECT * FROM review")
    assert rows[
        ["scan_id", "class_name", "label_set_id", "decision", "reviewer", "comment"]
    ].values.tolist() == [[SCAN, "colon", queued, decision, "Dr Ada", "<b>checked</b>"]]
    assert review.queue(ws)["class_name"].tolist() == ["intestine"]
    assert "colon" not in at.selectbox(key="q_item").format_func(at.selectbox(key="q_item").value)
    _button(at, "undo_last")  # the queue moved on; the last action can still be undone
    assert review.queue(ws)["class_name"].tolist() == ["colon", "intestine"]


def test_bad_reviewer_name_stores_nothing(ws: Workspace, queued: str) -> None:
    at = _app("review", reviewer="<script>x</script>")
    _button(at, "d_accept")
    assert any("reviewer name" in e.value for e in at.error)
    assert "&lt;script&gt;" in " ".join(e.value for e in at.error)
    assert ws.catalog.counts()["review"] == 0


def test_quick_fix_correction_and_undo(ws: Workspace, queued: str) -> None:
    at = _app("review")
    _button(at, "fix_largest")
    corr = ws.catalog.query("SELECT * FROM review WHERE decision = 'corrected'")
    assert len(corr) == 1
    fixed = ws.masks.read(corr["result_label_set_id"].iloc[0], "colon")
    assert int(fixed.sum()) == 20**3  # the stray fragment is gone
    _button(at, "undo_last")
    assert ws.catalog.query("SELECT count(*) AS n FROM review WHERE decision = 'undo'")["n"].iloc[0] == 1
    restored = review.current_label_set(ws, SCAN, "colon")
    assert int(ws.masks.read(str(restored), "colon").sum()) == 20**3 + 27  # the pseudo content, restored
    assert ws.catalog.label_sets(SCAN).set_index("id").loc[str(restored), "origin"] == "revised"


def test_slice_slider_and_window_presets(ws: Workspace, queued: str) -> None:
    at = _app("review")
    key = f"v_slice_{SCAN}_axial"
    at.slider(key=key).set_value(3).run()
    assert not at.exception
    first = at.image[0].value
    for preset in ("liver", "lung", "bone", "free"):
        at.selectbox(key="v_preset").set_value(preset).run()
        assert not at.exception
    _button(at, "v_jump")
    # BTCV is LPS, so display z = file k: the colon block covers k 20..39 equally, the first max wins
    assert at.slider(key=key).value == 20
    assert first is not None


def test_slicer_export_from_the_app(ws: Workspace, queued: str) -> None:
    at = _app("review")
    _button(at, "slicer_export")
    assert (ws.root / "slicer" / "btcv_demo000" / "labels.nii.gz").is_file()


@pytest.mark.parametrize("fmt", ["nnunet", "monai", "abdomenatlas"])
def test_export_page(ws: Workspace, fmt: str) -> None:
    at = _app("export")
    at.selectbox(key="x_format").set_value(fmt).run()
    at.multiselect(key="x_sources").set_value(["kits23"]).run()
    at.text_input(key="x_name").set_value("my-export").run()
    _button(at, "x_go")
    assert any("Exported 1 cases" in s.value for s in at.success)
    assert (ws.root / "exports" / "my-export" / "manifest.json").is_file()


def test_export_page_refuses_a_path_like_name(ws: Workspace) -> None:
    at = _app("export")
    at.text_input(key="x_name").set_value("../outside").run()
    _button(at, "x_go")
    assert any("plain folder name" in e.value for e in at.error)
    assert not (ws.root.parent / "outside").exists()
