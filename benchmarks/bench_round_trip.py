"""No-op 3D Slicer / ITK-SNAP round trips: every class bit for bit, and what the old import lost.

For every scan of a demo workspace (phantoms in the native conventions of nine sources: LPS, IPL, LAS,
LPI and RAS grids) and, when ``../shared/fixtures`` is present, the real TotalSegmentator v1/v2 tool outputs
and the real AMOS22 label map (on a blank CT of its own LAS grid): export the case for editing
(``workbench.review.export_case_for_slicer``), then import every class back from its layer file UNCHANGED
(``workbench.review.import_correction``). Printed per scan: its voxel order, the classes, the label-map
layers the export needed, the voxels the old import rule (a class = the voxels of its own value) lost and
in how many classes, the classes the import now reads differently (must be 0), the label sets the no-op
import wrote (must be 0), and the export's time.

    python benchmarks/bench_round_trip.py                 # ~1 min on 2 CPU cores
    python benchmarks/bench_round_trip.py --cases 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from harmonize.taxonomy import class_by_name
from storage.schema import BASES
from storage.workspace import Workspace
from workbench import review
from workbench.demo import build_demo
from workbench.ingest import ingest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def real_workspace(root: Path) -> Workspace | None:
    """The real TotalSegmentator tool outputs and the AMOS22 label map, ingested; None without fixtures."""
    if not FIXTURES.exists():
        return None
    ws = Workspace.open(root / "ws")
    ts = FIXTURES / "totalsegmentator"
    for source, ct, seg in (
        ("totalsegmentator_v2", "example_ct_sm.nii.gz", "example_seg.nii.gz"),
        ("totalsegmentator_v1", "example_ct.nii.gz", "example_seg_v1.nii.gz"),
    ):
        _link(ts / ct, root / source / "example" / "ct.nii.gz")
        _link(ts / seg, root / source / "example" / "segmentations.nii.gz")
        ingest(ws, source, root / source, progress=False)
    label = FIXTURES / "amos" / "amos_0013_label.nii.gz"
    img = nib.load(label)
    ct_path = root / "amos" / "imagesTr" / "amos_0013.nii.gz"
    ct_path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.full(img.shape, -1000, np.int16), img.affine), ct_path)
    _link(label, root / "amos" / "labelsTr" / "amos_0013.nii.gz")
    ingest(ws, "amos22", root / "amos", progress=False)
    return ws


def round_trip(ws: Workspace, scan_id: str, out: Path) -> dict[str, object]:
    """One scan's no-op round trip; returns the printed figures."""
    rows = ws.catalog.training_rows(BASES, scan_ids=[scan_id])
    rows = rows[rows["state"] == "annotated_present"]
    truth = {str(r.class_name): ws.masks.read(str(r.mask_key), str(r.class_name)) for r in rows.itertuples()}
    t0 = time.perf_counter()
    files = review.export_case_for_slicer(ws, scan_id, out)
    seconds = time.perf_counter() - t0
    layers = {f: c for f, c in json.loads(files["labels.json"].read_text())["layers"].items() if c}
    first = np.asarray(nib.load(files["labels.nii.gz"]).dataobj)
    before = len(ws.catalog.label_sets())
    old_lost = old_classes = differ = 0
    for name, mask in truth.items():
        lost = int(mask.sum()) - int((first == class_by_name(name).index).sum())
        if lost and name in layers.get("labels.nii.gz", []):
            old_lost, old_classes = old_lost + lost, old_classes + 1
        layer = next(files[f] for f, c in layers.items() if name in c)
        corr = review.import_correction(ws, scan_id, name, layer, "bench")
        got = review.label_values_to_mask(layer, np.asarray(nib.load(layer).dataobj), name, label_map=True)
        differ += int(corr.changed or not np.array_equal(got, mask))
    return {
        "scan": scan_id,
        "axcodes": str(review.scan_row(ws, scan_id)["axcodes"]),
        "classes": len(truth),
        "layers": len(layers),
        "old_lost_voxels": old_lost,
        "old_lost_classes": old_classes,
        "differ_now": differ,
        "new_label_sets": len(ws.catalog.label_sets()) - before,
        "export_s": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=1, help="demo cases per source")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = Workspace.open(root / "demo")
        build_demo(demo, cases_per_source=args.cases, progress=False)
        workspaces = [demo]
        real = real_workspace(root / "real")
        if real is not None:
            workspaces.append(real)
        results = []
        for ws in workspaces:
            for scan_id in ws.catalog.scan_ids():
                results.append(round_trip(ws, scan_id, root / "out" / scan_id.replace(":", "_")))
    cols = list(results[0])
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    total = {c: sum(int(r[c]) for r in results) for c in ("classes", "old_lost_voxels", "differ_now")}
    print(
        f"{len(results)} scans, {total['classes']} classes: the old import lost {total['old_lost_voxels']} "
        f"voxels; now {total['differ_now']} classes differ and "
        f"{sum(int(r['new_label_sets']) for r in results)} label sets were written"
    )


if __name__ == "__main__":
    main()
