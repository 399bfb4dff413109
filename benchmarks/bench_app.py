"""App responsiveness at 10,000 scans: every page < 1 s, and the Review page's multiplanar viewer in a real
browser on 512 x 512 x 300 CTs: decision key -> next item drawn < 0.5 s, slice key -> new slice < 0.1 s,
brush stroke -> saved revised label set < 1 s, app memory per open case < 1 GB.

Builds the 10,000-scan catalog of ``bench_catalog.build`` (32 classes, 20 sources), gives three scans a
real CT (512 x 512 x 300 int16 NIfTI, 0.8 x 0.8 x 1.5 mm) with three classes each in the mask store, and
fills the review queue with 30,000 uncertainty rows (3 classes per scan; the nine items of the three real
scans rank first, alternating scans, so each next item is another CT). Then:

* through ``streamlit.testing.v1.AppTest`` (the whole page script, as a browser rerun would run it): each
  page render (Overview, Long tail, Review, Export), median of repeated reruns after a warm-up;
* ``streamlit run workbench/app.py`` headless on a free port, driven by headless Chromium (W3C WebDriver
  over HTTP to ``chromedriver``; Debian packages ``chromium`` and ``chromium-driver``), the times taken
  inside the viewer's frame with ``performance.now()``:
  - decision key (``a``) -> the next item's three planes and 3D view drawn on screen (the frame after
    the draw), after the reviewer looked at the item long enough for its preload (the server's
    background thread and the browser's prefetch of the next item) to finish. The viewer draws the
    prefetched next item on the key; the page's rerun (the decision written, the queue read again)
    then answers with the item it serves: the next rows time that answer (key -> answer in the
    browser, with its splits) and count the answers that named the item already drawn;
  - slice key (arrow up) -> the new slice on screen (key event time -> the next animation frame);
  - brush stroke (mouse up) -> the revised label set committed (the server logs the commit's end to
    ``WORKBENCH_TIMING_LOG``; both clocks are this machine's);
  - the app process's resident memory (``/proc/PID/status`` VmRSS) with the Review page's case open and
    its next item preloaded, and its peak over the decisions, minus the app before the Review page.

The rows of the old one-slice viewer (slider and class change reruns, ``slice_image`` alone, the
slider's arrow key and the view radio in Chromium) are gone with it: the new viewer draws every slice in
the browser without a rerun (the old viewer stays as "Classic slice view", a fallback).

    python benchmarks/bench_app.py [--scans 10000] [--repeats 5] [--browser-repeats 6] [--no-browser]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from storage.synthetic import attach_real_case, build_synthetic_catalog
from storage.workspace import Workspace

PAGE_TARGET_S = 1.0
DECISION_TARGET_S = 0.5
SLICE_TARGET_S = 0.1
BRUSH_TARGET_S = 1.0
MEMORY_TARGET_MB = 1024.0
APP = str(Path(__file__).resolve().parents[1] / "workbench" / "app.py")
SHAPE = (512, 512, 300)
SPACING = (0.8, 0.8, 1.5)
CLASSES = ("liver", "spleen", "kidney_left")
N_REAL = 3


def _ct(seed: int) -> np.ndarray:
    """A body-like CT: air outside an elliptic body of soft tissue (40 HU, noise 20 HU), int16."""
    nx, ny, nz = SHAPE
    x, y = np.ogrid[:nx, :ny]
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.34 * ny)) ** 2 <= 1.0
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000, np.int16)
    for k in range(nz):
        plane = ct[:, :, k]
        plane[body] = rng.normal(40, 20, int(body.sum())).astype(np.int16)
    return ct


def add_real_cases(ws: Workspace, folder: Path) -> list[str]:
    """Give the first :data:`N_REAL` scans a real CT file and masks; returns their scan ids."""
    first = ws.catalog.label_sets().drop_duplicates("scan_id").iloc[:N_REAL]
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    scans = []
    for n, (scan_id, ls_id) in enumerate(first[["scan_id", "id"]].itertuples(index=False)):
        path = folder / f"ct{n}.nii"
        nib.save(nib.Nifti1Image(_ct(n), affine), path)
        masks = {}
        for c, name in enumerate(CLASSES):
            m = np.zeros(SHAPE, bool)
            m[100 + 100 * c : 190 + 100 * c, 160 + 10 * n : 330, 60:240] = True
            masks[name] = m
        ws.masks.write_label_set(str(ls_id), masks, SHAPE)
        attach_real_case(ws.catalog, str(scan_id), str(ls_id), path, SHAPE, affine, CLASSES)
        scans.append(str(scan_id))
    return scans


def fill_queue(ws: Workspace, real: list[str]) -> int:
    ls = ws.catalog.label_sets()[["scan_id", "id"]]
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for scan_id, ls_id in ls.itertuples(index=False):
        for c, name in enumerate(CLASSES):
            top = scan_id in real  # the real scans' items first, alternating scans
            score = 10.0 - c * len(real) - real.index(scan_id) if top else float(rng.random())
            rows.append(
                {
                    "scan_id": scan_id,
                    "class_name": name,
                    "run_id": "run-bench",
                    "label_set_id": ls_id,
                    "score": score,
                    "signals": {"entropy": 0.1},
                    "reasons": ["high_entropy"] if rng.random() < 0.5 else ["volume_outlier"],
                }
            )
    ws.catalog.add_uncertainty(rows)
    return len(rows)


def median_s(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------- real browser

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference
FRAME = (
    "const f = [...document.querySelectorAll('iframe')]"
    ".find(i => (i.title || '').includes('multiplanar_viewer'));"
)
VIEWER = FRAME + "const v = f && f.contentWindow.__viewer;"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}").get("value")


def _wait(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def _process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (``/proc/PID/status`` VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


#: What each mark's share of the decision's run is.
STEP = {
    "decision_saved": "action -> decision written (checks + insert)",
    "queue_listed": "-> queue listed (upkeep, maintained tables)",
    "mpr": "-> scan reads, payload found, viewer args sent",
    "catalog_closed": "-> long-tail upkeep, catalog closed",
    "review_page": "-> rest of the page (history, buttons)",
}
#: The Review page's marks of a decision's run, in order (``common.record_timing``; the ends count).
DECISION_MARKS = ("decision_saved", "queue_listed", "mpr", "catalog_closed", "review_page")
EDIT_STEP = {
    "edit_rows": "action -> scan and label set rows read",
    "edit_mask_read": "-> the class's mask decoded",
    "edit_applied": "-> the stroke applied to the mask",
    "edit_saved": "-> revised label set written (masks, statistics, catalog)",
}
#: The Review page's marks of an edit's run, in order.
EDIT_MARKS = tuple(EDIT_STEP)


def _server_marks(log: Path, names: tuple[str, ...] = DECISION_MARKS) -> dict[str, float]:
    """When (epoch s) the server got the newest action, and when each of ``names`` ended next after it
    (the run that answered it)."""
    lines = [x.split() for x in log.read_text().splitlines()]
    received = [float(x[2]) for x in lines if x[0] == "action_received"][-1]
    marks = {"action_received": received}
    for x in lines:
        end = float(x[2]) + float(x[1])
        if x[0] in names and x[0] not in marks and end >= received:
            marks[x[0]] = end
    return marks


def _saved_more(log: Path, lines: int) -> bool:
    return log.exists() and log.read_text().count("edit_saved") > lines


def browser_timings(root: Path, repeats: int, log: Path) -> list[tuple[str, float, float, str]]:
    """The viewer's latencies and the app's memory in Chromium (module docstring); [] without Chromium."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        print("viewer in browser: skipped (needs the Debian packages chromium and chromium-driver)")
        return []
    port, wd_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "WORKBENCH_HOME": str(root),
        "PYTHONPATH": str(Path(APP).parents[1]),
        "WORKBENCH_TIMING_LOG": str(log),
    }
    app = [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port)]
    app += [
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    url = f"http://127.0.0.1:{port}"
    base = f"http://127.0.0.1:{wd_port}"
    with _process(app, env) as proc, _process([driver, f"--port={wd_port}"]):
        _wait(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok", 120, "app")
        _wait(lambda: _http("GET", f"{base}/status", timeout=2)["ready"], 30, "chromedriver")
        options = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        caps = {"goog:chromeOptions": {"binary": chromium, "args": [*options, "--window-size=1400,1400"]}}
        session = _http("POST", f"{base}/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        wd = f"{base}/session/{session}"

        def js(script: str) -> Any:
            return _http("POST", f"{wd}/execute/sync", {"script": script, "args": []})

        def key(k: str) -> None:
            js("document.activeElement && document.activeElement.blur(); return 1;")
            acts = [{"type": "keyDown", "value": k}, {"type": "keyUp", "value": k}]
            _http("POST", f"{wd}/actions", {"actions": [{"type": "key", "id": "kb", "actions": acts}]})

        def drawn_after(before: str | None) -> dict[str, Any]:
            other = json.dumps(before)
            try:
                return dict(
                    _wait(
                        lambda: js(f"{VIEWER} const d = v && v.drawn; return d && d.id !== {other} && d;"),
                        120,
                        "the viewer to draw",
                    )
                )
            except TimeoutError:
                print(js("return document.body.innerText;")[:3000])
                print(js(f"{VIEWER} return JSON.stringify(v);"))
                raise

        def settled() -> None:  # the next item preloaded and prefetched, the app idle
            _wait(lambda: js(f"{VIEWER} return v && v.prefetched;"), 120, "the next item's prefetch")
            _wait(
                lambda: js("return !document.querySelector('[data-testid=\"stStatusWidget\"] button');"),
                60,
                "idle app",
            )
            time.sleep(0.5)

        try:
            _http("POST", f"{wd}/url", {"url": f"{url}/"}, timeout=180)
            time.sleep(3.0)
            before_mb = rss_mb(proc.pid)
            _http("POST", f"{wd}/url", {"url": f"{url}/review"}, timeout=180)
            drawn = drawn_after(None)
            box = str(
                _wait(
                    lambda: js("return document.querySelector('input[aria-label=\"Reviewer name\"]');"),
                    60,
                    "",
                )[ELEMENT]
            )
            _http("POST", f"{wd}/element/{box}/value", {"text": "bench\n"})
            time.sleep(1.5)
            settled()
            open_mb = rss_mb(proc.pid) - before_mb
            js(FRAME + "f.scrollIntoView({block: 'start'}); return 1;")  # the reviewer looks at the viewer
            time.sleep(0.5)
            # slice keys
            for _ in range(repeats * 3):
                key("\ue013")  # arrow up
                time.sleep(0.15)
            slices = [float(t) / 1000.0 for t in js(f"{VIEWER} return v.slices;")]
            # decisions
            decisions, peak = [], open_mb
            key_to_server: list[float] = []
            server: list[float] = []
            back: list[float] = []
            answered: list[float] = []
            same = 0
            splits: dict[str, list[float]] = {m: [] for m in DECISION_MARKS}
            for _ in range(repeats):
                settled()
                key("a")
                new = drawn_after(str(drawn["id"]))
                time.sleep(0.2)  # the frame after the draw
                painted = js(f"{VIEWER} return v.drawn.painted || v.drawn.t;")
                pressed = float(js(f"{VIEWER} return v.key.t;"))
                decisions.append((float(painted) - pressed) / 1000.0)
                answer = _wait(
                    lambda: js(f"{VIEWER} const a = v.answer; return a && a.done === v.key.action && a;"),
                    120,
                    "the page's answer to the decision",
                )
                answered.append((float(answer["t"]) - pressed) / 1000.0)
                same += int(answer["item"] == new["id"])
                wall = js(f"{VIEWER} return [v.key.wall, v.answer.wall];")
                # the page goes on after the viewer's answer: its last marks come a moment later
                marks = _wait(
                    lambda: (m := _server_marks(log)) and "review_page" in m and m,
                    60,
                    "the decision's run to finish",
                )
                received, args_sent = marks["action_received"], marks.get("mpr", float("nan"))
                previous = received
                for m in DECISION_MARKS:  # each step's share, from the end of the one before
                    splits[m].append(marks.get(m, float("nan")) - previous)
                    previous = marks.get(m, previous)
                key_to_server.append(received - float(wall[0]) / 1000.0)
                server.append(args_sent - received)
                back.append(float(wall[1]) / 1000.0 - args_sent)
                drawn = new
                peak = max(peak, rss_mb(proc.pid) - before_mb)
            # brush strokes
            settled()
            key("b")
            strokes: list[float] = []
            to_server: list[float] = []
            edit_splits: dict[str, list[float]] = {m: [] for m in EDIT_MARKS}
            for n in range(3):
                settled()
                r = js(
                    FRAME + "const r = f.getBoundingClientRect(), c = f.contentDocument"
                    ".querySelectorAll('.pane canvas')[0].getBoundingClientRect();"
                    "return [r.left + c.left, r.top + c.top, c.width, c.height];"
                )
                x0, y0, w, h = (float(v) for v in r)
                lines = log.read_text().count("edit_saved") if log.exists() else 0
                saved = functools.partial(_saved_more, log, lines)
                y = int(y0 + h * (0.4 + 0.05 * n))
                moves: list[dict[str, Any]] = [
                    {"type": "pointerMove", "duration": 0, "x": int(x0 + w * 0.3), "y": y},
                    {"type": "pointerDown", "button": 0},
                ]
                moves += [
                    {"type": "pointerMove", "duration": 30, "x": int(x0 + w * f), "y": y} for f in (0.4, 0.5)
                ]
                moves.append({"type": "pointerUp", "button": 0})
                mouse = {
                    "type": "pointer",
                    "id": "mouse",
                    "parameters": {"pointerType": "mouse"},
                    "actions": moves,
                }
                _http("POST", f"{wd}/actions", {"actions": [mouse]})
                _wait(saved, 60, "the saved stroke", poll=0.1)
                line = [x for x in log.read_text().splitlines() if x.startswith("edit_saved")][-1]
                _, dur, start = line.split()
                up = float(js(f"{VIEWER} return v.stroke.wall;")) / 1000.0  # Date.now(): the wall clock
                strokes.append(float(start) + float(dur) - up)
                marks = _server_marks(log, EDIT_MARKS)
                to_server.append(marks["action_received"] - up)
                previous = marks["action_received"]
                for m in EDIT_MARKS:
                    edit_splits[m].append(marks.get(m, float("nan")) - previous)
                    previous = marks.get(m, previous)
                drawn = drawn_after(str(drawn["id"]))
                peak = max(peak, rss_mb(proc.pid) - before_mb)
        finally:
            _http("DELETE", wd)
    med = statistics.median
    n_d, n_k, n_s = len(decisions), len(slices), len(strokes)
    target_gb = MEMORY_TARGET_MB / 1000.0
    return [
        ("viewer: decision key -> next item drawn", med(decisions), DECISION_TARGET_S, f"{n_d} decisions"),
        (
            "viewer: decision key -> the page's answer",
            med(answered),
            DECISION_TARGET_S,
            f"{same}/{n_d} named the item drawn",
        ),
        ("  key -> the server has it", med(key_to_server), DECISION_TARGET_S, "wall clocks"),
        ("  decision + page run to the viewer, server", med(server), DECISION_TARGET_S, ""),
        *[("    " + STEP[m], med(splits[m]), DECISION_TARGET_S, "server") for m in DECISION_MARKS],
        ("  viewer args sent -> answer in the browser", med(back), DECISION_TARGET_S, "wall clocks"),
        ("viewer: slice key -> new slice on screen", med(slices), SLICE_TARGET_S, f"{n_k} keys"),
        ("viewer: brush stroke -> revised label set saved", med(strokes), BRUSH_TARGET_S, f"{n_s} strokes"),
        ("  stroke -> the server has it", med(to_server), BRUSH_TARGET_S, "wall clocks"),
        *[("    " + EDIT_STEP[m], med(edit_splits[m]), BRUSH_TARGET_S, "server") for m in EDIT_MARKS],
        ("app memory: case open + next preloaded", open_mb / 1000.0, target_gb, "RSS delta"),
        ("app memory: peak over the review", peak / 1000.0, target_gb, "RSS delta"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser-repeats", type=int, default=6)
    parser.add_argument("--no-browser", action="store_true", help="skip the real-browser rows")
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        t = time.perf_counter()
        build_synthetic_catalog(ws.catalog, args.scans)
        real = add_real_cases(ws, Path(tmp))
        n_items = fill_queue(ws, real)
        print(
            f"built {args.scans} scans ({N_REAL} with a {SHAPE} CT), {n_items} queue items in "
            f"{time.perf_counter() - t:.1f} s"
        )
        ct_mb = np.prod(SHAPE) * 2 / 1e6
        print(
            f"viewer payload per CT: {ct_mb:.0f} MB int16 (raw, fetched once per scan); niivue-streamlit "
            f"would get the NIfTI base64 in the render args: {ct_mb * 4 / 3:.0f} MB per rerun"
        )
        os.environ["WORKBENCH_HOME"] = str(ws.root)
        at = AppTest.from_file(APP, default_timeout=300)
        at.session_state["reviewer"] = "bench"
        at.run()
        results: list[tuple[str, float, float, str]] = []
        for page in ("overview", "long_tail", "review", "export"):
            at.switch_page(f"app_pages/{page}.py").run()  # warm-up (imports, payload files)
            assert not at.exception, [e.value for e in at.exception]
            s = median_s(lambda: at.run(), args.repeats)
            results.append((f"page render: {page} (AppTest)", s, PAGE_TARGET_S, ""))
            print(f"page render: {page} (AppTest) {s * 1000:.1f} ms", flush=True)
        if not args.no_browser:
            results += browser_timings(ws.root, args.browser_repeats, Path(tmp) / "timing.log")
    for what, s, target, note in results:
        unit, scale = ("GB", 1.0) if "memory" in what else ("ms", 1000.0)
        value = f"{s * scale:8.1f} {unit}" if unit == "ms" else f"{s:8.2f} {unit}"
        limit = f"{target * scale:.0f} ms" if unit == "ms" else f"{target:.2f} GB"
        print(f"{what:50s} {value}  ({s / target:.2f}x of the {limit} target) {note}")


if __name__ == "__main__":
    main()
