"""Error detection of the review queue on phantoms with known truth, over 3 seeds.

The model (why not a small trained one): the queue has to find the few wrong pseudo-labels among mostly
right ones, as a reviewer meets them behind a good model (the Universal Model, TotalSegmentator: organ
Dice 0.85-0.95). A small CPU model trained for minutes on phantoms gets most items wrong (unfaulted mean
Dice 0.16 in the earlier version of this benchmark: 103 of its 122 items were faulty, so random order
already scored 0.84 / 0.84). So the predictions here are DERIVED FROM THE PHANTOM TRUTH with the errors a
good model makes by itself, through the workbench's real inference path (``workbench.pseudolabel``: its
sliding window, resampling to the scan's grid, threshold, post-processing, uncertainty signals, scores):

* :class:`TruthModel` is a torch module that returns, for the one window that covers a prepared scan, logits
  from the truth's signed distance on that grid (1 voxel inside -> sigmoid 0.82), plus a smooth random
  field that moves each boundary by about a voxel (natural boundary noise: unfaulted Dice about 0.9);
  a class the scan truly lacks (a nephrectomy, a scan without tumour) is everywhere as far from it as the
  grid is wide, the rule the model applies to any voxel far from an organ (until 0.5.0 scipy's distance
  transform of a mask without any background put a spurious probability blob in the grid's corner of
  every absent class);
* natural gross errors, drawn per item: a missed structure (a liver tumour with probability
  :data:`MISS_TUMOUR`, an organ with :data:`MISS_ORGAN`), seen faintly: its probability peaks somewhere in
  :data:`MISS_PEAK`, below the threshold, so it is predicted absent, as a real model misses a small
  tumour; counted APART from the injected faults;
* catalog references for the plausibility statistics: BTCV-style phantoms (organs) and LiTS-style phantoms
  (liver + tumours), ingested from their native files;
* target scans written as MSD Task10 colon (which annotates none of the 6 classes) and pseudo-labelled; on
  a share of them one realistic fault is injected into the final masks (the ``on_masks`` hook, after
  post-processing, so nothing repairs it): left/right swap, missing organ, leak into a neighbour, spurious
  fragment, shrunken organ, tumour outside its organ. The probabilities do not know the fault (the model
  was confident), so entropy alone cannot find it: the plausibility signals have to.

Items are scan x class for the 5 organs and the liver tumour. An item is FAULTY when a fault was injected
into it or when its pseudo-label is grossly wrong by itself (Dice with the truth < 0.5: a natural error).
The queue (``workbench.review.rank``) is compared with the entropy-only score and with random order by the
sensitivity and precision of its top-k; each figure is the mean and standard deviation over 3 seeds (new
phantoms, fault plans and noise per seed). Every 11th target is a true nephrectomy (the left kidney
really absent): a CLEAN item the queue must not take for a missed kidney, from the model's probabilities
and the CT alone (``absent_peak_p``, ``twin_density_match``); the run lists every paired organ predicted
absent with both signals, and the faulty items below the cut with their probability signals.

Usage:
    python benchmarks/bench_error_detection.py              # ~3-6 min on 2 CPU cores
    python benchmarks/bench_error_detection.py --seeds 1 --targets 12
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

NAMES = ("spleen", "kidney_right", "kidney_left", "liver", "stomach", "liver_tumor")
ORGANS = ("spleen", "kidney_right", "kidney_left", "liver", "stomach")
SHAPE, SPACING = (64, 64, 48), (4.5, 4.5, 4.0)
#: The inference grid (isotropic) and the one window that covers a whole prepared scan at it.
INFER_MM, WINDOW = 4.5, (64, 64, 48)
FAULTS = ("lr_swap", "missing", "leak", "fragment", "shrunken", "tumour_outside")
NEIGHBOUR = {
    "spleen": "stomach",
    "stomach": "spleen",
    "liver": "kidney_right",
    "kidney_right": "liver",
    "kidney_left": "spleen",
}
#: Logit per voxel of signed distance to the truth's boundary, and the rms of the boundary noise (voxels).
LOGIT_PER_VOXEL, BOUNDARY_NOISE_VOX = 1.5, 0.6
#: Natural misses per item: a liver tumour / an organ the model sees only faintly (its probability peaks
#: at a value drawn from MISS_PEAK, below the 0.5 threshold: predicted absent), as a real model misses a
#: small structure.
MISS_TUMOUR, MISS_ORGAN, MISS_PEAK = 0.1, 0.02, (0.1, 0.45)
#: Signals printed for the faulty items the queue ranks below the cut.
PROBES = (
    "present",
    "volume_ml",
    "entropy",
    "near_miss_ml",
    "near_miss_p",
    "absent_peak_p",
    "twin_density_match",
    "volume_z",
    "in_region",
)


class TruthModel:
    """Factory of the truth-derived torch module (see the module docstring); torch is imported lazily."""

    @staticmethod
    def module(table: dict[str, Any]) -> Any:
        """A module mapping a prepared scan's window to its stored logits (looked up by its bytes)."""
        import torch

        class Lookup(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = []
                for b in range(x.shape[0]):
                    key = _key(x[b : b + 1])
                    if key not in table:
                        raise KeyError("a window the truth model was not prepared for")
                    out.append(table[key])
                return torch.stack(out)

        return Lookup().eval()


def _key(window: Any) -> str:
    return hashlib.sha1(window.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def truth_logits(
    truth: dict[str, np.ndarray], volume: Any, rng: np.random.Generator
) -> tuple[Any, Any, list[tuple[str, str]]]:
    """The prepared image (as inference prepares it), the logits a good model gives for it, and the
    natural misses drawn.

    Args:
        truth: class -> truth mask on the scan's grid.
        volume: the scan's ``Volume`` (as the pseudo-label job reads it).
        rng: the draws of noise and misses.

    Returns:
        ``(image [1, 1, *WINDOW], logits [C, *WINDOW] float32, [(class, "missed")...])``.
    """
    import torch

    from workbench.model.transforms import PipelineConfig, preprocess_transforms

    pipe = PipelineConfig(spacing_mm=(INFER_MM,) * 3, patch=WINDOW)
    label = np.stack([truth[n] for n in NAMES]).astype(np.float32)
    item = {
        "image": np.asarray(volume.array, dtype=np.float32)[None],
        "label": label,
        "affine": volume.affine,
    }
    pre = preprocess_transforms(pipe, with_label=True)(item)
    image = torch.as_tensor(pre["image"]).as_subclass(torch.Tensor)[None].float()
    lab = np.asarray(pre["label"]) > 0.5
    assert tuple(image.shape[2:]) == WINDOW, f"prepared scan {tuple(image.shape[2:])} exceeds {WINDOW}"
    logits = np.empty(lab.shape, np.float32)
    misses = []
    for c, name in enumerate(NAMES):
        m = lab[c]
        if m.any():
            sd = ndimage.distance_transform_edt(m) - ndimage.distance_transform_edt(~m)
        else:  # truly absent: every voxel is as far from it as the grid is wide (no phantom blob)
            sd = np.full(m.shape, -float(np.linalg.norm(m.shape)))
        field = ndimage.gaussian_filter(rng.standard_normal(m.shape), 2.0)
        field *= BOUNDARY_NOISE_VOX / max(float(field.std()), 1e-6)
        logits[c] = LOGIT_PER_VOXEL * (sd + field)
        p_miss = MISS_TUMOUR if name == "liver_tumor" else MISS_ORGAN
        if m.any() and rng.random() < p_miss:  # seen faintly, then dropped by the 0.5 threshold
            peak = float(rng.uniform(*MISS_PEAK))
            logits[c] -= float(logits[c].max()) - np.log(peak / (1.0 - peak))
            misses.append((name, f"missed (peak probability {peak:.2f})"))
    return image, torch.as_tensor(logits), misses


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


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One seed: build the workspace, pseudo-label its targets with the truth model, rank, score."""
    from harmonize.phantoms import make_phantom, write_native
    from harmonize.phantoms.native import reorient
    from harmonize.protocols import get_protocol
    from harmonize.readers import read_volume
    from storage.workspace import Workspace
    from workbench.ingest import ingest
    from workbench.pseudolabel import pseudolabel
    from workbench.pseudolabel.segmenter import Segmenter
    from workbench.review import rank

    root = Path(args.keep) / f"seed{seed}" if args.keep else Path(tempfile.mkdtemp(prefix="bench_err_"))
    shutil.rmtree(root, ignore_errors=True)
    base = 10_000 * (seed + 1)
    for i in range(args.references):
        p = make_phantom(base + 2000 + i, shape=SHAPE, spacing=SPACING)
        write_native(p, get_protocol("btcv"), root / "btcv", f"c{i:03d}")
    for i in range(4):
        p = make_phantom(base + 2100 + i, shape=SHAPE, spacing=SPACING)
        write_native(p, get_protocol("lits"), root / "lits", f"c{i:03d}")
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, np.ndarray]] = {}
    plan: dict[str, str | None] = {}
    for i in range(args.targets):
        missing = ("kidney_left",) if i % 11 == 10 else ()  # a true nephrectomy: absent is correct
        p = make_phantom(base + 3000 + i, shape=SHAPE, spacing=SPACING, missing=missing)
        case = write_native(p, get_protocol("msd_colon"), root / "msd_colon", f"colon_{i:03d}")
        sid = f"msd_colon:colon_{i:03d}"
        none = np.zeros(p.ct.shape, bool)
        truth[sid] = {n: reorient(p.masks.get(n, none), p.ct.affine, case.axcodes)[0] for n in NAMES}
        plan[sid] = str(FAULTS[int(rng.integers(len(FAULTS)))]) if rng.random() < args.fault_rate else None
    ws = Workspace.open(root / "ws")
    for source in ("btcv", "lits", "msd_colon"):
        ingest(ws, source, root / source, progress=False)

    table: dict[str, Any] = {}
    natural_misses: dict[tuple[str, str], str] = {}
    for sid in truth:
        row = ws.catalog.scan_row(sid)
        assert row is not None, sid
        image, logits, misses = truth_logits(truth[sid], read_volume(row["image_path"]), rng)
        table[_key(image)] = logits
        natural_misses.update({(sid, c): what for c, what in misses})
    seg = Segmenter(
        module=TruthModel.module(table),
        class_names=NAMES,
        spacing_mm=(INFER_MM,) * 3,
        patch=WINDOW,
        sha256=hashlib.sha256(f"truth-model-{seed}".encode()).hexdigest(),
        backbone="truth-derived (benchmark)",
        trained_on={n: {"sources": ["phantom truth"], "scans": 1} for n in NAMES},
    )

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
        ws,
        seg,
        sources=["msd_colon"],
        low_res_mm=INFER_MM,
        device="cpu",
        tta=False,  # the truth model has no second opinion: no test-time augmentation pass
        progress=False,
        on_masks=on_masks,
    )
    seconds = time.perf_counter() - t1
    q = rank(ws, summary.run_id, include_decided=True)
    items = []
    for r in q.to_dict("records"):
        sid, cls = r["scan_id"], r["class_name"]
        key = (sid, cls)
        mask_key = ws.catalog.label_set_mask_key(r["label_set_id"])
        assert mask_key is not None, r["label_set_id"]
        names = ws.masks.names(mask_key)
        pred = ws.masks.read(mask_key, cls) if cls in names else np.zeros_like(truth[sid][cls])
        d = dice(pred, truth[sid][cls])
        natural = key not in injected and d < 0.5
        items.append(
            {
                "key": key,
                "score": r["score"],
                "entropy": r["signals"].get("entropy") or 0.0,
                "dice": d,
                "faulty": key in injected or natural,
                "fault": injected.get(key, "natural" if natural else None),
                "reasons": r["summary"],
                "signals": r["signals"],
            }
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"items": items, "seconds": seconds, "failed": len(summary.failed), "misses": natural_misses}


def figures(items: list[dict[str, Any]]) -> dict[str, float]:
    """One seed's figures: composition, the queue / entropy / random top-k at k = faulty items, and the
    best sensitivity the queue reaches while its precision stays >= 0.90."""
    n_faulty = sum(i["faulty"] for i in items)
    by_queue = [i["faulty"] for i in sorted(items, key=lambda i: -i["score"])]
    by_entropy = [i["faulty"] for i in sorted(items, key=lambda i: -i["entropy"])]
    randoms = [
        [items[j]["faulty"] for j in np.random.default_rng(s).permutation(len(items))] for s in range(200)
    ]
    sens_at_p90 = max((topk(by_queue, k)[0] for k in range(1, len(items) + 1) if topk(by_queue, k)[1] >= 0.9),
                      default=0.0)  # fmt: skip
    k90 = next((k for k in range(1, len(items) + 1) if topk(by_queue, k)[1] < 0.9), len(items) + 1) - 1
    rand = np.mean([topk(r, n_faulty) for r in randoms], axis=0)
    return {
        "items": len(items),
        "faulty": n_faulty,
        "injected": sum(1 for i in items if i["faulty"] and i["fault"] != "natural"),
        "natural": sum(1 for i in items if i["fault"] == "natural"),
        "faulty_share": n_faulty / max(1, len(items)),
        "unfaulted_dice": float(np.mean([i["dice"] for i in items if i["key"] not in _injected_keys(items)])),
        "queue_at_faulty": topk(by_queue, n_faulty)[0],
        "entropy_at_faulty": topk(by_entropy, n_faulty)[0],
        "random_at_faulty": float(rand[0]),
        "sens_at_p90": sens_at_p90,
        "k_at_p90": float(k90),
        "random_prec": n_faulty / max(1, len(items)),
    }


def _injected_keys(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {i["key"] for i in items if i["faulty"] and i["fault"] != "natural"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="independent repetitions (mean and spread)")
    parser.add_argument("--targets", type=int, default=24, help="pseudo-labelled scans per seed")
    parser.add_argument("--references", type=int, default=12, help="annotated BTCV-style scans")
    parser.add_argument(
        "--fault-rate", type=float, default=0.6, help="share of target scans given one injected fault"
    )
    parser.add_argument("--keep", help="keep the workspaces in this folder")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        out = run_seed(seed, args)
        f = figures(out["items"])
        per_seed.append((out, f))
        print(
            f"seed {seed}: {f['items']} items, {f['faulty']} faulty ({f['faulty_share']:.0%}: "
            f"{f['injected']} injected, {f['natural']} natural gross errors); unfaulted items' mean Dice "
            f"{f['unfaulted_dice']:.3f}; pseudo-labelled in {out['seconds']:.0f} s, {out['failed']} failed"
        )

    def ms(key: str) -> str:
        v = np.array([f[key] for _, f in per_seed], dtype=float)
        return f"{v.mean():.2f} +- {v.std():.2f}"

    by_class: dict[str, list[float]] = {}
    for out, _ in per_seed:
        for i in out["items"]:
            if i["fault"] is None:
                by_class.setdefault(i["key"][1], []).append(i["dice"])
    print(
        "items without any error, mean Dice by class: "
        + ", ".join(f"{c} {np.mean(v):.3f}" for c, v in sorted(by_class.items()))
    )
    print(f"\nover {args.seeds} seeds (mean +- sd), {time.perf_counter() - t0:.0f} s in all:")
    print("| figure | queue | entropy only | random order |")
    print("|---|---|---|---|")
    print(
        f"| sensitivity = precision at k = faulty items | {ms('queue_at_faulty')} "
        f"| {ms('entropy_at_faulty')} | {ms('random_at_faulty')} |"
    )
    print(
        f"| best sensitivity at precision >= 0.90 | {ms('sens_at_p90')} | | precision {ms('random_prec')} |"
    )
    print(f"| faulty share of items | {ms('faulty_share')} | | |")
    print(f"| unfaulted items' mean Dice | {ms('unfaulted_dice')} | | |")

    print("\nper fault type, found in the queue's top-k (k = faulty items), all seeds:")
    found: dict[str, list[int]] = {}
    for out, f in per_seed:
        items = out["items"]
        top = {i["key"] for i in sorted(items, key=lambda i: -i["score"])[: f["faulty"]]}
        for i in items:
            if i["faulty"]:
                found.setdefault(str(i["fault"]), [0, 0])
                found[str(i["fault"])][0] += i["key"] in top
                found[str(i["fault"])][1] += 1
    for fault in (*FAULTS, "natural"):
        if fault in found:
            print(f"  {fault:<15} {found[fault][0]}/{found[fault][1]}")
    print("\nclean items ranked within the top k (k = faulty items), every seed:")
    for seed, (out, f) in enumerate(per_seed):
        for n, i in enumerate(sorted(out["items"], key=lambda i: -i["score"])[: f["faulty"]], start=1):
            if not i["faulty"]:
                print(
                    f"  seed {seed} rank {n:3d} {i['score']:.3f} Dice {i['dice']:.2f} {i['key'][0]}  "
                    f"{i['reasons']}"
                )
    items = per_seed[0][0]["items"]
    n_faulty = per_seed[0][1]["faulty"]
    ranked = sorted(items, key=lambda i: -i["score"])
    print("\nseed 0, around the cut (k = faulty items):")
    for n, i in enumerate(ranked[max(0, n_faulty - 4) : n_faulty + 4], start=max(0, n_faulty - 4) + 1):
        label = "FAULT " + str(i["fault"]) if i["faulty"] else "clean"
        print(f"  {n:3d} {i['score']:.3f} {label:<22} {i['key'][0]}  {i['reasons']}")
    print("\npaired organs predicted absent (true nephrectomies are clean), every seed:")
    for seed, (out, _) in enumerate(per_seed):
        ranked = sorted(out["items"], key=lambda i: -i["score"])
        for n, i in enumerate(ranked, start=1):
            sig = i["signals"]
            if sig.get("present") is False and sig.get("twin_density_match") is not None:
                label = "FAULT " + str(i["fault"]) if i["faulty"] else "clean"
                print(
                    f"  seed {seed} rank {n:3d} {i['score']:.3f} {label:<16} {i['key'][0]} {i['key'][1]}: "
                    f"peak probability {sig.get('absent_peak_p')}, twin density match "
                    f"{sig.get('twin_density_match')}"
                )
    print("\nfaulty items below the cut (k = faulty items), every seed, with their probability signals:")
    for seed, (out, f) in enumerate(per_seed):
        ranked = sorted(out["items"], key=lambda i: -i["score"])
        for i in [i for i in ranked[f["faulty"] :] if i["faulty"]]:
            sig = i["signals"]
            probe = ", ".join(f"{k} {sig.get(k)}" for k in PROBES if sig.get(k) is not None)
            what = out["misses"].get(i["key"], "")
            print(
                f"  seed {seed} {i['score']:.3f} {i['fault']:<9} Dice {i['dice']:.2f} {i['key'][0]} "
                f"{i['key'][1]}  {what}  [{probe}]"
            )


if __name__ == "__main__":
    main()
