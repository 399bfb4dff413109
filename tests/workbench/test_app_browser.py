"""A real browser loads the running app: headless Chromium opens the Review page and its slice renders, a
hostile case folder name shows as text (no link, image or script handler in the page), and the server,
started as the README says, listens on 127.0.0.1 only.

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
from contextlib import contextmanager
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


#: A case folder whose name is a Markdown link, a remote Markdown image and HTML with a script handler.
HOSTILE_CASE = "x [log in](https://evil.example) ![i](http://evil.example/i.png) <img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def workspace(
    demo_copy: Callable[[Path], Path],
    add_hostile_scan: Callable[..., tuple[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The demo workspace with :data:`HOSTILE_CASE` at the top of the review queue."""
    from storage.workspace import Workspace

    root = demo_copy(tmp_path_factory.mktemp("browser") / "ws")
    add_hostile_scan(Workspace.open(root), HOSTILE_CASE)
    return root


@pytest.fixture(scope="module")
def app_url(workspace: Path) -> Iterator[str]:
    """The app served as the README says (``streamlit run workbench/app.py`` from the repository root, so
    with ``.streamlit/config.toml``), on a free port."""
    port = _free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "workbench/app.py", "--server.port", str(port)],
        cwd=REPO,
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


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp and tcp6) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_server_listens_on_loopback_only(app_url: str) -> None:
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp to see where the server listens")
    port = int(app_url.rsplit(":", 1)[1])
    assert _listening(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0 or :: (all interfaces)


@contextmanager
def _browser() -> Iterator[Callable[[str], Any]]:
    """A headless Chromium under chromedriver; yields ``go(url)`` that opens a page and returns
    ``script(js)`` to run JavaScript in it."""
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

        def script(js: str) -> Any:
            return _http("POST", f"{wd}/execute/sync", {"script": js, "args": []})["value"]

        def go(url: str) -> Callable[[str], Any]:
            _http("POST", f"{wd}/url", {"url": url}, timeout=60)
            return script

        try:
            yield go
        finally:
            _http("DELETE", wd)
    finally:
        drv.terminate()
        drv.wait(10)


def _slice_width(script: Callable[[str], Any]) -> int:
    return int(
        _wait(
            lambda: script(
                'const i = document.querySelector(\'[data-testid="stImage"] img, '
                '[data-testid="stImageContainer"] img\');'
                "return i && i.complete ? i.naturalWidth : 0;"
            ),
            90,
            "the slice image",
        )
    )


@pytest.mark.slow
def test_review_page_renders_its_slice_in_chromium(app_url: str) -> None:
    with _browser() as go:
        script = go(f"{app_url}/review")
        assert _slice_width(script) >= 320  # slice images are at least MIN_DISPLAY_PX wide
        text = script("return document.body.innerText;")
        assert "Review" in text
        assert "Traceback" not in text and "Error" not in text.split("Review", 1)[0]


@pytest.mark.slow
def test_a_hostile_case_name_shows_as_text_in_chromium(app_url: str) -> None:
    with _browser() as go:
        script = go(f"{app_url}/review")  # the hostile scan is the top queue item
        _slice_width(script)
        live = script(
            "return Array.from(document.querySelectorAll("
            '\'a[href*="evil.example"], img[src*="evil.example"], img[src="x"], [onerror], [onmouseover]\''
            ")).map(e => e.outerHTML);"
        )
        assert live == []  # no link, remote image or script handler made it into the page
        text = script("return document.body.innerText;").replace("\u2060", "")  # escape()'s word joiners
        assert f"Decision on colon of btcv:{HOSTILE_CASE}" in text  # the subheader shows the very name
        assert f"btcv:{HOSTILE_CASE} · axial" in text  # and so does the slice's caption
