"""A real browser opens the HTML report (``workbench report``) from disk: headless Chromium under
chromedriver loads it by ``file://``, every table is there with rows, both plotly scatters render their
points, the console has no error, and the page requested nothing (no resource entry at all).

Needs the Debian packages ``chromium`` and ``chromium-driver``; without them the test skips, except under
``CI=true`` where it fails (the helpers of ``test_app_browser.py``). No server is involved.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_report_browser_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_app = _module(HERE / "test_app_browser.py")  # the Chromium driver, _need and _wait
_need, _wait = _app._need, _app._wait


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the phantom workspace of ``tests/workbench/learning/test_report.py``."""
    from storage.workspace import Workspace
    from workbench.learning.report import write_report

    _need("chromium"), _need("chromedriver")  # skip (or fail in CI) before building anything
    builder = _module(HERE / "learning" / "test_report.py")
    root = tmp_path_factory.mktemp("report_browser")
    builder.build_report_workspace(root)
    return write_report(Workspace.open(root / "ws"), "scratch", root / "report.html", against=["tuned"])


@pytest.mark.slow
def test_chromium_renders_the_report_without_errors_or_requests(report: Path) -> None:
    from workbench.learning.report import TABLES

    with _app._driver() as d:
        d.go(report.as_uri())
        script = d.script
        count_points = "return document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length;"
        points = _wait(
            lambda: script(count_points),
            60,
            "the plotly scatters' points",
        )
        rows = script(
            "return Object.fromEntries(" + repr(list(TABLES)) + ".map(id => {"
            "const t = document.getElementById(id); return [id, t ? t.tBodies[0].rows.length : -1]; }));"
        )
        plots = script("return document.querySelectorAll('.js-plotly-plot').length;")
        resources = script("return performance.getEntriesByType('resource').map(e => e.name);")
        errors = [e for e in d.console() if e.get("level") == "SEVERE"]
    assert all(n > 0 for n in rows.values()), rows
    assert plots == 2 and points >= 2  # two scatters, a point per evaluation
    assert resources == []  # nothing fetched: no script, style, font or image from anywhere
    assert errors == []
