"""App responsiveness at 10,000 scans: every page < 1 s, a slice or class change in the viewer < 0.2 s.

Builds the 10,000-scan catalog of ``bench_catalog.build`` (32 classes, 20 sources), gives one scan a real
CT (a 256 x 256 x 160 int16 NIfTI) with masks in the mask store, and fills the review queue with 30,000
uncertainty rows (3 classes per scan; that scan ranks first). Then, through ``streamlit.testing.v1.AppTest``
(the whole page script, as a browser rerun would run it), times as medians of repeated reruns:

* each page render (Overview, Long tail, Review, Export), after a first warm-up render;
* in the Review viewer: moving the slice slider, and changing the overlay class;
* the pure slice rendering (``app_data.slice_image``) alone.

In a browser the viewer is an ``st.fragment``: a slider move reruns only the fragment, not the page. So it
also starts ``streamlit run workbench/app.py`` headless on a free port and drives headless Chromium
(W3C WebDriver over HTTP to ``chromedriver``; Debian packages ``chromium`` and ``chromium-driver``) to the
Review page, then times, from the key press or click to the moment the viewer's ``<img>`` src changes
(measured inside the page with ``performance.now()``):

* pressing the right arrow key on the focused Slice slider (Streamlit's slider sends its value after its
  own short debounce, which is part of what a reviewer waits for);
* clicking another View (axial / coronal), which changes the slice plane without a debounce;

and the fragment's server-side render time for those interactions (``WORKBENCH_TIMING_LOG``). Without
chromium/chromedriver these rows are skipped with a note.

    python benchmarks/bench_app.py [--scans 10000] [--repeats 5] [--browser-repeats 15] [--no-browser]
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
from workbench import app_data

PAGE_TARGET_S = 1.0
VIEWER_TARGET_S = 0.2
APP = str(Path(__file__).resolve().parents[1] / "workbench" / "app.py")
SHAPE = (256, 256, 160)


def add_real_case(ws: Workspace, folder: Path) -> str:
    """Give the first scan a real CT file and masks; returns its scan id."""
    first = ws.catalog.label_sets().iloc[0]
    scan_id, ls_id = str(first["scan_id"]), str(first["id"])
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 20, SHAPE).astype(np.int16)
    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), path)
    masks = {}
    for n, name in enumerate(("liver", "spleen", "kidney_left")):
        m = np.zeros(SHAPE, bool)
        m[40 + 60 * n : 90 + 60 * n, 80:160, 30:120] = True
        masks[name] = m
    ws.masks.write_label_set(str(ls_id), masks, SHAPE)
    attach_real_case(ws.catalog, scan_id, ls_id, path, SHAPE, affine, tuple(masks))
    return scan_id


def fill_queue(ws: Workspace, first_scan: str) -> int:
    ls = ws.catalog.label_sets()[["scan_id", "id"]]
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for scan_id, ls_id in ls.itertuples(index=False):
        for name in ("liver", "spleen", "kidney_left"):
            rows.append(
                {
                    "scan_id": scan_id,
                    "class_name": name,
                    "run_id": "run-bench",
                    "label_set_id": ls_id,
                    "score": 2.0 if scan_id == first_scan and name == "liver" else float(rng.random()),
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
#: Page-side instrumentation: remembers the time of the last key press / pointer press and the first
#: time afterwards that the slice image's src differs from the one before.
INSTRUMENT = """
const slice = () => [
  ...document.querySelectorAll('[data-testid="stImage"] img, [data-testid="stImageContainer"] img')
].find(i => i.naturalWidth >= 320 || i.width >= 320);
window.__wb = {t0: 0, t1: 0, src: (slice() || {}).src};
const start = () => {
  window.__wb.t0 = performance.now();
  window.__wb.t1 = 0;
  window.__wb.src = (slice() || {}).src;
};
document.addEventListener('keydown', start, true);
document.addEventListener('pointerdown', start, true);
new MutationObserver(() => {
  const i = slice();
  if (window.__wb.t0 && !window.__wb.t1 && i && i.src !== window.__wb.src) window.__wb.t1 = performance.now();
}).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
return true;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}").get("value")


def _wait(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.005) -> Any:
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


def browser_timings(root: Path, repeats: int, log: Path) -> list[tuple[str, float, float]]:
    """Median browser latencies of the Review viewer (see the module docstring); [] without Chromium."""
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
    with _process(app, env), _process([driver, f"--port={wd_port}"]):
        _wait(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok", 120, "app")
        _wait(lambda: _http("GET", f"{base}/status", timeout=2)["ready"], 30, "chromedriver")
        options = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        caps = {"goog:chromeOptions": {"binary": chromium, "args": [*options, "--window-size=1400,1400"]}}
        session = _http("POST", f"{base}/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        wd = f"{base}/session/{session}"

        def js(script: str) -> Any:
            return _http("POST", f"{wd}/execute/sync", {"script": script, "args": []})

        def element(script: str) -> str:
            return str(_wait(lambda: js(script), 120, script)[ELEMENT])

        def timed(action: Callable[[], None]) -> tuple[float, float, float, float]:
            """Run ``action`` (a key press or a click); returns seconds (press -> new slice src, press ->
            fragment start on the server, fragment render, fragment end -> new src). Then waits for the
            app to settle (no script running) so presses do not pile up."""
            lines = log.read_text().count("\n") if log.exists() else 0
            action()
            page = _wait(
                lambda: js(
                    "const w = window.__wb, o = performance.timeOrigin; return w.t1 && "
                    "[w.t1 - w.t0, (o + w.t0) / 1000, (o + w.t1) / 1000];"
                ),
                60,
                "new slice",
                poll=0.05,  # the time is taken inside the page; polling slower only spares the CPU
            )
            _wait(lambda: (log.read_text().count("\n") if log.exists() else 0) > lines, 60, "render log")
            _wait(
                lambda: js("return !document.querySelector('[data-testid=\"stStatusWidget\"] button');"),
                60,
                "idle app",
                poll=0.05,
            )
            time.sleep(0.3)
            _, render_s, start = log.read_text().splitlines()[lines].split()
            pressed, shown = float(page[1]), float(page[2])
            return (
                float(page[0]) / 1000.0,
                float(start) - pressed,
                float(render_s),
                shown - (float(start) + float(render_s)),
            )

        try:
            _http("POST", f"{wd}/url", {"url": f"{url}/review"}, timeout=180)
            _wait(
                lambda: js(INSTRUMENT.split("window.__wb")[0] + "return !!slice() && slice().complete;"),
                180,
                "the slice image",
            )
            js(INSTRUMENT)
            # the Slice slider is a react-aria group around a visually hidden <input type=range>
            focus = 'document.querySelector(\'input[type="range"][aria-label="Slice"]\').focus();'
            _wait(
                lambda: js(f"{focus} return document.activeElement.getAttribute('aria-label') === 'Slice';"),
                120,
                "the Slice slider",
            )
            keys = {
                "type": "key",
                "id": "keyboard",
                "actions": [{"type": "keyDown", "value": "\ue014"}, {"type": "keyUp", "value": "\ue014"}],
            }

            def arrow() -> None:  # the right arrow key, to the focused slider
                js(focus)
                _http("POST", f"{wd}/actions", {"actions": [keys]})

            timed(arrow)  # warm-up
            slices = [timed(arrow) for _ in range(repeats)]
            views = []
            for n in range(repeats + 1):  # the first click (coronal never shown yet) is a warm-up
                target = "coronal" if n % 2 == 0 else "axial"
                radio = element(
                    "return [...document.querySelectorAll('[data-testid=\"stRadio\"] label')]"
                    f".find(l => l.innerText.trim() === '{target}');"
                )
                t = timed(functools.partial(_http, "POST", f"{wd}/element/{radio}/click", {}))
                views += [t] if n else []
        finally:
            _http("DELETE", wd)
    rows = []
    for what, times in (("slice change (arrow key)", slices), ("view change (click)", views)):
        total, to_server, render, back = (statistics.median(t) for t in zip(*times))
        rows += [
            (f"viewer in browser: {what}", total, VIEWER_TARGET_S),
            ("  press -> fragment starts on the server", to_server, VIEWER_TARGET_S),
            ("  fragment render, server side", render, VIEWER_TARGET_S),
            ("  fragment end -> new slice src in the page", back, VIEWER_TARGET_S),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser-repeats", type=int, default=15)
    parser.add_argument("--no-browser", action="store_true", help="skip the real-browser rows")
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        t = time.perf_counter()
        build_synthetic_catalog(ws.catalog, args.scans)
        scan_id = add_real_case(ws, Path(tmp))
        n_items = fill_queue(ws, scan_id)
        print(f"built {args.scans} scans, {n_items} queue items in {time.perf_counter() - t:.1f} s")
        os.environ["WORKBENCH_HOME"] = str(ws.root)
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["reviewer"] = "bench"
        at.run()
        results = []
        for page in ("overview", "long_tail", "review", "export"):
            at.switch_page(f"app_pages/{page}.py").run()  # warm-up (imports, volume cache)
            assert not at.exception, [e.value for e in at.exception]
            s = median_s(lambda: at.run(), args.repeats)
            results.append((f"page render: {page}", s, PAGE_TARGET_S))
        at.switch_page("app_pages/review.py").run()
        key = f"v_slice_{scan_id}_axial"
        positions = iter(np.linspace(5, SHAPE[2] - 5, 1000).astype(int).tolist())
        s = median_s(lambda: at.slider(key=key).set_value(next(positions)).run(), args.repeats)
        results.append(("viewer: slice change (page rerun)", s, VIEWER_TARGET_S))
        ls_key = next(str(m.key) for m in at.multiselect if str(m.key).startswith("v_overlays_"))
        choices = iter([["spleen"], ["liver"], ["kidney_left"], ["liver", "spleen"]] * 50)
        s = median_s(lambda: at.multiselect(key=ls_key).set_value(next(choices)).run(), args.repeats)
        results.append(("viewer: class change (page rerun)", s, VIEWER_TARGET_S))
        assert not at.exception, [e.value for e in at.exception]

        from harmonize.readers import read_volume

        dv = app_data.to_display(read_volume(str(Path(tmp) / "ct.nii.gz")))
        mask = np.zeros(dv.array.shape, bool)
        mask[50:100, 50:100, 40:80] = True
        s = median_s(lambda: app_data.slice_image(dv, "axial", 60, 400, 40, {"liver": mask}), 20)
        results.append(("slice_image alone (256x256 axial + overlay)", s, VIEWER_TARGET_S))
        if not args.no_browser:
            results += browser_timings(ws.root, args.browser_repeats, Path(tmp) / "timing.log")
    for what, s, target in results:
        print(f"{what:48s} {s * 1000:8.1f} ms  ({s / target:.2f}x of the {target * 1000:.0f} ms target)")


if __name__ == "__main__":
    main()
