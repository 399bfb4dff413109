"""A real browser opens the HTML report (``workbench report``) from disk: headless Chromium under
chromedriver loads it by ``file://``, every table is there with rows, both plotly scatters render their
points, the console has no error, and the page requested nothing (no resource entry at all).

Needs the Debian packages ``chromium`` and ``chromium-driver``; without them the test skips, except under
``CI=true`` where it fails (the helpers of ``test_app_browser.py``). No server is involved.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_report_browser_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_app = _module(HERE / "test_app_browser.py")  # _need, _free_port, _http, _wait
_need, _free_port, _http, _wait = _app._need, _app._free_port, _app._http, _app._wait


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


@contextmanager
def _browser() -> Iterator[tuple[Callable[[str], Any], Callable[[], list[dict[str, Any]]]]]:
    """Headless Chromium under chromedriver: yields ``(go(url) -> script(js), console())``."""
    chromium, driver = _need("chromium"), _need("chromedriver")
    port = _free_port()
    drv = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http("GET", f"{base}/status", timeout=2)["value"]["ready"], 30, "chromedriver")
        options = {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        }
        caps = {
            "capabilities": {
                "alwaysMatch": {"goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            }
        }
        wd = f"{base}/session/{_http('POST', f'{base}/session', caps, timeout=60)['value']['sessionId']}"

        def script(js: str) -> Any:
            return _http("POST", f"{wd}/execute/sync", {"script": js, "args": []})["value"]

        def go(url: str) -> Callable[[str], Any]:
            _http("POST", f"{wd}/url", {"url": url}, timeout=60)
            return script

        def console() -> list[dict[str, Any]]:
            return list(_http("POST", f"{wd}/se/log", {"type": "browser"})["value"])

        try:
            yield go, console
        finally:
            _http("DELETE", wd)
    finally:
        drv.terminate()
        drv.wait(10)


@pytest.mark.slow
def test_chromium_renders_the_report_without_errors_or_requests(report: Path) -> None:
    from workbench.learning.report import TABLES

    with _browser() as (go, console):
        script = go(report.as_uri())
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
        errors = [e for e in console() if e.get("level") == "SEVERE"]
    assert all(n > 0 for n in rows.values()), rows
    assert plots == 2 and points >= 2  # two scatters, a point per evaluation
    assert resources == []  # nothing fetched: no script, style, font or image from anywhere
    assert errors == []
