"""The model registry: release files and workbench checkpoints as named models of a workspace.

A model file is one of two formats, told apart by its contents (:func:`read_model_file`):

* a workbench checkpoint (``checkpoint.save_checkpoint``, format ``workbench.universal_model/1``), which
  records its backbone, classes, vocabulary and training pipeline;
* an original Universal Model release file (``{'net': state_dict, ...}`` of the DDP-wrapped model), whose
  backbone is read from its keys (:func:`detect_backbone`: ``swinViT.*`` is Swin UNETR,
  ``backbone.down_tr64.*`` the U-Net), whose 32 output channels are the universal classes in the
  release's order and whose ``organ_embedding`` buffer holds the release's CLIP ViT-B/32 text embeddings
  (encoder ``"clip-vit-b32 (original release)"``). Its inference settings are the paper's
  (:data:`RELEASE_SETTINGS`).

``import_model`` registers a file once per workspace: it copies the file into
``<workspace>/models/registry/`` (atomically; the copy keeps the original bytes, so its sha256 is the
original file's), stores the text embeddings as a vocabulary, and writes one ``model`` row (schema v8:
name, sha256, kind, backbone, classes, vocabulary, spacing, window, settings, ``trained_on``). A second
import of the same file (same sha256) writes nothing and says which model it is.

``trained_on`` is the model's per-class training record: class -> ``{"sources": [...], "scans": n}``.
For the release it is the paper's training sources per class (:data:`RELEASE_SOURCES`, read from the
original repository's ``TEMPLATE``; the number of annotated scans per class is not published per class,
so ``scans`` is None there); workbench checkpoints leave it to the training record (None until training
writes it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import CLASSES, ORIGINAL_PROMPT_NAMES, class_names, universal_class_names
from storage.files import atomic_path, file_sha256, safe_name
from storage.workspace import Workspace
from workbench.model.network import UniversalModel
from workbench.model.text import ORIGINAL_ENCODER_ID, TextVocabulary

#: The backbone names a user gives (``--backbone``) -> the network's name.
BACKBONE_ALIASES = {"unet": "unet3d", "unet3d": "unet3d", "swinunetr": "swinunetr"}
#: Key fragments that identify a release backbone.
_RELEASE_KEY_MARKS = {"swinunetr": "swinViT.", "unet3d": "down_tr64."}

#: The paper's inference settings, the defaults of a release model (``docs/decisions.md``).
RELEASE_SETTINGS: dict[str, Any] = {
    "orientation": "RAS",
    "spacing_mm": [1.5, 1.5, 1.5],
    "hu_window": [-175.0, 250.0],
    "scaled_to": [0.0, 1.0],
    "window": [96, 96, 96],
    "overlap": 0.5,
    "blending": "gaussian",
    "threshold": 0.5,
    "tta": False,
}

#: Per class, the paper's training sources that annotate it (ids of the original ``TEMPLATE``: 01 BTCV,
#: 01_2 BTCV relabelled, 02 Pancreas-CT, 03 CHAOS, 04 LiTS, 05 KiTS, 07 WORD, 08 AbdomenCT-1K, 09 AMOS22,
#: 10_xx MSD tasks, 12 CT-ORG, 13 AbdomenCT-12organ, 14 JHH pancreas; 06 3D-IRCADb is the external test).
RELEASE_SOURCES: dict[str, tuple[str, ...]] = {
    "spleen": ("01", "01_2", "02", "07", "08", "09", "10_09", "13"),
    "kidney_right": ("01", "05", "07", "08", "09", "12", "13"),
    "kidney_left": ("01", "01_2", "02", "05", "07", "08", "09", "12", "13"),
    "gall_bladder": ("01", "01_2", "02", "07", "09", "13"),
    "esophagus": ("01", "01_2", "02", "07", "09", "13"),
    "liver": ("01", "01_2", "02", "03", "04", "07", "08", "09", "10_03", "12", "13"),
    "stomach": ("01", "01_2", "02", "07", "09", "13"),
    "aorta": ("01", "09", "13"),
    "postcava": ("01", "09", "13"),
    "portal_vein_and_splenic_vein": ("01",),
    "pancreas": ("01", "01_2", "02", "07", "08", "09", "10_07", "13", "14"),
    "adrenal_gland_right": ("01", "07", "09", "13"),
    "adrenal_gland_left": ("01", "07", "09", "13"),
    "duodenum": ("01", "01_2", "02", "07", "09"),
    "hepatic_vessel": ("10_08",),
    "lung_right": ("12",),
    "lung_left": ("12",),
    "colon": ("07",),
    "intestine": ("07",),
    "rectum": ("07",),
    "bladder": ("07", "09", "12"),
    "prostate": ("09",),
    "femur_left": ("07",),
    "femur_right": ("07",),
    "celiac_trunk": ("13",),
    "kidney_tumor": ("05",),
    "liver_tumor": ("04", "10_03"),
    "pancreas_tumor": ("10_07", "14"),
    "hepatic_vessel_tumor": ("10_08",),
    "lung_tumor": ("10_06",),
    "colon_tumor": ("10_10",),
    "kidney_cyst": ("05",),
}

#: Where registered model files live, under the workspace's ``models/``.
REGISTRY_FOLDER = "registry"


def detect_backbone(keys: Sequence[str]) -> str | None:
    """The release backbone its state-dict keys belong to.

    Args:
        keys: the state dict's keys (raw, with or without ``module.``).

    Returns:
        'swinunetr' or 'unet3d'; None when the keys name neither or both (ambiguous).
    """
    found = [b for b, mark in _RELEASE_KEY_MARKS.items() if any(mark in k for k in keys)]
    return found[0] if len(found) == 1 else None


def resolve_backbone(path: str | Path, keys: Sequence[str], given: str | None) -> str:
    """The backbone of a release file: detected from its keys, ``given`` only where they are ambiguous.

    Raises:
        HarmonizeError: ambiguous keys without ``given``, an unknown ``given``, or one its keys contradict.
    """
    if given is not None and given not in BACKBONE_ALIASES:
        raise HarmonizeError(path, f"unknown backbone {given!r}; a release is unet or swinunetr")
    detected = detect_backbone(keys)
    wanted = BACKBONE_ALIASES[given] if given else None
    if detected is None and wanted is None:
        raise HarmonizeError(path, "its keys do not tell the backbone; pass --backbone unet|swinunetr")
    if detected is not None and wanted is not None and detected != wanted:
        raise HarmonizeError(path, f"its keys are those of a {detected} release, not {given}")
    return str(detected or wanted)


def release_vocabulary(embeddings: np.ndarray, weights_id: str) -> TextVocabulary:
    """The release's 32 classes with its text embeddings [32, 512] as a vocabulary (the V1 template
    with the original spellings, encoder ``clip-vit-b32 (original release)``)."""
    return TextVocabulary(
        class_names=tuple(universal_class_names()),
        prompts=tuple(f"A computerized tomography of a {n}" for n in ORIGINAL_PROMPT_NAMES),
        template_id="V1",
        encoder_id=ORIGINAL_ENCODER_ID,
        weights_id=weights_id,
        embeddings=np.asarray(embeddings, dtype=np.float32),
    )


@dataclass
class ModelFile:
    """A model file read for inference or registration (:func:`read_model_file`).

    Args:
        path: the file.
        kind: 'release' or 'workbench'.
        backbone: the network's backbone name.
        sha256: sha256 of the file.
        model: the loaded model, eval mode, on the CPU.
        vocabulary: its classes and text embeddings.
        spacing_mm / patch: the spacing and window it was trained with.
        settings: its inference defaults (:data:`RELEASE_SETTINGS` for a release).
        trained_on: class -> {"sources": [...], "scans": n or None}, or None when unknown.
        inherited: a workbench checkpoint's init model's ``trained_on`` (``{}`` for fresh weights), or
            None where the file does not say (a release, an older checkpoint).
    """

    path: Path
    kind: str
    backbone: str
    sha256: str
    model: UniversalModel
    vocabulary: TextVocabulary
    spacing_mm: tuple[float, float, float]
    patch: tuple[int, int, int]
    settings: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] | None = None
    inherited: dict[str, Any] | None = None


def _inherited(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The init model's ``trained_on`` a checkpoint's training state records ({} for fresh weights;
    None when the state does not say)."""
    config = state.get("config")
    if not isinstance(config, Mapping) or "init" not in config:
        return None
    init = config["init"]
    return dict(init.get("trained_on") or {}) if isinstance(init, Mapping) else {}


def _checkpoint_settings(
    state: Mapping[str, Any], spacing: tuple[float, ...], patch: tuple[int, ...]
) -> dict[str, Any]:
    """A workbench checkpoint's inference defaults: its spacing and window, TTA on; a model fine-tuned
    from a release keeps the paper's other settings (overlap, blending, threshold, no TTA)."""
    init = state.get("init")
    base = (
        dict(RELEASE_SETTINGS)
        if isinstance(init, Mapping) and init.get("kind") == "release"
        else {"tta": True}
    )
    return {**base, "spacing_mm": list(spacing), "window": list(patch)}


def _release_file(path: Path, raw: Any, backbone: str | None, sha256: str) -> ModelFile:
    from workbench.model.checkpoint import release_model, release_state

    state = release_state(raw, path)
    keys = [str(k) for k in (raw.get("net", raw.get("state_dict", raw)) if isinstance(raw, Mapping) else {})]
    emb = state["organ_embedding"]
    if tuple(emb.shape) != (len(CLASSES), 512):
        raise HarmonizeError(
            path,
            f"its organ_embedding is {list(emb.shape)}: a release model has the {len(CLASSES)} universal "
            "classes x 512, so its classes do not fit the taxonomy; nothing was registered",
        )
    model = release_model(state, resolve_backbone(path, keys, backbone), path)
    vocab = release_vocabulary(emb.float().numpy(), f"{path.name} organ_embedding sha256:{sha256}")
    return ModelFile(
        path=path,
        kind="release",
        backbone=model.backbone_name,
        sha256=sha256,
        model=model,
        vocabulary=vocab,
        spacing_mm=(1.5, 1.5, 1.5),
        patch=(96, 96, 96),
        settings=dict(RELEASE_SETTINGS),
        trained_on={n: {"sources": list(s), "scans": None} for n, s in RELEASE_SOURCES.items()},
    )


def _workbench_file(path: Path, obj: Any, sha256: str) -> ModelFile:
    from workbench.model.checkpoint import load_checkpoint
    from workbench.model.train import TrainConfig

    loaded = load_checkpoint(path, obj=obj)
    known = set(class_names())
    unknown = [n for n in loaded.vocabulary.class_names if n not in known]
    if unknown:
        raise HarmonizeError(
            path, f"predicts classes that are not universal classes: {unknown} (the catalog cannot hold them)"
        )
    cfg = loaded.state.get("config")
    pipeline = TrainConfig.from_dict(cfg).pipeline if isinstance(cfg, Mapping) else None
    spacing = tuple(float(s) for s in pipeline.spacing_mm) if pipeline else (1.5, 1.5, 1.5)
    patch = tuple(int(p) for p in pipeline.patch) if pipeline else (96, 96, 96)
    return ModelFile(
        path=path,
        kind="workbench",
        backbone=str(loaded.model.config.get("backbone", "")),
        sha256=sha256,
        model=loaded.model,
        vocabulary=loaded.vocabulary,
        spacing_mm=spacing,  # type: ignore[arg-type]
        patch=patch,  # type: ignore[arg-type]
        settings=_checkpoint_settings(loaded.state, spacing, patch),  # type: ignore[arg-type]
        trained_on=loaded.state.get("trained_on"),
        inherited=_inherited(loaded.state),
    )


def read_model_file(path: str | Path, *, backbone: str | None = None) -> ModelFile:
    """Read a workbench checkpoint or an original release file (told apart by its contents).

    Args:
        path: the file.
        backbone: for a release file whose keys are ambiguous: 'unet' or 'swinunetr'.

    Returns:
        :class:`ModelFile`.

    Raises:
        HarmonizeError: one line: unreadable, neither format, classes that do not fit the 32-class
            taxonomy, keys that do not fit the backbone.
    """
    from workbench.model.checkpoint import is_workbench_checkpoint, read_model_object

    path = Path(path)
    obj = read_model_object(path)
    sha = file_sha256(path)
    if is_workbench_checkpoint(obj):
        return _workbench_file(path, obj, sha)
    return _release_file(path, obj, backbone, sha)


def check_embeddings(path: str | Path, model_file: ModelFile, embeddings: np.ndarray) -> None:
    """Refuse text embeddings that are not the model's own (``import-model --embeddings``).

    Args:
        path: the embeddings file, for the message.
        model_file: the model.
        embeddings: [C, 512] float32.

    Raises:
        HarmonizeError: another shape / class count, or other values than the model's buffer.
    """
    own = model_file.vocabulary.embeddings
    if embeddings.shape != own.shape:
        raise HarmonizeError(
            path,
            f"holds {list(embeddings.shape)} embeddings; the model has {list(own.shape)} (one 512-d row per "
            "class): they are not this model's; nothing was registered",
        )
    diff = float(np.max(np.abs(embeddings.astype(np.float32) - own)))
    if diff > 1e-3:
        raise HarmonizeError(
            path,
            f"differs from the model's own text embeddings by up to {diff:.3g}: they are not this "
            "model's; nothing was registered",
        )


@dataclass(frozen=True)
class ImportResult:
    """What ``import_model`` did: the model's row, and whether it was registered now."""

    row: dict[str, Any]
    registered: bool

    def line(self) -> str:
        """One line for the CLI."""
        r = self.row
        what = "registered" if self.registered else "already registered, nothing changed:"
        return (
            f"{what} model {r['name']!r} ({r['kind']} {r['backbone']}, {len(r['class_names'])} classes, "
            f"{r['encoder_id']}, sha256 {str(r['sha256'])[:12]})"
        )


def default_model_name(model_file: ModelFile) -> str:
    """``<kind>-<backbone>-<sha256[:8]>``, e.g. ``release-swinunetr-1a2b3c4d``."""
    return f"{model_file.kind}-{model_file.backbone}-{model_file.sha256[:8]}"


def store_vocabulary(ws: Workspace, vocab: TextVocabulary, name: str, note: str = "") -> None:
    """Store ``vocab`` in the catalog under ``name`` (re-pointing the name if it existed).

    Args:
        ws: the workspace.
        vocab: the vocabulary (embeddings, prompts and provenance).
        name: the name it is found by (``load_vocabulary(ws, name)``).
        note: a remark stored with it (e.g. "offline stand-in encoder, not CLIP").
    """
    ws.catalog.add_vocabulary(
        name=name,
        sha256=vocab.sha256,
        encoder=vocab.encoder_id,
        weights=vocab.weights_id,
        template=vocab.template_id,
        class_names=vocab.class_names,
        prompts=vocab.prompts,
        embeddings=vocab.to_bytes(),
        dim=int(vocab.embeddings.shape[1]),
        note=note,
    )


def _store_vocabulary(ws: Workspace, vocab: TextVocabulary, name: str) -> None:
    """Store the model's vocabulary unless the catalog has it (another name keeps pointing to it)."""
    try:
        ws.catalog.vocabulary(vocab.sha256)
        return
    except KeyError:
        pass
    store_vocabulary(ws, vocab, name, note="text embeddings of a registered model")


def import_model(
    ws: Workspace,
    path: str | Path,
    *,
    name: str | None = None,
    backbone: str | None = None,
    embeddings: np.ndarray | None = None,
    embeddings_path: str | Path | None = None,
) -> ImportResult:
    """Register a model file in the workspace once (module docstring).

    Args:
        ws: the workspace.
        path: a release file or a workbench checkpoint.
        name: the name later commands use (default :func:`default_model_name`); letters, digits, ``._-``.
        backbone: 'unet' / 'swinunetr' where a release file's keys are ambiguous.
        embeddings: text embeddings [C, 512] the model must hold (e.g. the released ``txt_encoding.pth``).
        embeddings_path: their file, for messages.

    Returns:
        :class:`ImportResult`; ``registered`` False when the same file (sha256) was registered before.

    Raises:
        HarmonizeError: a file that cannot be a model of this workbench, embeddings that are not its own,
            a name taken by another model; nothing is registered then.
    """
    path = Path(path)
    model_file = read_model_file(path, backbone=backbone)
    existing = ws.catalog.model(model_file.sha256)
    if existing is not None and existing["sha256"] == model_file.sha256:
        return ImportResult(existing, registered=False)
    if embeddings is not None:
        check_embeddings(embeddings_path or path, model_file, embeddings)
    name = name or default_model_name(model_file)
    if safe_name(name) != name:
        raise HarmonizeError(path, f"model name {name!r}: use letters, digits, '.', '_' and '-' only")
    taken = ws.catalog.model(name)
    if taken is not None and taken["name"] == name:  # checked again inside the row's transaction
        raise HarmonizeError(path, f"the model name {name!r} is taken by model {str(taken['sha256'])[:12]}")
    folder = ws.models / REGISTRY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{model_file.sha256[:12]}{path.suffix or '.pth'}"
    if not target.exists() or file_sha256(target) != model_file.sha256:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    _store_vocabulary(ws, model_file.vocabulary, f"model:{name}")
    row = model_row(model_file, name, target.relative_to(ws.root), path)
    try:
        again = ws.catalog.add_model(row)
    except ValueError as exc:
        raise HarmonizeError(path, str(exc)) from exc
    return ImportResult(again, registered=False) if again is not None else ImportResult(row, registered=True)


def model_row(model_file: ModelFile, name: str, file: Path, original: Path) -> dict[str, Any]:
    """The ``model`` row of a model file (``file``: its copy, relative to the workspace root)."""
    return {
        "name": name,
        "sha256": model_file.sha256,
        "kind": model_file.kind,
        "backbone": model_file.backbone,
        "file": str(file),
        "original_path": str(original.resolve()),
        "class_names": list(model_file.vocabulary.class_names),
        "vocabulary_sha256": model_file.vocabulary.sha256,
        "encoder_id": model_file.vocabulary.encoder_id,
        "spacing_mm": list(model_file.spacing_mm),
        "patch": list(model_file.patch),
        "settings": model_file.settings,
        "trained_on": model_file.trained_on,
    }


def registered_path(ws: Workspace, row: Mapping[str, Any]) -> Path:
    """The file of a registered model (its copy in the workspace)."""
    return ws.root / str(row["file"])


def trained_on(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A model row's ``trained_on`` as a dict (None when unknown)."""
    raw = row.get("trained_on")
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw)


# -- fine-tuning (#12): a model by name or file, what it brings, what it learnt -------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A model named on the command line (:func:`resolve_model`).

    Args:
        model_file: the file, read.
        name: its registered name, else :func:`default_model_name` (``<kind>-<backbone>-<sha256[:8]>``).
        registered: whether it is a registered model of the workspace.
    """

    model_file: ModelFile
    name: str
    registered: bool

    def init_record(self) -> dict[str, Any]:
        """What a run that starts from this model records as ``init``: name, sha256, kind, backbone,
        path and the model's own ``trained_on`` (None when unknown)."""
        mf = self.model_file
        return {
            "name": self.name,
            "sha256": mf.sha256,
            "kind": mf.kind,
            "backbone": mf.backbone,
            "path": str(mf.path),
            "trained_on": mf.trained_on,
        }


def resolve_model(ws: Workspace, ref: str | Path, *, backbone: str | None = None) -> ResolvedModel:
    """A registered model's name (or sha256), or a model file (release or workbench checkpoint), read.

    Args:
        ws: the workspace.
        ref: the name, hash or path.
        backbone: for a release file whose keys are ambiguous.

    Returns:
        :class:`ResolvedModel`.

    Raises:
        HarmonizeError: neither a registered model nor a readable model file (one line naming the
            registered ones).
    """
    row = ws.catalog.model(str(ref))
    if row is not None:
        given = backbone or (str(row["backbone"]) if row["kind"] == "release" else None)
        model_file = read_model_file(registered_path(ws, row), backbone=given)
        return ResolvedModel(model_file, str(row["name"]), True)
    path = Path(ref)
    if not path.exists():
        names = ws.catalog.models()["name"].tolist()
        raise HarmonizeError(
            path, f"is neither a registered model ({', '.join(names) or 'none registered'}) nor a model file"
        )
    model_file = read_model_file(path, backbone=backbone)
    return ResolvedModel(model_file, default_model_name(model_file), False)


def merge_trained_on(
    base: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]] | None:
    """What a fine-tuned model learnt: the init model's ``trained_on`` plus this run's counts.

    Per class, sources are united (sorted) and scans summed where both are known; an unknown count
    (None, the release's) stays None.

    Args:
        base: the init model's record (class -> ``{"sources": [...], "scans": n or None}``), or None.
        new: this run's (:func:`workbench.training_set.learnt_counts`), or None.

    Returns:
        The merged record; None when both are None.

    Example:
        >>> merge_trained_on({"liver": {"sources": ["04"], "scans": None}},
        ...                  {"liver": {"sources": ["lits"], "scans": 3}})
        {'liver': {'sources': ['04', 'lits'], 'scans': None}}
    """
    if base is None and new is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for record in (base or {}, new or {}):
        for name, entry in record.items():
            sources = [str(s) for s in entry.get("sources", [])]
            scans = entry.get("scans")
            if name not in out:
                out[name] = {"sources": sorted(set(sources)), "scans": scans}
                continue
            had = out[name]
            total = None if had["scans"] is None or scans is None else int(had["scans"]) + int(scans)
            out[name] = {"sources": sorted(set(had["sources"]) | set(sources)), "scans": total}
    return dict(sorted(out.items()))


def inherited_trained_on(model_file: ModelFile) -> dict[str, Any] | None:
    """What a model brought from outside the workspace it was trained in: for a workbench checkpoint
    the ``trained_on`` of the model it started from (``{}`` when it started from fresh weights), for a
    release (or a checkpoint that does not say) its own ``trained_on``.

    A round re-trains on the workspace's whole training set, so it adds this to its counts, not the
    previous round's own counts (they are the same scans)."""
    return model_file.trained_on if model_file.inherited is None else model_file.inherited
