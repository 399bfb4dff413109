"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page, and the review actions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.maps import write_uncertainty_map
from storage.workspace import Workspace
from workbench import app_data, review

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
    assert [_yaxis_type(c) for c in at.get("plotly_chart")] == [None, None, None, None, "log"]
    at.toggle(key="lt_log").set_value(True).run()
    assert not at.exception
    # the toggle turns the two count charts logarithmic; the volume chart is always logarithmic
    assert [_yaxis_type(c) for c in at.get("plotly_chart")] == ["log", "log", None, None, "log"]


def _yaxis_type(chart: Any) -> str | None:
    """The y axis type (``log``, or None for the default) of a plotly chart element of an AppTest."""
    return json.loads(chart.proto.spec)["layout"].get("yaxis", {}).get("type")


def test_review_page_empty_queue_state_and_browse(ws: Workspace) -> None:
    at = _app("review")
    assert any("review queue is empty" in i.value for i in at.info)
    assert len(at.image) == 1
    # original labels: no run, no map; the checkbox and the jump are disabled and a caption says why
    assert at.checkbox(key="v_unc").disabled and at.button(key="v_jump_unc").disabled
    assert any("not come from a pseudo-labelling run" in c.value for c in at.caption)
    at.selectbox(key="v_class").set_value("liver").run()
    at.radio(key="v_view").set_value("coronal").run()
    assert not at.exception and len(at.image) == 1
    assert " · coronal " in at.image[0].captions[0]


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
        if preset == "free":  # width and level become inputs, starting at the abdomen window
            assert (at.number_input(key="v_width").value, at.number_input(key="v_level").value) == (400, 40)
        else:
            width, level = app_data.WL_PRESETS[preset]
            assert f"W {width:.0f} / L {level:.0f}" in [c.value for c in at.caption]
            assert at.image[0].value != first  # another window, another picture
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


# ------------------------------------------------------------------------------------ uncertainty map

HOT_K = 33  # the colon block (file i, j, k 20..39) is most uncertain on this slice


@pytest.fixture
def mapped(ws: Workspace, queued: str) -> np.ndarray:
    """Run-1's entropy map of SCAN on its own grid: 0.9 bit on k = HOT_K inside the colon block, and a
    larger 1-bit slab on k = 5 far from the colon (it wins only when the whole map counts)."""
    row = review.scan_row(ws, SCAN)
    shape = tuple(int(s) for s in row["shape"])
    entropy = np.zeros(shape, np.float32)
    entropy[20:40, 20:40, HOT_K] = 0.9
    entropy[0:12, :, 5] = 1.0
    assert 12 * shape[1] * 1.0 > 20 * 20 * 0.9
    write_uncertainty_map(ws, "run-1", SCAN, entropy, review.scan_affine(row), ["colon", "intestine"])
    return entropy


def test_uncertainty_map_overlay_and_jump(ws: Workspace, mapped: np.ndarray) -> None:
    at = _app("review")
    key = f"v_slice_{SCAN}_axial"
    # BTCV is LPS, so display z = file k; the item opens on its most uncertain slice within the colon
    assert at.slider(key=key).value == HOT_K
    assert not at.checkbox(key="v_unc").disabled and len(at.image) == 1
    plain = at.image[0].value
    at.checkbox(key="v_unc").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.image) == 2  # the legend bar (above) and the slice
    legend, heat = at.image
    assert "entropy" in legend.captions[0] and SCAN in heat.captions[0]
    assert heat.value != plain
    at.slider(key=key).set_value(3).run()
    _button(at, "v_jump_unc")
    assert at.slider(key=key).value == HOT_K
    at.radio(key="v_view").set_value("coronal").run()
    _button(at, "v_jump_unc")
    # coronal = display y = 255 - file j for LPS; the colon block's hot rows are j 20..39 (equal sums,
    # the first display index wins)
    n_y = int(review.scan_row(ws, SCAN)["shape"][1])
    assert at.slider(key=f"v_slice_{SCAN}_coronal").value == n_y - 1 - 39


# ---------------------------------------------------------------------------------- outliers -> review


def test_an_outlier_opens_over_a_non_empty_queue(ws: Workspace, queued: str) -> None:
    at = _app()
    at.session_state["browse_scan"] = "kits23:demo000"
    at.session_state["browse_class"] = "kidney_left"
    at.switch_page("app_pages/review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Viewing outlier kits23:demo000" in i.value for i in at.info)
    assert at.subheader[0].value == "Decision on kidney_left of kits23:demo000"
    assert "kits23:demo000" in at.image[0].captions[0]
    _button(at, "d_accept")
    rows = ws.catalog.query("SELECT scan_id, class_name, reviewer FROM review")
    assert rows.values.tolist() == [["kits23:demo000", "kidney_left", "Dr Ada"]]
    _button(at, "back_to_queue")
    assert "browse_scan" not in at.session_state
    assert at.subheader[0].value == f"Decision on colon of {SCAN}"


def test_an_outlier_presets_the_pickers_when_the_queue_is_empty(ws: Workspace) -> None:
    at = _app()
    at.session_state["browse_scan"] = "kits23:demo000"
    at.session_state["browse_class"] = "kidney_tumor"
    at.switch_page("app_pages/review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="v_scan").value == "kits23:demo000"
    assert at.selectbox(key="v_class").value == "kidney_tumor"
    assert "browse_scan" not in at.session_state  # consumed: the reviewer can pick another scan
    at.selectbox(key="v_scan").set_value(SCAN).run()
    assert at.subheader[0].value == f"Decision on kidney_tumor of {SCAN}"


def test_an_outlier_link_to_an_unknown_scan_is_an_error_message(ws: Workspace, queued: str) -> None:
    at = _app()
    at.session_state["browse_scan"] = "nowhere:0"
    at.switch_page("app_pages/review.py").run()
    assert not at.exception
    assert any("nowhere:0" in e.value for e in at.error)


# ----------------------------------------------------------------------------------------- concurrency

# A stand-in for `workbench pseudolabel` in another process: per step, a pseudo label set (masks + catalog
# rows in one transaction) and its uncertainty row (another transaction), as pseudolabel writes them,
# until the stop file appears. Prints the number of steps done after each one.
WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from harmonize.taxonomy import class_names
from storage.catalog import LabelSetRecord
from storage.workspace import Workspace
from workbench.pseudolabel.uncertainty import store_uncertainty

ws = Workspace.open(sys.argv[1])
stop = Path(sys.argv[2])
scans = ws.catalog.query("SELECT id, shape FROM scan ORDER BY id")
coverage = {c: "not_annotated" for c in class_names()}
coverage["colon"] = "annotated_present"
n = 0
while not stop.exists():
    scan_id, shape = scans.iloc[n % len(scans)]
    shape = tuple(int(s) for s in shape)
    ls_id = f"ls-bg-{n}"
    mask = np.zeros(shape, bool)
    mask[:4, :4, :4] = True
    ws.masks.write_label_set(ls_id, {"colon": mask}, shape)
    record = LabelSetRecord(
        id=ls_id, scan_id=scan_id, version=100 + n, origin="pseudo", mask_key=ls_id, run_id="run-bg"
    )
    ws.catalog.add_label_set(record, coverage, [])
    store_uncertainty(ws, [{"scan_id": scan_id, "class_name": "colon", "run_id": f"run-bg-{n}",
                            "label_set_id": ls_id, "score": 0.1, "signals": {"entropy": 0.1},
                            "reasons": ["high_entropy"]}])
    n += 1
    print(n, flush=True)
    time.sleep(0.01)
"""


def _shown(at: AppTest) -> tuple[str, str]:
    """(scan_id, class_name) of the case under the decision buttons."""
    text = at.subheader[0].value.removeprefix("Decision on ")
    class_name, scan_id = text.split(" of ", 1)
    return scan_id, class_name


def _no_lock_messages(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in [*at.error, *at.warning]]
    assert not shown, shown  # neither "database is locked" nor "catalog is busy", nor anything else


def test_two_reviewers_and_a_background_writer_lose_no_decision(
    ws: Workspace, queued: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    stop = tmp_path / "stop"
    repo = Path(APP).parents[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ws.root), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "1"  # the writer runs before the reviewers start
        sessions = {name: _app("review", reviewer=name) for name in ("Dr Ada", "Dr Bob")}
        expected: list[tuple[str, str, str]] = []
        for _ in range(3):
            for name, at in sessions.items():
                # the case on this reviewer's screen, rendered before the other reviewer's last click
                # and the writer's latest steps: the decision must land on it
                scan_id, class_name = _shown(at)
                at.button(key="d_accept").click().run()
                _no_lock_messages(at)
                assert any(f"by {name}" in s.value for s in at.success)
                expected.append((scan_id, class_name, name))
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    finally:
        stop.touch()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    steps = int(out.split()[-1]) if out.split() else 1
    assert steps > 1  # it kept writing while the reviewers worked
    rows = ws.catalog.query(
        "SELECT scan_id, class_name, reviewer FROM review WHERE decision = 'accept' ORDER BY created_at, id"
    )
    assert sorted(map(tuple, rows.values.tolist())) == sorted(expected)
    assert expected[:2] == [(SCAN, "colon", "Dr Ada"), (SCAN, "colon", "Dr Bob")]  # both saw the top item
    assert ws.catalog.query("SELECT count(*) AS n FROM label_set WHERE run_id = 'run-bg'")["n"].iloc[0] == (
        steps
    )
