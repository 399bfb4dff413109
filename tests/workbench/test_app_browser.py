"""A real browser loads the running app: headless Chromium opens the Review page and its multiplanar viewer
draws, a hostile case folder name shows as text (no link, image or script handler in the page or the
viewer), the server, started as the README says, listens on 127.0.0.1 only, and a review is driven by
keyboard (accept one item, reject one, correct one with a brush stroke, undo it) and checked in the
catalog. That test also takes the README's screenshots of the Review page: into ``docs/screenshots/``
when ``WORKBENCH_SCREENSHOTS=1``, else into a temporary folder.

Needs the Debian packages ``chromium`` and ``chromium-driver``. Without them the test skips, except under
``CI=true`` where it fails (CI installs them). It talks W3C WebDriver to chromedriver over HTTP (no
Selenium dependency).
"""

from __future__ import annotations

import base64
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

import numpy as np
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


#: The scan whose two pseudo-labelled classes follow the hostile item in the queue.
SCAN = "btcv:demo000"


@pytest.fixture(scope="module")
def workspace(
    demo_copy: Callable[[Path], Path],
    add_hostile_scan: Callable[..., tuple[str, str]],
    add_pseudo: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The demo workspace with :data:`HOSTILE_CASE` at the top of the review queue, then colon and
    intestine of :data:`SCAN` (pseudo label set ``ls-browser``)."""
    from storage.workspace import Workspace

    root = demo_copy(tmp_path_factory.mktemp("browser") / "ws")
    ws = Workspace.open(root)
    add_hostile_scan(ws, HOSTILE_CASE)
    add_pseudo(ws, SCAN, "ls-browser", {"colon": 0.9, "intestine": 0.4})
    return root


@pytest.fixture(scope="module")
def app_url(workspace: Path) -> Iterator[str]:
    """The app served as the README says (``streamlit run workbench/app.py`` from the repository root, so
    with ``.streamlit/config.toml``), on a free port."""
    with _serve(workspace) as url:
        yield url


@contextmanager
def _serve(workspace: Path) -> Iterator[str]:
    """``streamlit run workbench/app.py`` on ``workspace`` from the repository root, on a free port."""
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
    HOMES[url] = str(workspace)
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


ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference


class Driver:
    """One headless Chromium session under chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, wd: str) -> None:
        self.wd = wd

    def go(self, url: str) -> None:
        _http("POST", f"{self.wd}/url", {"url": url}, timeout=60)

    def script(self, js: str) -> Any:
        return _http("POST", f"{self.wd}/execute/sync", {"script": js, "args": []})["value"]

    def element(self, css: str) -> str:
        found = _http("POST", f"{self.wd}/element", {"using": "css selector", "value": css})["value"]
        return str(found[ELEMENT])

    def type_into(self, css: str, text: str) -> None:
        _http("POST", f"{self.wd}/element/{self.element(css)}/value", {"text": text})

    def key(self, key: str) -> None:
        """Press and release one key, sent to whatever has the focus."""
        down_up = [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]
        _http("POST", f"{self.wd}/actions", {"actions": [{"type": "key", "id": "kb", "actions": down_up}]})

    def drag(self, points: list[tuple[int, int]]) -> None:
        """A left-button mouse drag through viewport ``points`` (the first is where the button goes down)."""
        moves: list[dict[str, Any]] = [
            {"type": "pointerMove", "duration": 0, "x": points[0][0], "y": points[0][1]}
        ]
        moves.append({"type": "pointerDown", "button": 0})
        moves += [{"type": "pointerMove", "duration": 20, "x": x, "y": y} for x, y in points[1:]]
        moves.append({"type": "pointerUp", "button": 0})
        mouse = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": moves}
        _http("POST", f"{self.wd}/actions", {"actions": [mouse]})

    def screenshot(self, path: Path) -> None:
        png = _http("GET", f"{self.wd}/screenshot", timeout=60)["value"]
        path.write_bytes(base64.b64decode(png))

    def console(self) -> list[dict[str, Any]]:
        """The browser console's entries since the last call (``level``, ``message``)."""
        return list(_http("POST", f"{self.wd}/se/log", {"type": "browser"})["value"])


@contextmanager
def _driver(window: str = "1400,1100") -> Iterator[Driver]:
    """A headless Chromium under chromedriver."""
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
                            f"--window-size={window}",
                        ],
                    },
                    "goog:loggingPrefs": {"browser": "ALL"},
                }
            }
        }
        session = _http("POST", f"{base}/session", caps, timeout=60)["value"]["sessionId"]
        wd = f"{base}/session/{session}"
        try:
            yield Driver(wd)
        finally:
            _http("DELETE", wd)
    finally:
        drv.terminate()
        drv.wait(10)


@contextmanager
def _browser() -> Iterator[Callable[[str], Any]]:
    """A headless Chromium under chromedriver; yields ``go(url)`` that opens a page and returns
    ``script(js)`` to run JavaScript in it."""
    with _driver() as d:

        def go(url: str) -> Callable[[str], Any]:
            d.go(url)
            return d.script

        yield go


#: JavaScript: the viewer component's frame (the multiplanar viewer) in the page, or null.
FRAME = (
    "const f = [...document.querySelectorAll('iframe')]"
    ".find(i => (i.title || '').includes('multiplanar_viewer'));"
)


#: JavaScript after FRAME: scroll the viewer to the top of the window, below Streamlit's header.
SCROLL = (
    "f.scrollIntoView({block: 'start'}); const m = document.querySelector('[data-testid=\"stMain\"]');"
    "if (m) m.scrollBy(0, -70); return 1;"
)


def _drawn(script: Callable[[str], Any], after: str | None = None, timeout: float = 90) -> str:
    """Wait until the viewer has drawn an item (another than ``after``); returns its id."""
    return str(
        _wait(
            lambda: script(
                FRAME + "const v = f && f.contentWindow.__viewer; const d = v && v.drawn;"
                f"return d && d.id !== {json.dumps(after)} ? d.id : null;"
            ),
            timeout,
            "the viewer to draw " + ("an item" if after is None else "the next item"),
        )
    )


LIVE = 'a[href*="evil.example"], img[src*="evil.example"], img[src="x"], [onerror], [onmouseover]'


@pytest.mark.slow
def test_review_page_draws_the_three_planes_at_full_resolution_in_chromium(app_url: str) -> None:
    from storage.workspace import Workspace

    with _driver() as d:
        d.go(f"{app_url}/review")
        _drawn(d.script)
        sizes = d.script(
            FRAME
            + "return [...f.contentDocument.querySelectorAll('.pane canvas')].map(c => [c.width, c.height]);"
        )
        text = d.script("return document.body.innerText;")
    from workbench.app_data.multiplanar import display_geometry

    row = Workspace.open(_home(app_url)).catalog.scan_row(SCAN)
    assert row is not None
    nx, ny, nz = display_geometry(row["shape"], np.reshape(row["affine"], (4, 4))).array.shape
    assert sizes[:3] == [[nx, ny], [nx, nz], [ny, nz]]  # axial, coronal, sagittal: one pixel per voxel
    assert len(sizes) == 4  # axial, coronal, sagittal and the 3D view
    assert "Review" in text and "Traceback" not in text
    assert "accept the item" in text  # the keys are listed on the page


def _home(app_url: str) -> str:
    return HOMES[app_url]


#: app URL -> its workspace root (filled by the app_url fixture).
HOMES: dict[str, str] = {}


@pytest.mark.slow
def test_a_hostile_case_name_shows_as_text_in_chromium(app_url: str) -> None:
    with _browser() as go:
        script = go(f"{app_url}/review")  # the hostile scan is the top queue item
        _drawn(script)
        live = script(f"return Array.from(document.querySelectorAll('{LIVE}')).map(e => e.outerHTML);")
        live += script(
            FRAME + f"return Array.from(f.contentDocument.querySelectorAll('{LIVE}')).map(e => e.outerHTML);"
        )
        assert live == []  # no link, remote image or script handler made it into the page or the viewer
        text = script("return document.body.innerText;").replace("\u2060", "")  # escape()'s word joiners
        assert f"Decision on colon of btcv:{HOSTILE_CASE}" in text  # the subheader shows the very name
        title = script(FRAME + "return f.contentDocument.querySelector('.title').textContent;")
        assert title.startswith(f"btcv:{HOSTILE_CASE} · colon")  # and so does the viewer's title line


#: JavaScript after FRAME: ``v``, the viewer's test hooks (``window.__viewer``).
VIEWER = FRAME + "const v = f && f.contentWindow.__viewer;"


def _prefetched(script: Callable[[str], Any]) -> None:
    """Wait until the viewer holds the queue's next item (files and description)."""
    _wait(lambda: script(VIEWER + "return v && v.prefetched;"), 90, "the next item's prefetch")


def _answer(script: Callable[[str], Any]) -> dict[str, Any]:
    """Wait for the page's answer to the newest key's action; returns it (``item``: the item it sent)."""
    return dict(
        _wait(
            lambda: script(VIEWER + "const a = v.answer; return a && v.key && a.done === v.key.action && a;"),
            90,
            "the page's answer to the decision",
        )
    )


def _reviews(root: str) -> Any:
    from storage.workspace import Workspace

    return Workspace.open(root).catalog.reviews()


@pytest.mark.slow
def test_a_review_driven_by_keyboard_in_chromium(app_url: str, tmp_path: Path) -> None:
    """Accept the hostile item (key a), reject SCAN's colon (r), brush intestine (b + a drag), undo (u)."""
    from storage.workspace import Workspace

    root = _home(app_url)
    shots = REPO / "docs" / "screenshots" if os.environ.get("WORKBENCH_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    pseudo_intestine = Workspace.open(root).masks.read("ls-browser", "intestine")
    with _driver("1400,1300") as d:
        d.go(f"{app_url}/review")
        first = _drawn(d.script)
        d.type_into('input[aria-label="Reviewer name"]', "Dr Keys\n")
        _wait(
            lambda: d.script(
                "return document.body.innerText.includes('Dr Keys') || "
                "document.querySelector('input[aria-label=\"Reviewer name\"]').value === 'Dr Keys';"
            ),
            30,
            "the name",
        )
        time.sleep(1.0)  # the name's rerun
        d.script("document.activeElement && document.activeElement.blur(); return 1;")

        def decide(key: str, before: str) -> str:
            n = len(_reviews(root))
            _prefetched(d.script)
            d.script("document.activeElement && document.activeElement.blur(); return 1;")
            d.key(key)
            _wait(lambda: len(_reviews(root)) > n, 60, f"the decision of key {key}")
            drawn = _drawn(d.script, after=before)
            # the viewer drew the prefetched next item on the key, and the page then served that very one
            assert _answer(d.script)["item"] == drawn == d.script(VIEWER + "return v.drawnAhead.id;")
            return drawn

        second = decide("a", first)
        d.script(FRAME + SCROLL)
        time.sleep(0.5)
        d.screenshot(shots / "review_viewer.png")  # an ordinary item (the hostile one is decided)
        third = decide("r", second)
        d.key("b")  # the brush
        d.script(FRAME + SCROLL)
        time.sleep(0.5)
        box = d.script(
            FRAME
            + "const r = f.getBoundingClientRect(), c = f.contentDocument.querySelectorAll('.pane canvas')[0]"
            ".getBoundingClientRect(); return [r.left + c.left, r.top + c.top, c.width, c.height];"
        )
        x0, y0, w, h = (float(v) for v in box)
        n = len(_reviews(root))
        d.drag([(int(x0 + w * f), int(y0 + h * 0.5)) for f in (0.3, 0.4, 0.5, 0.6)])
        _wait(lambda: len(_reviews(root)) > n, 60, "the brush stroke's correction")
        stroke_s = d.script(FRAME + "return f.contentWindow.__viewer.stroke.t;")
        edited = _drawn(d.script, after=third)
        d.screenshot(shots / "review_brush.png")
        n = len(_reviews(root))
        d.key("u")
        _wait(lambda: len(_reviews(root)) > n, 60, "the undo")
        _drawn(d.script, after=edited)
        assert stroke_s > 0
    ws = Workspace.open(root)
    rows = ws.catalog.reviews()
    mine = rows[rows["reviewer"] == "Dr Keys"].set_index("decision")
    assert (
        mine.loc["accept", "scan_id"] == f"btcv:{HOSTILE_CASE}"
        and mine.loc["accept", "class_name"] == "colon"
    )
    assert (mine.loc["reject", "scan_id"], mine.loc["reject", "class_name"]) == (SCAN, "colon")
    corrected = mine.loc["corrected"]
    assert (corrected["scan_id"], corrected["class_name"], corrected["label_set_id"]) == (
        SCAN,
        "intestine",
        "ls-browser",
    )
    assert bool(corrected["undone"]) and mine.loc["undo", "undo_of"] == corrected["id"]
    painted = ws.masks.read(str(corrected["result_label_set_id"]), "intestine")
    added = painted & ~pseudo_intestine
    assert added.sum() > 0 and not (pseudo_intestine & ~painted).any()  # the brush only added voxels
    k = np.unique(np.nonzero(added)[2])
    assert len(k) == 1  # one axial slice (depth 0)
    current = ws.catalog.current_label_set(SCAN, "intestine")
    assert current not in (None, corrected["result_label_set_id"])
    assert np.array_equal(ws.masks.read(str(current), "intestine"), pseudo_intestine)  # undone: as before


@pytest.fixture(scope="module")
def ahead_app_url(
    demo_copy: Callable[[Path], Path],
    add_hostile_scan: Callable[..., tuple[str, str]],
    add_pseudo: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The app on its own demo workspace whose queue starts btcv:ahead colon, then colon and intestine of
    :data:`SCAN`."""
    from storage.workspace import Workspace

    root = demo_copy(tmp_path_factory.mktemp("ahead") / "ws")
    ws = Workspace.open(root)
    add_hostile_scan(ws, "ahead")  # an ordinary name here: the demo scan's CT at the top of the queue
    add_pseudo(ws, SCAN, "ls-ahead", {"colon": 0.9, "intestine": 0.4})
    with _serve(root) as url:
        yield url


@pytest.mark.slow
def test_a_next_item_decided_elsewhere_meanwhile_is_replaced_by_the_one_the_page_serves(
    ahead_app_url: str,
) -> None:
    """The viewer draws the next item it holds on the decision key; when another reviewer decided that
    item after the page listed it, the page's answer is the item after it, and the viewer shows that."""
    from storage.workspace import Workspace
    from workbench import review

    root = _home(ahead_app_url)
    with _driver("1400,1300") as d:
        d.go(f"{ahead_app_url}/review")
        first = _drawn(d.script)
        d.type_into('input[aria-label="Reviewer name"]', "Dr Ahead\n")
        _wait(
            lambda: d.script(
                "return document.querySelector('input[aria-label=\"Reviewer name\"]').value === 'Dr Ahead';"
            ),
            30,
            "the name",
        )
        time.sleep(1.0)  # the name's rerun
        _prefetched(d.script)
        ws = Workspace.open(root)
        review.record_decision(ws, SCAN, "colon", "ls-ahead", "accept", "Dr Other")  # the held next item
        d.script("document.activeElement && document.activeElement.blur(); return 1;")
        d.key("a")
        answer = _answer(d.script)
        ahead = d.script(VIEWER + "return v.drawnAhead;")
        assert ahead["action"] == d.script(VIEWER + "return v.key.action;")  # drawn on the key itself
        assert answer["item"] != ahead["id"]  # the page served another item than the one drawn ahead
        shown = _drawn(d.script, after=ahead["id"])
        assert shown == answer["item"] != first
        title = d.script(FRAME + "return f.contentDocument.querySelector('.title').textContent;")
    assert title.startswith(f"{SCAN} · intestine · ")  # the item after the one decided elsewhere
    rows = Workspace.open(root).catalog.reviews()
    mine = rows[rows["reviewer"] == "Dr Ahead"]
    assert list(zip(mine["scan_id"], mine["class_name"], mine["decision"])) == [
        ("btcv:ahead", "colon", "accept")
    ]
    colon = rows[(rows["scan_id"] == SCAN) & (rows["class_name"] == "colon")]
    assert list(colon["reviewer"]) == ["Dr Other"]  # nobody decided it twice
