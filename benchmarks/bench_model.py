"""Universal Model speed: forward time per 96^3 window, train-step time, dynamic-head overhead.

For each backbone (swinunetr, unet3d, small_unet), measured in one run on one device:

* forward time of the full model on one [1, 1, 96, 96, 96] window (eval, no grad), 32 classes;
* forward time of the bare backbone on the same window;
* overhead = full / bare (the GAP, controller, precls conv and 32 dynamic heads; target <= 1.15x), and
  their absolute cost, full - bare (the same few tenths of a second for every backbone on a CPU: the 32
  heads are about 3.9 G multiply-adds per 96^3 window whatever the backbone);
* one training step (forward, partial-label loss, backward, AdamW step) on one window.

``--release-parity``: for both release backbones, a release-keyed file with seeded weights from the
shared key layouts (``../shared/fixtures/universal_model``, the test suite's builder) on one 96^3 window:
the largest logit difference between our model and the reference reading of the original forward that
``tests/workbench/model/test_checkpoint.py`` holds, and for Swin UNETR that of MONAI 1.x's patch-merging
order on the same weights (voxels that change at the 0.5 threshold too).

Usage:
    python benchmarks/bench_model.py                  # CPU, all backbones
    python benchmarks/bench_model.py --release-parity
    python benchmarks/bench_model.py --device cuda    # the same on a GPU
    python benchmarks/bench_model.py --backbones small_unet --repeats 5 --side 64
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from workbench.model.loss import partial_label_loss
from workbench.model.network import UniversalModel


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def bench(backbone: str, device: str, side: int, repeats: int, train_step: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = UniversalModel(backbone, n_classes=32).to(device)
    x = torch.rand(1, 1, side, side, side, device=device)
    model.eval()
    with torch.no_grad():
        full = _time(lambda: model(x), device, repeats)
        bare = _time(lambda: model.backbone(x), device, repeats)
    out = {"forward_s": full, "backbone_s": bare, "overhead": full / bare}
    if train_step:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = (torch.rand(1, 32, side, side, side, device=device) > 0.5).float()
        annotated = torch.ones(1, 32, device=device)

        def step() -> None:
            loss = partial_label_loss(model(x), target, annotated)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out["train_step_s"] = _time(step, device, max(1, repeats // 2))
    return out


def release_parity(side: int = 96) -> list[str]:
    """Lines: our logits vs the original forward's, per release backbone (module docstring)."""
    import json
    import sys
    import tempfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(repo / "tests" / "workbench"), str(repo / "tests" / "workbench" / "model")]
    import conftest as fixtures  # the suite's release-file builder
    import test_checkpoint as reference  # the suite's reading of the original forward

    from workbench.model.registry import read_model_file

    folder = repo.parent / "shared" / "fixtures" / "universal_model"
    emb = torch.load(folder / "txt_encoding.pth", map_location="cpu", weights_only=True)
    lines = []
    for backbone in ("unet", "swinunetr"):
        layout = json.loads((folder / f"universal_model_{backbone}_state_dict.json").read_text())
        path = Path(tempfile.gettempdir()) / f"bench_release_{backbone}.pth"
        torch.save({"net": fixtures._seeded_release_state(layout, emb, 12)}, path)
        mf = read_model_file(path)
        sd = mf.model.state_dict()
        x = torch.rand((1, 1, side, side, side), generator=torch.Generator().manual_seed(3))
        ref_backbone = reference._ref_unet if backbone == "unet" else reference._ref_swin
        with torch.no_grad():
            ref = reference._ref_heads(sd, *ref_backbone(x, sd))
            line = (
                f"{backbone}: max |ours - original| = {float((mf.model(x) - ref).abs().max()):.2e} "
                f"(logits up to {float(ref.abs().max()):.2f}, {side}^3 window)"
            )
            if backbone == "swinunetr":
                monai_order = UniversalModel("swinunetr", n_classes=32, swin_merging="monai")
                monai_order.load_state_dict(sd)
                logits = monai_order.eval()(x)
                flips = int(((logits >= 0) != (ref >= 0)).sum())
                line += (
                    f"; MONAI 1.x merging order: {float((logits - ref).abs().max()):.3g}, "
                    f"{flips} voxels change at the 0.5 threshold"
                )
        lines.append(line)
        path.unlink()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbones", nargs="+", default=["swinunetr", "unet3d", "small_unet"])
    parser.add_argument("--side", type=int, default=96, help="window side in voxels (96 as in the paper)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-train", action="store_true", help="skip the train-step timing")
    parser.add_argument("--release-parity", action="store_true", help="our logits vs the original forward")
    args = parser.parse_args()
    if args.release_parity:
        for line in release_parity(args.side):
            print(line)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"window {args.side}^3, 32 classes, median of {args.repeats}"
    )
    print(
        f"{'backbone':<11} {'forward s':>10} {'backbone s':>11} {'heads s':>8} {'head ovh':>9} "
        f"{'train step s':>13}"
    )
    for backbone in args.backbones:
        r = bench(backbone, args.device, args.side, args.repeats, not args.no_train)
        train_s = f"{r['train_step_s']:13.3f}" if "train_step_s" in r else f"{'-':>13}"
        print(
            f"{backbone:<11} {r['forward_s']:10.3f} {r['backbone_s']:11.3f} "
            f"{r['forward_s'] - r['backbone_s']:8.3f} {r['overhead']:8.3f}x {train_s}",
            flush=True,
        )


if __name__ == "__main__":
    main()
