"""Checkpoints: the original Universal Model release files, and this project's own format.

Release files (``load_release_checkpoint``): ``torch.save({'net': state_dict, 'optimizer': ..., 'scheduler':
..., 'epoch': ...})`` from a DDP-wrapped model, so every key starts with ``module.``. The original loader
drops that first component and, for keys naming ``swinViT``/``encoder*``/``decoder*``, prepends
``backbone.`` (the released Swin UNETR was trained when those were direct children of the model). The U-Net
release keys already read ``module.backbone.down_tr64...``. Loading is strict: no missing, no unexpected key.

Own format (``save_checkpoint`` / ``load_checkpoint``), one ``torch.save`` dict:

* ``format``: ``"workbench.universal_model/1"``
* ``model_config``: ``UniversalModel.config`` (backbone, classes, in_channels, small_features, added)
* ``model_state``: the state dict; ``optimizer_state``: the optimizer's state dict or None
* ``state``: caller's JSON-like dict (step, epoch, train config, ...)
* ``vocabulary``: the vocabulary's provenance (encoder id, weights id, template, class names, prompts,
  sha256) and its embeddings tensor

A checkpoint refuses a vocabulary that differs from the one it was trained with (``VocabularyMismatch``).
Files are written to a temporary file in the same folder, fsynced, then renamed over the target, so a kill
leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harmonize.errors import HarmonizeError
from storage.files import atomic_path
from workbench.model.network import UniversalModel
from workbench.model.text import TextVocabulary

FORMAT = "workbench.universal_model/1"
_RELEASE_BACKBONE_CHILDREN = ("swinViT", "encoder", "decoder")


class VocabularyMismatch(HarmonizeError):
    """A checkpoint was trained with another text vocabulary (encoder, template, classes or embeddings)."""


def release_key(raw_key: str) -> str:
    """Map one key of a release state dict to this model's parameter name (the original loader's rule)."""
    key = raw_key.split(".", 1)[1] if raw_key.startswith("module.") else raw_key
    if key.split(".", 1)[0].startswith(_RELEASE_BACKBONE_CHILDREN):
        key = "backbone." + key
    return key


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    if not path.is_file():
        raise HarmonizeError(path, "no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise HarmonizeError(
            path,
            "holds Python objects beyond tensors and plain containers; if you trust the file, load it with "
            f"allow_pickle=True ({str(exc).splitlines()[0]})",
        ) from exc
    except Exception as exc:
        raise HarmonizeError(path, f"cannot be read as a torch checkpoint: {exc}") from exc


def release_state(raw: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The model state of a loaded release object, keys mapped by :func:`release_key`.

    Args:
        raw: what ``torch.load`` returned (a dict with ``net`` or ``state_dict``, or a bare state dict).
        path: the file, for messages.

    Returns:
        parameter name -> tensor, with ``organ_embedding``.

    Raises:
        HarmonizeError: not a state dict of tensors, or no ``organ_embedding``.
    """
    if isinstance(raw, Mapping) and "net" in raw:
        raw = raw["net"]
    elif isinstance(raw, Mapping) and "state_dict" in raw:
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise HarmonizeError(
            path,
            f"is neither a {FORMAT} checkpoint nor an original Universal Model release file "
            "(expected a state dict of tensors, or a dict with 'net')",
        )
    state = {release_key(str(k)): v for k, v in raw.items()}
    if "organ_embedding" not in state:
        raise HarmonizeError(
            path, "has no 'organ_embedding' (not a word-embedding Universal Model checkpoint)"
        )
    return state


def release_model(state: Mapping[str, torch.Tensor], backbone: str, path: str | Path) -> UniversalModel:
    """Build the ``UniversalModel`` of a release state (:func:`release_state`) and load it strictly.

    Swin UNETR gets the release's patch-merging order (``swin_merging='release'``).

    Raises:
        HarmonizeError: keys or shapes that do not match the backbone (names listed).
    """
    model = UniversalModel(backbone, n_classes=int(state["organ_embedding"].shape[0]), swin_merging="release")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HarmonizeError(path, f"does not match the {backbone} Universal Model: {exc}") from exc
    return model.eval()


def read_model_object(path: str | Path, *, allow_pickle: bool = False) -> Any:
    """``torch.load`` a model file onto the CPU (tensors and plain containers only, unless
    ``allow_pickle``); one :class:`HarmonizeError` line when it cannot be read."""
    return _torch_load(Path(path), allow_pickle)


def is_workbench_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is this project's own checkpoint format."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def load_release_checkpoint(path: str | Path, backbone: str, *, allow_pickle: bool = False) -> UniversalModel:
    """Build a ``UniversalModel`` from an original release checkpoint and load it strictly.

    Args:
        path: the release ``.pth`` (a dict with ``net``, or a bare state dict; keys with or without
            ``module.``).
        backbone: 'unet' / 'unet3d' (the U-Net release) or 'swinunetr'.
        allow_pickle: allow arbitrary pickled objects (only for files you trust).

    Returns:
        The model in eval mode; its ``organ_embedding`` buffer holds the release's text embeddings.

    Raises:
        HarmonizeError: unreadable file, or keys/shapes that do not match the backbone (names listed).
    """
    path = Path(path)
    return release_model(release_state(_torch_load(path, allow_pickle), path), backbone, path)


def _vocabulary_record(vocabulary: TextVocabulary) -> dict[str, Any]:
    rec = vocabulary.provenance()
    rec["embeddings"] = torch.from_numpy(vocabulary.embeddings.copy())
    return rec


def _vocabulary_from_record(rec: Mapping[str, Any]) -> TextVocabulary:
    return TextVocabulary(
        class_names=tuple(rec["class_names"]),
        prompts=tuple(rec["prompts"]),
        template_id=rec["template_id"],
        encoder_id=rec["encoder_id"],
        weights_id=rec["weights_id"],
        embeddings=rec["embeddings"].numpy(),
    )


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, then onto ``path`` in one move
    (:func:`storage.files.atomic_path`): a failed or killed save leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_checkpoint(
    path: str | Path,
    model: UniversalModel,
    optimizer: torch.optim.Optimizer | None,
    state: Mapping[str, Any],
    vocabulary: TextVocabulary,
) -> Path:
    """Write a checkpoint atomically (see module docstring for the layout).

    Args:
        path: target file.
        model: the model (a DDP wrapper's ``.module``, not the wrapper).
        optimizer: its optimizer, or None.
        state: JSON-like training state (step, epoch, config, ...).
        vocabulary: the vocabulary whose embeddings the model holds; must match them exactly.
    """
    emb = model.organ_embedding.detach().cpu()
    if tuple(emb.shape) != vocabulary.embeddings.shape or not torch.equal(
        emb, torch.from_numpy(vocabulary.embeddings.copy())
    ):
        raise ValueError("the model's text embeddings are not the given vocabulary's embeddings")
    obj = {
        "format": FORMAT,
        "model_config": model.config,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "state": dict(state),
        "vocabulary": _vocabulary_record(vocabulary),
    }
    return atomic_torch_save(obj, path)


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` returns.

    Args:
        model: the rebuilt model, weights loaded, in eval mode.
        optimizer_state: the optimizer state dict (pass to ``optimizer.load_state_dict``) or None.
        state: the training state dict saved with it.
        vocabulary: the vocabulary recorded in the checkpoint.
    """

    model: UniversalModel
    optimizer_state: dict[str, Any] | None
    state: dict[str, Any]
    vocabulary: TextVocabulary


def check_vocabulary(path: str | Path, recorded: TextVocabulary, given: TextVocabulary) -> None:
    """Raise ``VocabularyMismatch`` naming every difference when ``given`` is not ``recorded``."""
    if given.sha256 == recorded.sha256 and given.template_id == recorded.template_id:
        return
    diffs = []
    for field in ("encoder_id", "weights_id", "template_id"):
        a, b = getattr(recorded, field), getattr(given, field)
        if a != b:
            diffs.append(f"{field}: checkpoint {a!r}, given {b!r}")
    if recorded.class_names != given.class_names:
        diffs.append(
            f"class names: checkpoint {len(recorded.class_names)} "
            f"({', '.join(recorded.class_names[:4])}, ...), "
            f"given {len(given.class_names)} ({', '.join(given.class_names[:4])}, ...)"
        )
    if not diffs:
        diffs.append("embeddings differ (same encoder, template and names)")
    raise VocabularyMismatch(
        path,
        "was trained with another text vocabulary: "
        + "; ".join(diffs)
        + f" (checkpoint sha256 {recorded.sha256[:12]}, given {given.sha256[:12]}). Use the vocabulary "
        "the checkpoint records (load without one), or re-embed with its encoder and template.",
    )


def load_checkpoint(
    path: str | Path, vocabulary: TextVocabulary | None = None, *, obj: Any = None
) -> LoadedCheckpoint:
    """Load a checkpoint written by ``save_checkpoint``.

    Args:
        path: the file.
        vocabulary: if given, must be the vocabulary the checkpoint records, else ``VocabularyMismatch``.
        obj: the file's contents when already read (:func:`read_model_object`).

    Returns:
        ``LoadedCheckpoint`` with the model (eval mode), optimizer state, training state and vocabulary.
    """
    path = Path(path)
    obj = _torch_load(path, allow_pickle=False) if obj is None else obj
    if not is_workbench_checkpoint(obj):
        raise HarmonizeError(
            path, f"is not a {FORMAT} checkpoint (for the original release files use load_release_checkpoint)"
        )
    recorded = _vocabulary_from_record(obj["vocabulary"])
    if vocabulary is not None:
        check_vocabulary(path, recorded, vocabulary)
    cfg = dict(obj["model_config"])
    cfg.pop("n_classes")
    cfg.setdefault("swin_merging", "monai")  # saved before the option: trained with MONAI 1.x's order
    model = UniversalModel(embeddings=recorded.embeddings, **cfg)
    try:
        model.load_state_dict(obj["model_state"], strict=True)
    except RuntimeError as exc:
        raise HarmonizeError(path, f"model state does not match its recorded config: {exc}") from exc
    return LoadedCheckpoint(model.eval(), obj["optimizer_state"], dict(obj["state"]), recorded)
