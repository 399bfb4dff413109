"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page, and the review actions."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from storage.catalog import Catalog
from storage.maps import write_uncertainty_map
from storage.workspace import Workspace
from workbench import app_data, review

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "workbench" / "app.py")
SCAN = "btcv:demo000"
TIMEOUT = 60


@pytest.fixture
def ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("WORKBENCH_HOME", str(demo_ws.root))
    return demo_ws


@pytest.fixture
def queued(ws: Workspace, add_pseudo: Callable[..., str]) -> str:
    """One pseudo label set on SCAN (colon + intestine, which BTCV does not annotate) with two uncertainty
    items; returns its id."""
    return add_pseudo(ws, SCAN, "ls-pseudo-test", {"colon": 0.9, "intestine": 0.4})


def _app(page: str | None = None, reviewer: str | None = "Dr Ada") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if reviewer is not None:
        at.session_state["reviewer"] = reviewer
    at.session_state["v_classic"] = True  # the Review page's classic slice view, which AppTest can inspect
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
    assert any("not come from a pseudo" in c.value for c in at.caption)  # escaped: pseudo\\-labelling
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


def _viewer_args(at: AppTest) -> dict[str, Any]:
    """The arguments the Review page sent to its viewer component in the last run."""
    found = [e for e in at.get("component_instance") if "multiplanar_viewer" in e.proto.component_name]
    assert len(found) == 1, [e.proto.component_name for e in at.get("component_instance")]
    return dict(json.loads(found[0].proto.json_args))


def _key(at: AppTest, action: dict[str, Any]) -> dict[str, Any]:
    """Send what the viewer sends on a key (its component value), rerun; returns the viewer's new args."""
    at.session_state["mpr"] = action
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return _viewer_args(at)


@pytest.fixture
def three(
    ws: Workspace, queued: str, add_hostile_scan: Callable[..., tuple[str, str]]
) -> list[dict[str, str]]:
    """The queue's three items, top first: btcv:ahead colon, then SCAN's colon and intestine."""
    scan, ls = add_hostile_scan(ws, "ahead")
    return [
        {"scan_id": scan, "class_name": "colon", "label_set_id": ls},
        {"scan_id": SCAN, "class_name": "colon", "label_set_id": queued},
        {"scan_id": SCAN, "class_name": "intestine", "label_set_id": queued},
    ]


@pytest.mark.parametrize("decision", ["accept", "reject", "needs_correction", "skip"])
def test_a_decision_key_records_once_and_the_page_serves_the_item_the_viewer_drew_ahead(
    ws: Workspace, three: list[dict[str, str]], decision: str
) -> None:
    at = _app("review")
    args = _viewer_args(at)
    assert args["target"] == three[0] and args["draw_ahead"] == list(review.DECISIONS)
    ahead = args["prefetch"][0]
    assert ahead["target"] == three[1] and ahead["title"].startswith(f"{SCAN} · colon · v")
    after = _key(at, {"id": "k1", "action": "decide", "decision": decision, "target": args["target"]})
    rows = ws.catalog.reviews()
    assert rows[["scan_id", "class_name", "label_set_id", "decision", "reviewer"]].values.tolist() == [
        [*three[0].values(), decision, "Dr Ada"]
    ]
    # the page answers the key with the item the viewer drew ahead, under the same title and view key
    assert after["done"] == "k1" and after["target"] == three[1]
    assert after["item"]["title"] == ahead["title"] and after["item"]["view_key"] == ahead["view_key"]
    files = ("ct", "labels", "item", "mip")  # the files the viewer held are the ones the page serves
    assert {k: after["item"]["urls"][k] for k in files} == {k: ahead["urls"][k] for k in files}
    assert ahead["urls"]["labels"] == ahead["base"] + after["item"]["id"]  # the drawn item's id, too
    assert after["prefetch"][0]["target"] == three[2]
    _key(at, {"id": "k1", "action": "decide", "decision": decision, "target": args["target"]})
    assert len(ws.catalog.reviews()) == 1  # the same action again (a rerun) records nothing


def test_a_next_item_decided_elsewhere_after_the_page_listed_it_is_not_served(
    ws: Workspace, three: list[dict[str, str]]
) -> None:
    at = _app("review")
    args = _viewer_args(at)
    assert args["prefetch"][0]["target"] == three[1]  # the viewer holds SCAN's colon as the next item
    review.record_decision(ws, *three[1].values(), "accept", "Dr Other")  # a second reviewer, meanwhile
    after = _key(at, {"id": "k1", "action": "decide", "decision": "accept", "target": args["target"]})
    assert after["target"] == three[2]  # the one after it: the decided item is not served again
    rows = ws.catalog.reviews()
    assert sorted(zip(rows["reviewer"], rows["class_name"], rows["scan_id"])) == [
        ("Dr Ada", "colon", three[0]["scan_id"]),
        ("Dr Other", "colon", SCAN),
    ]


def test_a_decision_keys_deferred_long_tail_upkeep_is_done_in_the_same_run(
    ws: Workspace, three: list[dict[str, str]]
) -> None:
    at = _app("long_tail")  # the long tail is stored once: from then on each write keeps it current
    at.switch_page("app_pages/review.py").run()
    seen = int(ws.catalog.query("SELECT reviews FROM long_tail_meta")["reviews"].iloc[0])
    args = _viewer_args(at)
    _key(at, {"id": "k1", "action": "decide", "decision": "accept", "target": args["target"]})
    # the run wrote the decision first and refreshed the table after the viewer's answer, not the next reader
    assert int(ws.catalog.query("SELECT reviews FROM long_tail_meta")["reviews"].iloc[0]) == seen + 1
    fresh = ws.catalog.long_tail(by_source=True)
    colon = fresh[(fresh["class_name"] == "colon") & (fresh["source_id"] == "btcv")]
    assert int(colon["annotated"].iloc[0]) == 1  # the accepted pseudo-label of btcv:ahead (BTCV has no colon)


@pytest.mark.parametrize(
    ("reviewer", "status", "drawn_ahead"),
    [
        ("Dr Ada", "pending", list(review.DECISIONS)),
        ("Dr Ada", "all", []),  # a decided item stays listed: the page may serve it again
        ("", "pending", []),  # no name: a decision records nothing, the item stays
        ("<b>x</b>", "pending", []),  # a name that does not record
    ],
)
def test_the_viewer_draws_ahead_only_where_a_decision_moves_the_queue_on(
    ws: Workspace, three: list[dict[str, str]], reviewer: str, status: str, drawn_ahead: list[str]
) -> None:
    at = _app("review", reviewer=reviewer)
    at.selectbox(key="q_status").set_value(status).run()
    args = _viewer_args(at)
    assert args["draw_ahead"] == drawn_ahead and args["prefetch"][0]["target"] == three[1]


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
    assert _plain(at.subheader[0].value) == "Decision on kidney_left of kits23:demo000"
    assert "kits23:demo000" in at.image[0].captions[0]
    _button(at, "d_accept")
    rows = ws.catalog.query("SELECT scan_id, class_name, reviewer FROM review")
    assert rows.values.tolist() == [["kits23:demo000", "kidney_left", "Dr Ada"]]
    _button(at, "back_to_queue")
    assert "browse_scan" not in at.session_state
    assert _plain(at.subheader[0].value) == f"Decision on colon of {SCAN}"


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
    assert _plain(at.subheader[0].value) == f"Decision on kidney_tumor of {SCAN}"


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
# It writes duodenum, a class the queued item lacks: a newer colon item would stand for the class (#13).
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
coverage["duodenum"] = "annotated_present"
n = 0
while not stop.exists():
    scan_id, shape = scans.iloc[n % len(scans)]
    shape = tuple(int(s) for s in shape)
    ls_id = f"ls-bg-{n}"
    mask = np.zeros(shape, bool)
    mask[:4, :4, :4] = True
    ws.masks.write_label_set(ls_id, {"duodenum": mask}, shape)
    record = LabelSetRecord(
        id=ls_id, scan_id=scan_id, version=100 + n, origin="pseudo", mask_key=ls_id, run_id="run-bg"
    )
    ws.catalog.add_label_set(record, coverage, [])
    store_uncertainty(ws, [{"scan_id": scan_id, "class_name": "duodenum", "run_id": f"run-bg-{n}",
                            "label_set_id": ls_id, "score": 0.1, "signals": {"entropy": 0.1},
                            "reasons": ["high_entropy"]}])
    n += 1
    print(n, flush=True)
    time.sleep(0.01)
"""


def _shown(at: AppTest) -> tuple[str, str]:
    """(scan_id, class_name) of the case under the decision buttons."""
    text = _plain(at.subheader[0].value).removeprefix("Decision on ")
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


# ------------------------------------------------------------------------------------- hostile strings

#: A case folder, a reviewer name and a comment an attacker controls (a shared dataset, a catalog written
#: by another tool): a Markdown link, a remote Markdown image and HTML that would run script.
HOSTILE_CASE = (
    "case [log in](https:evil.example) <img src=x onerror=alert(1)> ![x](http://evil.example/x.png)"
)
HOSTILE_SCAN = f"btcv:{HOSTILE_CASE}"
HOSTILE_REVIEWER = "Dr [x](https:evil.example) <b onmouseover=alert(1)>Eve</b>"
HOSTILE_COMMENT = "![x](http://evil.example/x.png) <img src=x onerror=alert(1)> [log in](https:evil.example)"
HOSTILE = [
    HOSTILE_CASE,
    HOSTILE_REVIEWER,
    HOSTILE_COMMENT,
    "www.evil.example and https://evil.example/x and mallory@evil.example",
    "<https://evil.example> :red[red] $\\href{https://evil.example}{x}$ ~~gone~~ **bold** `code`",
    "# heading\n- item\n> quote\n| a | b |\n|---|---|\n[ref]: https://evil.example",
    "&lt;b&gt; stays text &amp; \\[already escaped\\]",
]

_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
#: Markdown tokens that make something live: a link, an image, raw HTML.
_LIVE = {"link_open", "image", "html_inline", "html_block"}
#: What Streamlit's Markdown (mdast-util-gfm-autolink-literal) turns into a link in the rendered TEXT, after
#: escapes are undone: its two patterns, ASCII like JavaScript's ``\w``.
_AUTOLINK = [
    re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE | re.ASCII),
    re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)", re.ASCII),
]


def _tokens(markdown: str) -> list[Any]:
    """Every token of ``markdown`` (CommonMark + GitHub's tables and strikethrough), inline ones too."""
    out = []
    for token in _MD.parse(markdown):
        out.append(token)
        out.extend(token.children or [])
    return out


def _live_markup(markdown: str) -> list[str]:
    """What in ``markdown`` would render live: links, images, HTML, GitHub autolink literals."""
    tokens = _tokens(markdown)
    live = [t.type for t in tokens if t.type in _LIVE]
    texts = (t.content for t in tokens if t.type == "text")
    return live + [f"autolink in {text!r}" for text in texts if any(p.search(text) for p in _AUTOLINK)]


def _assert_inert(markdown: str) -> None:
    """``markdown`` renders no link, image or HTML, and holds no GitHub autolink literal."""
    assert _live_markup(markdown) == [], markdown


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_shows_markdown_and_html_as_the_very_text(text: str) -> None:
    md = review.escape(text)
    _assert_inert(md)
    shown = "".join(t.content for t in _tokens(md) if t.type == "text").replace(review.WORD_JOINER, "")
    assert shown == text.replace("\n", "")  # line breaks become softbreak tokens; every character shows


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_for_plotly_leaves_no_tag(text: str) -> None:
    html_only = review.escape(text, markdown=False)
    assert "<" not in html_only and ">" not in html_only and '"' not in html_only
    assert html.unescape(html_only) == text


def _plain(markdown: str) -> str:
    """The text an escaped string shows (the inverse of :func:`workbench.review.escape`)."""
    unescaped = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
    return html.unescape(unescaped).replace(review.WORD_JOINER, "")


#: Proto fields that Streamlit renders as Markdown: bodies of markdown, captions, headings and alerts,
#: widget and button labels and help texts, image captions, progress texts.
_MARKDOWN_FIELDS = {"body", "label", "help", "caption", "text"}
#: Elements whose strings are shown as plain text (or checked separately: plotly's spec).
_PLAIN_ELEMENTS = {"text", "code", "dataframe", "plotly_chart", "exception"}


def _markdown_strings(message: Any) -> Iterator[str]:
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                yield from _markdown_strings(item)
        elif field.type == field.TYPE_STRING and field.name in _MARKDOWN_FIELDS:
            yield from value if field.is_repeated else [value]


def _rendered(node: Any) -> Iterator[tuple[str, str]]:
    """(element type, string) of every Markdown-rendered string of an AppTest tree."""
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        kind = str(getattr(child, "type", ""))
        if proto is not None and kind not in _PLAIN_ELEMENTS:
            for text in _markdown_strings(proto):
                yield kind, text
        if kind == "plotly_chart" and proto is not None:
            yield from (("plotly_chart", t) for t in _plotly_strings(json.loads(proto.spec)))
        yield from _rendered(child)


def _plotly_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key != "customdata":  # data for the click, never shown
                yield from _plotly_strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _plotly_strings(value)


def _check_render(at: AppTest, checked: list[int], escaped: list[str]) -> str:
    """Collect into ``escaped`` whatever Markdown-rendered string of this render has a live link, image or
    HTML tag, and return them all, joined (to look for the escaped hostile strings). ``checked`` counts
    the strings."""
    assert not at.exception, [e.value for e in at.exception]
    texts = []
    for kind, text in _rendered(at._tree):
        if kind == "plotly_chart":
            escaped += [f"{tag!r} in plotly: {text}" for tag in ("<img", "<a ", "<b ") if tag in text]
        else:
            escaped += [f"{live}: {text}" for live in _live_markup(text)]
        texts.append(text)
    checked.append(len(texts))
    return "\n".join(texts)


@pytest.fixture
def hostile(ws: Workspace, queued: str, add_hostile_scan: Callable[..., tuple[str, str]]) -> str:
    """The scan of :data:`HOSTILE_SCAN` at the top of the queue (``add_hostile_scan``), with a decision by
    :data:`HOSTILE_REVIEWER`; returns its pseudo label set id."""
    scan_id, ls_id = add_hostile_scan(ws, HOSTILE_CASE)
    assert scan_id == HOSTILE_SCAN
    rid = review.record_decision(ws, HOSTILE_SCAN, "intestine", ls_id, "skip", "Dr Ada", HOSTILE_COMMENT)
    with ws.catalog.transaction() as con:  # a name that the app's own check refuses, written by another tool
        con.execute("UPDATE review SET reviewer = ? WHERE id = ?", [HOSTILE_REVIEWER, rid])
    return ls_id


def test_hostile_names_render_as_text_on_every_page(ws: Workspace, hostile: str, ledger) -> None:  # type: ignore[no-untyped-def]
    checked: list[int] = []
    escaped: list[str] = []
    at = _app("review")
    shown = _check_render(at, checked, escaped)
    assert review.escape(HOSTILE_SCAN) in shown  # the subheader and the image caption show it, escaped
    assert _shown(at) == (HOSTILE_SCAN, "colon")
    at.text_area(key="v_comment").set_value(HOSTILE_COMMENT)
    _button(at, "d_needs_correction")
    shown = _check_render(at, checked, escaped)
    assert f"on {review.escape(HOSTILE_SCAN)} by Dr Ada" in shown
    assert ws.catalog.query("SELECT comment FROM review WHERE decision = 'needs_correction'")[
        "comment"
    ].tolist() == [HOSTILE_COMMENT]  # stored as typed; only the display escapes

    at.session_state["browse_scan"] = HOSTILE_SCAN  # the case opened from the Long tail
    at.session_state["browse_class"] = "intestine"
    at.run()
    shown = _check_render(at, checked, escaped)
    assert f"Undo the newest decision (skip by {review.escape(HOSTILE_REVIEWER)})" in shown
    assert f"Viewing outlier {review.escape(HOSTILE_SCAN)}" in shown
    _button(at, "slicer_export")
    shown = _check_render(at, checked, escaped)
    assert "Wrote " in shown and review.escape("ct.nii.gz") in shown

    for page in ("overview", "long_tail", "export"):
        at.switch_page(f"app_pages/{page}.py").run()
        _check_render(at, checked, escaped)
    at.text_input(key="x_name").set_value("hostile-export").run()
    _button(at, "x_go")
    shown = _check_render(at, checked, escaped)
    assert "Exported 10 cases" in shown
    print("strings checked per render:", checked)
    for _ in checked:  # one fault per render of hostile strings
        ledger.record("hostile names (app pages)", escaped=len(escaped) // len(checked))
    assert escaped == []
    assert sum(checked) >= 60 and len(checked) == 8, checked  # strings checked per render


def test_plotly_figures_show_hostile_ids_as_text() -> None:
    summary = pd.DataFrame(
        {
            "class_name": ["liver"],
            "n": [3],
            "q1": [1.0],
            "median": [2.0],
            "q3": [3.0],
            "lo": [1.0],
            "hi": [3.0],
        }
    )
    outliers = pd.DataFrame(
        {"scan_id": [HOSTILE_SCAN], "class_name": ["liver"], "volume_ml": [9.0], "label_set_id": ["ls"]}
    )
    fig = app_data.volume_figure(summary, outliers)
    points = fig.data[1]
    assert list(points.customdata[0]) == [HOSTILE_SCAN, "liver"]  # the click still opens the real id
    assert points.text[0] == review.escape(HOSTILE_SCAN, markdown=False)
    assert "%{text}" in points.hovertemplate and "customdata" not in points.hovertemplate
    by_source = pd.DataFrame(
        {"source_id": ["<b>src</b>"], "class_name": ["liver"], "annotated": [1], "not_annotated": [0]}
    )
    assert app_data.annotated_by_source_figure(by_source).data[0].name == "&lt;b&gt;src&lt;/b&gt;"
    heat = app_data.heatmap_figure(app_data.coverage_matrix(by_source), "t", "c")
    assert list(heat.data[0].y) == ["&lt;b&gt;src&lt;/b&gt;"]


# ------------------------------------------------------------------------------------ serving, catalog


def test_the_server_listens_on_loopback_only() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True
    assert config["server"].get("enableXsrfProtection", True) is True
    assert config["browser"]["gatherUsageStats"] is False
    assert "docs/serving.md" in (REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    assert (REPO / "docs" / "serving.md").is_file()


@contextmanager
def _counting_catalog_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the catalog sessions and connections open in this process, in any thread and catalog object
    (``[open sessions, open connections]``)."""
    counts = [0, 0]
    session, connect = Catalog.session, Catalog.connect

    def counted(original: Any, slot: int) -> Any:
        @contextmanager
        def wrapper(self: Catalog, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with original(self, *args, **kwargs) as value:
                counts[slot] += 1
                try:
                    yield value
                finally:
                    counts[slot] -= 1

        return wrapper

    monkeypatch.setattr(Catalog, "session", counted(session, 0))
    monkeypatch.setattr(Catalog, "connect", counted(connect, 1))
    yield counts


#: Another process opens the catalog for writing and records an ingest issue; it gives up after 5 s.
OTHER_WRITER = """
import sys
from storage.catalog import Catalog
Catalog(sys.argv[1], lock_timeout_s=5).counts()
print("wrote", flush=True)
"""


@pytest.mark.parametrize("fmt", ["nnunet", "abdomenatlas"])
def test_the_export_page_holds_no_catalog_while_it_writes_files(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    import subprocess
    import sys

    import nibabel

    at = _app("export")
    writes: list[tuple[int, int]] = []
    other: list[str] = []
    save = nibabel.save

    with _counting_catalog_connections(monkeypatch) as counts:

        def watched_save(img: Any, filename: Any) -> None:
            writes.append((counts[0], counts[1]))
            if not other:  # while the first file is written, another process opens the catalog
                done = subprocess.run(
                    [sys.executable, "-c", OTHER_WRITER, str(ws.catalog.path)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                other.append(done.stdout.strip() or done.stderr.strip().splitlines()[-1])
            save(img, filename)

        monkeypatch.setattr(nibabel, "save", watched_save)
        at.selectbox(key="x_format").set_value(fmt).run()
        at.text_input(key="x_name").set_value("watched").run()
        _button(at, "x_go")
    assert any("Exported 9 cases" in s.value for s in at.success), [(e.type, e.value) for e in at.main]
    assert len(writes) >= 10
    assert set(writes) == {(0, 0)}  # no session and no connection open while any export file was written
    assert other == ["wrote"]  # and another process could open the catalog meanwhile


# ---------------------------------------------------------------------------------------- damaged masks


def test_a_truncated_mask_file_is_one_line_and_the_page_still_works(
    ws: Workspace, queued: str, ledger
) -> None:  # type: ignore[no-untyped-def]
    path = ws.masks.path(queued)
    path.write_bytes(path.read_bytes()[:-10])  # the pseudo label set's file loses its last 10 bytes
    at = _app("review")
    errors = [e.value for e in at.error]
    ledger.record("damaged mask file (Review page)", handled=not at.exception and len(errors) == 1)
    assert not at.exception, [e.value for e in at.exception]
    assert len(errors) == 1 and "truncated or corrupt" in errors[0], errors
    assert review.escape(path.name) in errors[0] and "workbench check" in errors[0]
    assert len(at.image) == 1  # the CT still shows, without the unreadable overlay
    assert _plain(at.subheader[0].value) == f"Decision on colon of {SCAN}"
    _button(at, "fix_largest")  # a quick fix on the damaged file: one line again, nothing stored
    assert any("truncated or corrupt" in e.value for e in at.error)
    assert ws.catalog.query("SELECT count(*) AS n FROM review")["n"].iloc[0] == 0
    _button(at, "d_accept")  # a decision needs no mask file
    assert any("Recorded accept of colon" in s.value for s in at.success)
    at.session_state["browse_scan"] = "kits23:demo000"  # other scans open as usual
    at.session_state["browse_class"] = "kidney_left"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 1


def test_an_unreadable_catalog_is_one_line(ws: Workspace, ledger) -> None:  # type: ignore[no-untyped-def]
    from workbench.app_pages import common

    common._open.clear()  # type: ignore[attr-defined]
    raw = bytearray(ws.catalog.path.read_bytes())
    raw[:4096] = bytes(4096)  # the file header is gone
    ws.catalog.path.write_bytes(bytes(raw))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    ledger.record("damaged catalog header", handled=not at.exception and len(at.error) == 1)
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "cannot be opened" in at.error[0].value
    assert "workbench backup" in at.error[0].value


def test_an_unreadable_file_is_one_line() -> None:
    def page() -> None:
        from workbench.app_pages import common

        with common.guarded():
            raise PermissionError(13, "Permission denied", "/data/case_1/ct.nii.gz")

    at = AppTest.from_function(page, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [_plain(e.value) for e in at.error] == ["/data/case_1/ct.nii.gz: Permission denied"]


# ----------------------------------------------------------------------- queue and double reading (#13)


def test_the_review_page_is_blind_for_the_second_reader(ws: Workspace, queued: str) -> None:
    review.set_share(ws, 1.0)
    review.record_decision(ws, SCAN, "colon", queued, "accept", "Dr Ada", "first reading")
    at = _app("review", reviewer="Dr Bob")
    item = at.selectbox(key="q_item")
    assert "colon" in item.format_func(item.value)  # still pending for the second reader
    assert len(at.dataframe) == 1  # the queue only: Dr Ada's reading is not in a history table
    assert any("No decisions yet" in c.value for c in at.caption)
    assert any("Double-read item" in c.value for c in at.caption)
    at_ada = _app("review", reviewer="Dr Ada")
    item = at_ada.selectbox(key="q_item")
    assert "colon" not in item.format_func(item.value)  # read already: out of Dr Ada's queue


def test_the_adjudication_filter_shows_both_readings(ws: Workspace, queued: str) -> None:
    review.set_share(ws, 1.0)
    review.record_decision(ws, SCAN, "colon", queued, "accept", "Dr Ada")
    review.record_decision(ws, SCAN, "colon", queued, "reject", "Dr Bob")
    at = _app("review", reviewer="Dr Cy")
    at.selectbox(key="q_status").set_value("adjudication").run()
    assert not at.exception
    assert any("Adjudicate: Dr Ada: accept · Dr Bob: reject" in _plain(c.value) for c in at.caption)
    _button(at, "d_reject")
    verdict = ws.catalog.verdict_of(queued, "colon")
    assert verdict is not None and (verdict["decision"], verdict["reviewer"]) == ("reject", "Dr Cy")


def test_a_requeued_item_says_why(ws: Workspace, queued: str) -> None:
    from harmonize.taxonomy import class_names
    from storage.catalog import LabelSetRecord

    review.record_decision(ws, SCAN, "colon", queued, "accept", "Dr Ada")
    shape = tuple(int(s) for s in ws.catalog.scan_row(SCAN)["shape"])  # type: ignore[index]
    colon = np.zeros(shape, bool)
    colon[0:5, 0:5, 0:5] = True  # nothing in common with the accepted colon: Dice 0
    ws.masks.write_label_set("ls-run-2", {"colon": colon}, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov["colon"] = "annotated_present"
    rec = LabelSetRecord(id="ls-run-2", scan_id=SCAN, version=None, origin="pseudo", mask_key="ls-run-2")
    ws.catalog.add_label_set(rec, cov, [])
    item = {"scan_id": SCAN, "class_name": "colon", "run_id": "run-2", "label_set_id": "ls-run-2"}
    ws.catalog.add_uncertainty([{**item, "score": 0.95, "signals": {}, "reasons": []}])
    at = _app("review")
    assert any(
        "re-queued: the new prediction differs from the label Dr Ada accepted, Dice 0.00" in _plain(i.value)
        for i in at.info
    )


def test_the_long_tail_page_shows_agreement_where_there_is_any(ws: Workspace, queued: str) -> None:
    review.set_share(ws, 1.0)
    for cls, second in (("colon", "accept"), ("intestine", "reject")):
        review.record_decision(ws, SCAN, cls, queued, "accept", "Dr Ada")
        review.record_decision(ws, SCAN, cls, queued, second, "Dr Bob")
    at = _app("long_tail")
    assert len(at.get("plotly_chart")) == 6
    assert any("Inter-reviewer agreement" in s.value for s in at.subheader)
    table = at.dataframe[-1].value
    assert table.set_index("class_name").loc["all", "agreement"] == 0.5
