"""Training the Universal Model on partially labelled scans, resumable, single process or DDP.

Feed it a sequence of ``TrainCase`` (the lead builds them from the catalog: a CT, the masks of the classes
present and the names of the classes the scan's source annotates) and a ``TextVocabulary``:

    result = train(cases, TrainConfig(backbone="small_unet"), out_dir, vocabulary=vocab,
                   on_round_end=store_record)

Every step draws ``cases_per_step`` scans per process and ``pipeline.num_samples`` patches from each;
the loss is ``partial_label_loss`` (classes the source does not annotate get no gradient). Optimiser:
AdamW (lr 1e-4, weight decay 1e-5 as in the paper; constant learning rate by default, or a cosine decay
over the run's steps with ``lr_schedule="cosine"``, which short CPU runs at high learning rates need to
settle).

Resuming: ``out_dir/last.pt`` (model, optimizer state, step, epoch, config, vocabulary) is written
atomically every ``checkpoint_every`` steps and at each epoch end. ``train(..., resume=True)`` continues
from it. Case order and patch sampling are seeded by (seed, epoch, step, rank), so a killed and resumed run
takes the same steps as an uninterrupted one.

Records: at each epoch end a dict (epoch, step, mean loss, steps, patches, seconds, lr, backbone, world
size) goes to ``on_round_end`` and is appended to ``out_dir/rounds.jsonl``.

DDP: when ``torch.distributed`` is initialised (``workbench.model.train_ddp`` under torchrun), the model is
wrapped in DistributedDataParallel, rank r takes its own cases of each global batch, and only rank 0 writes
checkpoints and records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harmonize.errors import HarmonizeError
from harmonize.volume import Volume
from workbench.model.checkpoint import load_checkpoint, save_checkpoint
from workbench.model.loss import partial_label_loss
from workbench.model.network import FROZEN_BY, SMALL_UNET_FEATURES, UniversalModel, trainable_parameters
from workbench.model.text import TextVocabulary
from workbench.model.transforms import PipelineConfig, augment_transforms, preprocess_transforms

CHECKPOINT_NAME = "last.pt"
RECORDS_NAME = "rounds.jsonl"
LR_SCHEDULES = ("constant", "cosine")
#: Total downsampling of each backbone: patch sides must be multiples of it.
BACKBONE_STRIDE = {"swinunetr": 32, "unet3d": 8, "small_unet": 16}


@dataclass
class TrainCase:
    """One training scan.

    Args:
        image: a NIfTI path or a ``Volume`` (HU, any orientation; its affine is used).
        masks: class name -> bool/0-1 array of the image's shape, for classes present in the scan.
        annotated: names of every class the source annotates (present or absent); others are unknown.
        case_id: a name for messages and records.
    """

    image: str | Path | Volume
    masks: Mapping[str, np.ndarray]
    annotated: Sequence[str]
    case_id: str = ""

    def load_volume(self) -> Volume:
        """The CT as a ``Volume``; a path is read with ``harmonize.readers`` (NIfTI, NRRD or a DICOM
        series folder), whose errors name the file."""
        if isinstance(self.image, Volume):
            return self.image
        from harmonize.readers import read_volume

        return read_volume(Path(self.image), kind="image")

    def restricted_to(self, class_names: Sequence[str]) -> TrainCase:
        """This case with only the classes a model of ``class_names`` has heads for (its other annotated
        classes and their masks are left out, as if the source did not annotate them)."""
        keep = set(class_names)
        return TrainCase(
            self.image,
            {n: m for n, m in self.masks.items() if n in keep},
            [n for n in self.annotated if n in keep],
            self.case_id,
        )

    def to_item(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The pipeline item: image (1,x,y,z) float32 HU, label (C,x,y,z) uint8, annotated (C,), affine."""
        vol = self.load_volume()
        where = str(self.image) if not isinstance(self.image, Volume) else (self.case_id or "<volume>")
        index = {n: i for i, n in enumerate(class_names)}
        label = np.zeros((len(class_names), *vol.shape), dtype=np.uint8)
        annotated = np.zeros(len(class_names), dtype=np.float32)
        for name in self.annotated:
            if name not in index:
                raise HarmonizeError(where, f"annotated class {name!r} is not in the vocabulary")
            annotated[index[name]] = 1.0
        for name, mask in self.masks.items():
            if name not in index:
                raise HarmonizeError(where, f"mask for class {name!r}, which is not in the vocabulary")
            if annotated[index[name]] == 0:
                raise HarmonizeError(where, f"mask for class {name!r}, which the case does not annotate")
            if tuple(mask.shape) != vol.shape:
                raise HarmonizeError(where, f"mask {name!r} has shape {mask.shape}, the CT {vol.shape}")
            label[index[name]] = np.asarray(mask) > 0
        return {
            "image": vol.array.astype(np.float32)[None],
            "label": label,
            "annotated": annotated,
            "affine": vol.affine,
            "case_id": self.case_id,
        }


@dataclass
class TrainConfig:
    """Training settings.

    Args:
        backbone: 'small_unet' (CPU), 'unet3d' or 'swinunetr'.
        pipeline: spacing, patch size, patches per scan, sampling ratios, augmentation.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: passes over the cases (an epoch = ceil(n_cases / (cases_per_step * world_size)) steps).
        max_steps: stop after this many steps in total (across resumes), if set.
        cases_per_step: scans per process per step.
        checkpoint_every: steps between checkpoints (also one at each epoch end and at the last step).
        seed: seeds initial weights, case order and patch sampling.
        small_features: BasicUNet feature sizes for 'small_unet'.
        num_threads: torch CPU threads, if set.
        grad_clip: clip the gradient's global L2 norm to this value, if set (the dynamic heads multiply
            three generated weight matrices, so large learning rates need it).
        lr_schedule: 'constant' (the paper), or 'cosine': step s of T uses
            ``lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * s / T)) / 2)``, T being this run's
            total steps (``max_steps`` or all epochs); it depends only on the step, so a resumed run takes
            the same learning rates.
        min_lr_ratio: the cosine schedule's final learning rate as a fraction of ``lr``.
        swin_merging: Swin UNETR's patch-merging order ('release' / 'monai'; ``UniversalModel``): a
            fine-tuned model keeps the one it came with.
        n_added_classes: how many of the vocabulary's last classes are added ones with a learnable head
            offset (``UniversalModel.add_class``).
        freeze: what stays fixed (:data:`workbench.model.network.FROZEN_BY`: 'none', 'backbone',
            'old_classes'); frozen parameters are left out of the optimiser.
        init: the model this run starts from (``name``, ``sha256``, ``kind``, ``backbone`` and
            ``trained_on``, what it brings from its own training), recorded in the checkpoint's state
            and the run; None for fresh weights.
    """

    backbone: str = "small_unet"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 1
    max_steps: int | None = None
    cases_per_step: int = 1
    checkpoint_every: int = 100
    seed: int = 0
    small_features: tuple[int, ...] = SMALL_UNET_FEATURES
    num_threads: int | None = None
    grad_clip: float | None = None
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.05
    swin_merging: str = "release"
    n_added_classes: int = 0
    freeze: str = "none"
    init: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.freeze not in FROZEN_BY:
            raise ValueError(f"freeze must be one of {tuple(FROZEN_BY)}, got {self.freeze!r}")
        stride = BACKBONE_STRIDE.get("unet3d" if self.backbone == "unet" else self.backbone)
        patch = tuple(int(p) for p in self.pipeline.patch)
        if stride and any(p % stride or p < stride for p in patch):
            raise ValueError(
                f"patch {patch} does not fit the {self.backbone} backbone: every side must be a positive "
                f"multiple of {stride}"
            )
        # The deepest level's normalisation (instance norm; the U-Net's batch statistics of one patch)
        # needs more than one voxel to train on.
        if stride and math.prod(p // stride for p in patch) < 2:
            raise ValueError(
                f"patch {patch} does not fit the {self.backbone} backbone: at 1/{stride} it leaves one "
                f"voxel, which normalisation cannot train on (use {2 * stride} on one side at least)"
            )

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of a run of ``total`` steps."""
        if self.lr_schedule == "constant" or total <= 1:
            return self.lr
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``."""
        d = dict(d)
        p = dict(d.pop("pipeline", {}))
        for key in ("spacing_mm", "patch", "ratios"):
            if key in p:
                p[key] = tuple(p[key])
        if "small_features" in d:
            d["small_features"] = tuple(d["small_features"])
        return cls(pipeline=PipelineConfig(**p), **d)


@dataclass
class TrainResult:
    """What ``train`` returns: the model (unwrapped), steps done in total, epochs finished, the records of
    this call, and the checkpoint path (None on ranks other than 0)."""

    model: UniversalModel
    step: int
    epoch: int
    records: list[dict[str, Any]]
    checkpoint: Path | None


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] % (2**31 - 1))


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers in state-dict order (to compare models across processes)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _CaseCache:
    """Preprocessed items, computed on first use (each process only touches the cases it trains on)."""

    def __init__(
        self, cases: Sequence[TrainCase], class_names: Sequence[str], config: PipelineConfig
    ) -> None:
        self.cases = cases
        self.class_names = class_names
        self.pre = preprocess_transforms(config)
        self.items: dict[int, dict[str, Any]] = {}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i not in self.items:
            self.items[i] = self.pre(self.cases[i].to_item(self.class_names))
        return self.items[i]


def train(
    cases: Sequence[TrainCase],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    vocabulary: TextVocabulary,
    resume: bool = True,
    on_round_end: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[int, float], None] | None = None,
    progress: bool = True,
    init_state: Mapping[str, torch.Tensor] | None = None,
    trained_on: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume training) a Universal Model.

    Args:
        cases: the training scans; class channels follow ``vocabulary.class_names``.
        config: settings (see ``TrainConfig``).
        out_dir: folder for ``last.pt`` and ``rounds.jsonl``.
        vocabulary: the text vocabulary; a resumed checkpoint must record the same one.
        resume: continue from ``out_dir/last.pt`` when it exists.
        on_round_end: called on rank 0 with each epoch's record dict.
        on_step_end: called on every rank after each step (and its checkpoint) with (steps done, loss);
            an exception raised there stops training (the last checkpoint stays valid).
        progress: show a tqdm bar (rank 0).
        init_state: a state dict to start from (e.g. ``load_release_checkpoint(...).state_dict()``),
            ignored when resuming.
        trained_on: the model's per-class training record (class -> ``{"sources": [...], "scans": n}``,
            ``workbench.training_set.learnt_counts``), saved in the checkpoint's state as ``trained_on``.

    Returns:
        ``TrainResult``; ``model`` is in train mode on the CPU (or the device it was trained on).
    """
    from tqdm import tqdm

    if not cases:
        raise ValueError("no training cases")
    rank, world = _dist_info()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    torch.manual_seed(config.seed)
    model = UniversalModel(
        config.backbone,
        embeddings=vocabulary.embeddings,
        small_features=config.small_features,
        n_added_classes=config.n_added_classes,
        swin_merging=config.swin_merging,
    )
    params = trainable_parameters(model, config.freeze)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_step = 0
    if resume and ckpt_path.exists():
        loaded = load_checkpoint(ckpt_path, vocabulary)
        if loaded.model.config["backbone"] != model.backbone_name:
            raise HarmonizeError(
                ckpt_path,
                f"holds a {loaded.model.config['backbone']} model, config asks for {model.backbone_name}",
            )
        model.load_state_dict(loaded.model.state_dict())
        if loaded.optimizer_state is not None:
            optimizer.load_state_dict(loaded.optimizer_state)
        start_step = int(loaded.state["step"])
    elif init_state is not None:
        load_init_state(model, init_state, vocabulary, config.init)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)

    class_names = vocabulary.class_names
    cache = _CaseCache(cases, class_names, config.pipeline)
    augment = augment_transforms(config.pipeline, class_names)
    per_step = config.cases_per_step * world
    steps_per_epoch = math.ceil(len(cases) / per_step)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)

    records: list[dict[str, Any]] = []
    epoch_losses: list[float] = []
    epoch_start = time.perf_counter()
    bar = tqdm(total=total, initial=start_step, disable=not progress or rank != 0, desc="train", unit="step")
    step = start_step
    model.train()
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = np.random.default_rng(_seed(config.seed, epoch)).permutation(len(cases))
        images, labels, annotated = [], [], []
        for j in range(config.cases_per_step):
            pos = in_epoch * per_step + rank * config.cases_per_step + j
            idx = int(order[pos % len(cases)])
            augment.set_random_state(seed=_seed(config.seed, step, rank, j))
            for patch in augment(cache[idx]):
                images.append(torch.as_tensor(patch["image"]).as_subclass(torch.Tensor))
                labels.append(torch.as_tensor(patch["label"]).as_subclass(torch.Tensor))
                annotated.append(torch.as_tensor(patch["annotated"]))
        torch.manual_seed(_seed(config.seed, step, rank))
        logits = net(torch.stack(images).float())
        loss = partial_label_loss(logits, torch.stack(labels), torch.stack(annotated))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step, total)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        epoch_losses.append(loss_value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch)

        epoch_done = step % steps_per_epoch == 0
        state = {"step": step, "epoch": step // steps_per_epoch, "config": config.to_dict()}
        if trained_on is not None:
            state["trained_on"] = dict(trained_on)
        if config.init is not None:
            state["init"] = dict(config.init)
        if rank == 0 and (step % config.checkpoint_every == 0 or epoch_done or step == total):
            save_checkpoint(ckpt_path, model, optimizer, state, vocabulary)
        if epoch_done or step == total:
            record = {
                "epoch": epoch,
                "epoch_complete": epoch_done,
                "step": step,
                "mean_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                "steps": len(epoch_losses),
                "patches": len(epoch_losses) * config.cases_per_step * config.pipeline.num_samples * world,
                "seconds": time.perf_counter() - epoch_start,
                "lr": optimizer.param_groups[0]["lr"],
                "backbone": model.backbone_name,
                "world_size": world,
                "vocabulary_sha256": vocabulary.sha256,
                "init": _init_summary(config.init),
            }
            records.append(record)
            epoch_losses, epoch_start = [], time.perf_counter()
            if rank == 0:
                with open(out_dir / RECORDS_NAME, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if on_round_end is not None:
                    on_round_end(record)
        _barrier(world)
        if on_step_end is not None:
            on_step_end(step, loss_value)
    bar.close()
    return TrainResult(model, step, step // steps_per_epoch, records, ckpt_path if rank == 0 else None)


def _init_summary(init: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The init model's name, sha256 and kind, for a per-epoch record (its ``trained_on`` left out)."""
    if init is None:
        return None
    return {k: init.get(k) for k in ("name", "sha256", "kind", "backbone")}


def load_init_state(
    model: UniversalModel,
    init_state: Mapping[str, torch.Tensor],
    vocabulary: TextVocabulary,
    init: Mapping[str, Any] | None = None,
) -> None:
    """Load the weights a run starts from, strictly, and check they hold the vocabulary's embeddings.

    Args:
        model: the freshly built model (architecture from the ``TrainConfig``).
        init_state: the init model's state dict.
        vocabulary: the run's vocabulary.
        init: the init record (its name, for messages).

    Raises:
        HarmonizeError: keys or shapes that do not fit the model (one line with the first mismatch), or
            text embeddings that are not the vocabulary's.
    """
    where = str((init or {}).get("name") or "the init model")
    try:
        model.load_state_dict(dict(init_state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n")[1:2]).strip() or str(exc).splitlines()[0]
        raise HarmonizeError(
            where,
            f"its weights do not fit a {model.backbone_name} model of {model.n_classes} classes "
            f"(small_features {list(model.small_features)}): {detail[:300]}",
        ) from exc
    own = torch.from_numpy(vocabulary.embeddings.copy())
    if not torch.equal(model.organ_embedding.detach().cpu(), own):
        raise HarmonizeError(
            where,
            f"its text embeddings are not those of the vocabulary given ({vocabulary.encoder_id}, "
            f"sha256 {vocabulary.sha256[:12]}): train with the model's own vocabulary",
        )


def config_for_model(
    config: TrainConfig, model: UniversalModel, pipeline: PipelineConfig | None = None
) -> TrainConfig:
    """``config`` with the architecture of the model a run starts from (backbone, small features, Swin
    merging order, added classes) and the given pipeline.

    Args:
        config: the run's settings (steps, learning rate, freeze, ...).
        model: the init model.
        pipeline: the spacing, patch and sampling to train with (default ``config.pipeline``).

    Returns:
        A new :class:`TrainConfig` (its patch checked against the backbone).
    """
    return dataclasses.replace(
        config,
        backbone=model.backbone_name,
        small_features=tuple(model.small_features),
        swin_merging=model.swin_merging,
        n_added_classes=len(model.new_heads),
        pipeline=pipeline or config.pipeline,
    )


def predict_item(
    model: UniversalModel,
    item: Mapping[str, Any],
    pipeline: PipelineConfig,
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sliding-window class probabilities on the preprocessed grid of one item (for validation).

    Args:
        model: the model (switched to eval mode).
        item: an item as made by ``TrainCase.to_item`` (label optional).
        pipeline: the pipeline config the model was trained with (spacing, patch = window size).
        overlap: window overlap fraction; Gaussian blending as in the paper.
        sw_batch_size: windows per forward pass.

    Returns:
        (probabilities [C, X, Y, Z] float32 on the preprocessed grid, the preprocessed item).
    """
    from monai.inferers import sliding_window_inference

    pre = preprocess_transforms(pipeline, with_label="label" in item)(dict(item))
    model.eval()
    device = next(model.parameters()).device
    image = torch.as_tensor(pre["image"]).as_subclass(torch.Tensor)[None].float().to(device)
    with torch.no_grad():
        logits = sliding_window_inference(
            image, pipeline.patch, sw_batch_size, model, overlap=overlap, mode="gaussian"
        )
    assert isinstance(logits, torch.Tensor)
    return torch.sigmoid(logits[0]).cpu(), pre
