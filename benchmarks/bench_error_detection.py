"""Error detection of the review queue on phantoms with known truth.

Setup (all synthetic, seeded):

* a small Universal Model (small_unet, 6 classes: spleen, both kidneys, liver, stomach, liver tumour)
  trained on 8 phantoms at 6 mm with ``workbench.model.train`` (cached in ``--cache``; a re-run resumes
  or reuses it);
* a catalog of annotated scans for the plausibility statistics: BTCV-style phantoms (organs) and
  LiTS-style phantoms (liver + tumours), ingested from their native files;
* target scans written as MSD Task10 colon (which annotates none of the 6 classes), pseudo-labelled by
  ``workbench.pseudolabel`` with uncertainty; on a share of them one realistic fault is injected into the
  final masks (the ``on_masks`` hook, after post-processing, so nothing repairs it): left/right swap,
  missing organ, leak into a neighbour, spurious fragment, shrunken organ, tumour outside its organ.

Items are scan x class for the 5 organs, plus the liver tumour items that carry a fault (the small model
does not find phantom tumours, and natural tumour misses are out of this benchmark's scope). An item is
FAULTY when a fault was injected into it or when its pseudo-label is grossly wrong by itself (Dice with
the truth < 0.5). The queue (``workbench.review.rank``) is compared with the entropy-only score and with
random order by the sensitivity and precision of its top-k.

Usage:
    python benchmarks/bench_error_detection.py              # ~10-20 min on 2 CPU cores (first run trains)
    python benchmarks/bench_error_detection.py --targets 16 --steps 200
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

NAMES = ("spleen", "kidney_right", "kidney_left", "liver", "stomach", "liver_tumor")
ORGANS = ("spleen", "kidney_right", "kidney_left", "liver", "stomach")
SHAPE, SPACING = (64, 64, 48), (4.5, 4.5, 4.0)
FAULTS = ("lr_swap", "missing", "leak", "fragment", "shrunken", "tumour_outside")
NEIGHBOUR = {
    "spleen": "stomach",
    "stomach": "spleen",
    "liver": "kidney_right",
    "kidney_right": "liver",
    "kidney_left": "spleen",
}


def train_or_load(cache: Path, steps: int) -> Path:
    """The benchmark model's checkpoint, trained (or resumed) to ``steps`` steps in ``cache``."""
    import torch

    from harmonize.phantoms import make_phantom
    from workbench.model.text import TextVocabulary
    from workbench.model.train import CHECKPOINT_NAME, TrainCase, TrainConfig, train
    from workbench.model.transforms import PipelineConfig

    ckpt = cache / CHECKPOINT_NAME
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state"]
        if int(state["step"]) >= steps:
            return ckpt
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    vocab = TextVocabulary(
        NAMES, NAMES, "V1", "bench-random-embeddings(seed=0)", "none", rng.standard_normal((len(NAMES), 512))
    )
    cases = []
    for s in range(8):
        p = make_phantom(500 + s, shape=SHAPE, spacing=SPACING)
        cases.append(
            TrainCase(p.ct, {k: v for k, v in p.masks.items() if k in NAMES}, list(NAMES), f"train{s}")
        )
    pipe = PipelineConfig(
        spacing_mm=(6.0, 6.0, 6.0), patch=(32, 32, 32), num_samples=2, ratios=(1.0, 3.0, 1.0)
    )
    cfg = TrainConfig(
        pipeline=pipe,
        epochs=10000,
        max_steps=steps,
        checkpoint_every=25,
        lr=3e-3,
        small_features=(8, 16, 32, 64, 128, 16),
        seed=0,
    )
    train(cases, cfg, cache, vocabulary=vocab, progress=True, resume=True)
    return ckpt


def _blob(shape: tuple[int, int, int], center: np.ndarray, radius_vox: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return d2 <= radius_vox**2


def inject(fault: str, masks: dict, rng: np.random.Generator, truth: dict) -> tuple[dict, list[str]]:  # type: ignore[type-arg]
    """Apply one fault to the final masks (class -> CroppedMask); returns the new masks and the classes
    made faulty."""
    from harmonize.masks import CroppedMask

    out = dict(masks)
    shape = next(iter(masks.values())).shape
    present = [n for n in ORGANS if n in out and not out[n].is_empty]
    if fault == "lr_swap":
        out["kidney_left"], out["kidney_right"] = out["kidney_right"], out["kidney_left"]
        return out, ["kidney_left", "kidney_right"]
    name = str(rng.choice(present))
    m = out[name].full()
    if fault == "missing":
        out[name] = CroppedMask.empty(shape)
    elif fault == "leak":
        other = truth[NEIGHBOUR[name]]
        grown = ndimage.binary_dilation(m, iterations=4)
        out[name] = CroppedMask.from_full(
            m | (other & grown) | ndimage.binary_dilation(m & ~other, iterations=2)
        )
    elif fault == "fragment":
        ijk = np.argwhere(m).mean(axis=0)
        center = np.array(shape) - 1 - ijk  # the opposite corner of the body: far from the organ
        center[2] = ijk[2]
        out[name] = CroppedMask.from_full(m | _blob(shape, center, 3.5))
    elif fault == "shrunken":
        target = 0.35 * m.sum()
        while m.sum() > target:
            m = ndimage.binary_erosion(m)
        out[name] = CroppedMask.from_full(m)
    elif fault == "tumour_outside":
        spleen = truth["spleen"]
        center = np.argwhere(spleen).mean(axis=0)
        out["liver_tumor"] = CroppedMask.from_full(_blob(shape, center, 2.5) & spleen)
        return out, ["liver_tumor"]
    return out, [name]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def topk(order: list[bool], k: int) -> tuple[float, float]:
    """(sensitivity, precision) of the first k items of a ranking of faulty flags."""
    n_faulty = sum(order)
    hits = sum(order[:k])
    return hits / max(1, n_faulty), hits / max(1, k)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, default=24, help="pseudo-labelled scans")
    parser.add_argument("--references", type=int, default=12, help="annotated BTCV-style scans")
    parser.add_argument("--fault-rate", type=float, default=0.5, help="share of target scans given a fault")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the benchmark model")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "workbench_bench_model"))
    parser.add_argument("--keep", help="keep the workspace in this folder")
    args = parser.parse_args()

    import torch

    from harmonize.phantoms import make_phantom, write_native
    from harmonize.phantoms.native import reorient
    from harmonize.protocols import get_protocol
    from storage.workspace import Workspace
    from workbench.ingest import ingest
    from workbench.pseudolabel import pseudolabel
    from workbench.review import rank

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ckpt = train_or_load(Path(args.cache), args.steps)
    print(f"model: {ckpt} ({time.perf_counter() - t0:.0f} s)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_err_"))
    shutil.rmtree(root, ignore_errors=True)
    for i in range(args.references):
        write_native(
            make_phantom(2000 + i, shape=SHAPE, spacing=SPACING),
            get_protocol("btcv"),
            root / "btcv",
            f"c{i:03d}",
        )
    for i in range(4):
        write_native(
            make_phantom(2100 + i, shape=SHAPE, spacing=SPACING),
            get_protocol("lits"),
            root / "lits",
            f"c{i:03d}",
        )
    rng = np.random.default_rng(7)
    truth: dict[str, dict[str, np.ndarray]] = {}
    plan: dict[str, str | None] = {}
    for i in range(args.targets):
        missing = ("kidney_left",) if i % 11 == 10 else ()  # a true nephrectomy: absent is correct
        p = make_phantom(3000 + i, shape=SHAPE, spacing=SPACING, missing=missing)
        case = write_native(p, get_protocol("msd_colon"), root / "msd_colon", f"colon_{i:03d}")
        sid = f"msd_colon:colon_{i:03d}"
        none = np.zeros(p.ct.shape, bool)
        truth[sid] = {n: reorient(p.masks.get(n, none), p.ct.affine, case.axcodes)[0] for n in NAMES}
        plan[sid] = str(FAULTS[i % len(FAULTS)]) if rng.random() < args.fault_rate else None
    ws = Workspace.open(root / "ws")
    for source in ("btcv", "lits", "msd_colon"):
        ingest(ws, source, root / source, progress=False)

    injected: dict[tuple[str, str], str] = {}

    def on_masks(job, masks):  # type: ignore[no-untyped-def]
        fault = plan.get(job.scan_id)
        if fault is None:
            return masks
        new, hit = inject(
            fault, masks, np.random.default_rng(zlib.crc32(job.scan_id.encode())), truth[job.scan_id]
        )
        for c in hit:
            injected[(job.scan_id, c)] = fault
        return new

    t1 = time.perf_counter()
    summary = pseudolabel(
        ws, ckpt, sources=["msd_colon"], low_res_mm=6.0, device="cpu", progress=True, on_masks=on_masks
    )
    print(
        f"pseudo-labelled {len(summary.done)} scans in {time.perf_counter() - t1:.0f} s; "
        f"{len(summary.failed)} failed"
    )
    q = rank(ws, summary.run_id, include_decided=True)
    items = []
    natural_dice = []
    for r in q.to_dict("records"):
        sid, cls = r["scan_id"], r["class_name"]
        key = (sid, cls)
        if cls == "liver_tumor" and key not in injected:
            continue
        ls = r["label_set_id"]
        mask_key = ws.catalog.label_set_mask_key(ls)
        assert mask_key is not None, ls
        pred = (
            ws.masks.read(mask_key, cls)
            if cls in ws.masks.names(mask_key)
            else np.zeros_like(truth[sid][cls])
        )
        d = dice(pred, truth[sid][cls])
        natural = key not in injected and d < 0.5
        if key not in injected:
            natural_dice.append(d)
        items.append(
            {
                "key": key,
                "score": r["score"],
                "entropy": r["signals"].get("entropy") or 0.0,
                "faulty": key in injected or natural,
                "fault": injected.get(key, "natural" if natural else None),
                "reasons": r["summary"],
            }
        )
    n_faulty = sum(i["faulty"] for i in items)
    n_natural = sum(1 for i in items if i["fault"] == "natural")
    print(
        f"\n{len(items)} items, {n_faulty} faulty ({n_natural} natural gross errors), "
        f"items without injected fault: mean Dice {np.mean(natural_dice):.3f}"
    )

    by_queue = [i["faulty"] for i in sorted(items, key=lambda i: -i["score"])]
    by_entropy = [i["faulty"] for i in sorted(items, key=lambda i: -i["entropy"])]
    randoms = []
    for s in range(200):
        perm = np.random.default_rng(s).permutation(len(items))
        randoms.append([items[j]["faulty"] for j in perm])
    flagged = sum(1 for i in items if i["score"] >= 0.3)

    def row(name: str, k: int) -> str:
        sq, pq = topk(by_queue, k)
        se, pe = topk(by_entropy, k)
        rs = np.mean([topk(r, k) for r in randoms], axis=0)
        return (
            f"| {name:<26} | {k:>3} | {sq:.2f} / {pq:.2f} | {se:.2f} / {pe:.2f} | {rs[0]:.2f} / {rs[1]:.2f} |"
        )

    print("\n| top-k | k | queue sens / prec | entropy-only sens / prec | random sens / prec |")
    print("|---|---|---|---|---|")
    print(row("k = faulty items", n_faulty))
    print(row("k = score >= 0.3 (flagged)", flagged))
    k90 = next((k for k in range(1, len(items) + 1) if topk(by_queue, k)[0] >= 0.9), len(items))
    print(row("smallest k with queue sens >= 0.9", k90))

    print("\nper fault type, found in the queue's top-k (k = faulty items):")
    top = {tuple(i["key"]) for i in sorted(items, key=lambda i: -i["score"])[:n_faulty]}
    for fault in (*FAULTS, "natural"):
        f_items = [i for i in items if i["fault"] == fault]
        if f_items:
            found = sum(tuple(i["key"]) in top for i in f_items)
            print(f"  {fault:<15} {found}/{len(f_items)}")
    print("\nhighest-ranked items:")
    for i in sorted(items, key=lambda i: -i["score"])[:8]:
        label = "FAULT " + str(i["fault"]) if i["faulty"] else "clean"
        print(f"  {i['score']:.3f} {label:<22} {i['key'][0]}  {i['reasons']}")
    missed = [i for i in items if i["faulty"] and tuple(i["key"]) not in top]
    for i in missed[:6]:
        print(f"  missed: {i['score']:.3f} {i['fault']:<15} {i['key'][0]}  {i['reasons']}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
