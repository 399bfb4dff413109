"""App responsiveness at 10,000 scans: every page < 1 s, a slice or class change in the viewer < 0.2 s.

Builds the 10,000-scan catalog of ``bench_catalog.build`` (32 classes, 20 sources), gives one scan a real
CT (a 256 x 256 x 160 int16 NIfTI) with masks in the mask store, and fills the review queue with 30,000
uncertainty rows (3 classes per scan; that scan ranks first). Then, through ``streamlit.testing.v1.AppTest``
(the whole page script, as a browser rerun would run it), times as medians of repeated reruns:

* each page render (Overview, Long tail, Review, Export), after a first warm-up render;
* in the Review viewer: moving the slice slider, and changing the overlay class;
* the pure slice rendering (``app_data.slice_image``) alone.

    python benchmarks/bench_app.py [--scans 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_catalog import build

from storage.workspace import Workspace
from workbench import app_data

PAGE_TARGET_S = 1.0
VIEWER_TARGET_S = 0.2
APP = str(Path(__file__).resolve().parents[1] / "workbench" / "app.py")
SHAPE = (256, 256, 160)


def add_real_case(ws: Workspace, folder: Path) -> str:
    """Give the first scan a real CT file and masks; returns its scan id."""
    scan_id, ls_id = ws.catalog.query(
        "SELECT s.id, l.id AS ls FROM scan s JOIN label_set l ON l.scan_id = s.id ORDER BY s.id LIMIT 1"
    ).iloc[0]
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
    with ws.catalog.transaction() as con:
        con.execute(
            "UPDATE scan SET image_path = ?, shape = ?::INTEGER[3], affine = ?::DOUBLE[16] WHERE id = ?",
            [str(path), list(SHAPE), list(affine.ravel()), scan_id],
        )
        con.execute(
            "UPDATE class_coverage SET state = 'annotated_present' WHERE label_set_id = ? AND class_name IN "
            "('liver', 'spleen', 'kidney_left')",
            [ls_id],
        )
    return str(scan_id)


def fill_queue(ws: Workspace, first_scan: str) -> int:
    ls = ws.catalog.query("SELECT scan_id, id FROM label_set")
    rng = np.random.default_rng(1)
    rows = {
        "scan_id": [],
        "class_name": [],
        "run_id": [],
        "label_set_id": [],
        "score": [],
        "signals": [],
        "reasons": [],
    }
    for scan_id, ls_id in ls.itertuples(index=False):
        for name in ("liver", "spleen", "kidney_left"):
            rows["scan_id"].append(scan_id)
            rows["class_name"].append(name)
            rows["run_id"].append("run-bench")
            rows["label_set_id"].append(ls_id)
            rows["score"].append(2.0 if scan_id == first_scan and name == "liver" else float(rng.random()))
            rows["signals"].append(json.dumps({"entropy": 0.1}))
            rows["reasons"].append(["high_entropy"] if rng.random() < 0.5 else ["volume_outlier"])
    with ws.catalog.transaction() as con:
        con.register("u_in", pa.table(rows))
        con.execute("INSERT INTO uncertainty SELECT * FROM u_in")
    return len(rows["score"])


def median_s(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        t = time.perf_counter()
        build(ws.catalog, args.scans)
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
        ls_key = next(m.key for m in at.multiselect if str(m.key).startswith("v_overlays_"))
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
    for what, s, target in results:
        print(f"{what:48s} {s * 1000:8.1f} ms  ({s / target:.2f}x of the {target * 1000:.0f} ms target)")


if __name__ == "__main__":
    main()
