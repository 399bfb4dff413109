"""Multi-process training through torchrun (DDP): ``torchrun ... -m workbench.model.train_ddp``.

Example, two processes on one machine (gloo on CPU, NCCL when every rank has a GPU):

    torchrun --nproc_per_node 2 -m workbench.model.train_ddp --spec run.json

Across machines use torchrun's ``--nnodes``/``--rdzv-endpoint`` as usual; every node needs the spec's files.

The spec is a JSON file:

    {
      "out_dir": "runs/r1",
      "vocabulary": "vocab.json",           # TextVocabulary.to_bytes() written to a file
      "config": {...},                      # TrainConfig.to_dict(); missing keys take defaults
      "resume": true,
      "init": "release_unet.pth",           # optional: fine-tune this model file (release or checkpoint)
      "cases": [{"image": "ct.nii.gz", "masks": {"liver": "liver.npy"}, "annotated": ["liver", "spleen"],
                 "case_id": "c1"}, ...]
    }

Mask files are ``.npy`` or NIfTI on the CT's grid; relative paths are relative to the spec file. With
``init`` the run starts from that model (``workbench.model.registry.read_model_file``) and keeps its
architecture and vocabulary (``vocabulary`` may then be left out; given, it must be the model's). Each rank
writes ``out_dir/final_rank{r}.json`` with its step count and a sha256 of its final parameters, so a run
can be checked for ranks that drifted apart.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harmonize.errors import HarmonizeError
from workbench.model.text import TextVocabulary
from workbench.model.train import TrainCase, TrainConfig, parameter_digest, train


def _load_mask(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]
    except Exception as exc:
        raise HarmonizeError(path, f"cannot be read as a mask (.npy or NIfTI): {exc}") from exc


def cases_from_spec(spec: dict[str, Any], base: Path) -> list[TrainCase]:
    """Build ``TrainCase`` objects from the spec's ``cases`` list (paths relative to ``base``)."""
    cases = []
    for i, c in enumerate(spec["cases"]):
        masks = {name: _load_mask(base / p) for name, p in c.get("masks", {}).items()}
        cases.append(TrainCase(base / c["image"], masks, list(c["annotated"]), c.get("case_id", f"case{i}")))
    return cases


def _start(
    spec: dict[str, Any], base: Path, config: TrainConfig
) -> tuple[TextVocabulary, TrainConfig, dict[str, torch.Tensor] | None]:
    """The vocabulary, config and initial weights of a spec: fresh weights, or its ``init`` model's."""
    given = (
        TextVocabulary.from_bytes((base / spec["vocabulary"]).read_bytes()) if "vocabulary" in spec else None
    )
    if not spec.get("init"):
        if given is None:
            raise HarmonizeError(base, "the spec names neither a vocabulary nor an init model")
        return given, config, None
    from dataclasses import replace

    from workbench.model.checkpoint import check_vocabulary
    from workbench.model.registry import ResolvedModel, read_model_file
    from workbench.model.train import config_for_model

    path = base / spec["init"]
    model_file = read_model_file(path)
    if given is not None:
        check_vocabulary(path, model_file.vocabulary, given)
    record = ResolvedModel(model_file, path.name, False).init_record()
    config = config_for_model(replace(config, init=record), model_file.model)
    return model_file.vocabulary, config, model_file.model.state_dict()


def run(spec_path: str | Path) -> dict[str, Any]:
    """Train from a spec in this process (the process group must already be initialised, or world 1)."""
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text())
    base = spec_path.parent
    config = TrainConfig.from_dict(spec.get("config", {}))
    vocabulary, config, init_state = _start(spec, base, config)
    out_dir = base / spec["out_dir"]
    result = train(
        cases_from_spec(spec, base),
        config,
        out_dir,
        vocabulary=vocabulary,
        resume=bool(spec.get("resume", True)),
        progress=bool(spec.get("progress", True)),
        init_state=init_state,
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    final = {
        "rank": rank,
        "world_size": world,
        "step": result.step,
        "params_sha256": parameter_digest(result.model),
    }
    (out_dir / f"final_rank{rank}.json").write_text(json.dumps(final))
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for torchrun: initialise the process group from the environment, train, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON training spec (see module docstring)")
    parser.add_argument("--backend", default=None, help="gloo (CPU) or nccl; default by device")
    args = parser.parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    try:
        run(args.spec)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
