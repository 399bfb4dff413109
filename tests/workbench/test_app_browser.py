"""A real browser loads the running app: headless Chromium opens the Review page and its slice renders.

Needs the Debian packages ``chromium`` and ``chromium-driver``. Without them the test skips, except under
``CI=true`` where it fails (CI installs them). It talks W3C WebDriver to chromedriver over HTTP (no
Selenium dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{binary} is missing, and CI installs it (apt-get install chromium chromium-driver)")
    pytest.skip(f"needs {binary} (Debian packages chromium and chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def workspace(demo_copy: Callable[[Path], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_copy(tmp_path_factory.mktemp("browser") / "ws")


@pytest.fixture(scope="module")
def app_url(workspace: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "workbench" / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok",
            60,
            "streamlit to start",
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_review_page_renders_its_slice_in_chromium(app_url: str) -> None:
    chromium, driver = _need("chromium"), _need("chromedriver")
    port = _free_port()
    drv = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http("GET", f"{base}/status", timeout=2)["value"]["ready"], 30, "chromedriver")
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-dev-shm-usage",
                            "--disable-gpu",
                            "--window-size=1400,1100",
                        ],
                    }
                }
            }
        }
        session = _http("POST", f"{base}/session", caps, timeout=60)["value"]["sessionId"]
        wd = f"{base}/session/{session}"
        try:
            _http("POST", f"{wd}/url", {"url": f"{app_url}/review"}, timeout=60)

            def script(js: str) -> Any:
                return _http("POST", f"{wd}/execute/sync", {"script": js, "args": []})["value"]

            width = _wait(
                lambda: script(
                    'const i = document.querySelector(\'[data-testid="stImage"] img, '
                    '[data-testid="stImageContainer"] img\');'
                    "return i && i.complete ? i.naturalWidth : 0;"
                ),
                90,
                "the slice image",
            )
            assert width >= 320  # slice images are at least MIN_DISPLAY_PX wide
            text = script("return document.body.innerText;")
            assert "Review" in text
            assert "Traceback" not in text and "Error" not in text.split("Review", 1)[0]
        finally:
            _http("DELETE", wd)
    finally:
        drv.terminate()
        drv.wait(10)
