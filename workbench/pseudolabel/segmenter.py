"""The model of a pseudo-label job: a checkpoint loaded for inference, and the device it runs on.

Example:
    >>> seg = Segmenter.from_checkpoint("ws/models/latest/last.pt")  # doctest: +SKIP
    >>> seg.class_names[:2], seg.patch  # doctest: +SKIP
    (('spleen', 'kidney_right'), (96, 96, 96))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from storage.files import file_sha256


@dataclass
class Segmenter:
    """A model ready for inference.

    Args:
        module: torch module mapping windows [B, 1, X, Y, Z] (CT scaled to [0, 1]) to logits [B, C, ...].
        class_names: universal class of each output channel.
        spacing_mm: the spacing it was trained at (used when ``low_res_mm`` is None).
        patch: window size (voxels) it was trained with.
        sha256: sha256 of the checkpoint file (identifies the run's model; resume key).
        encoder_id / vocabulary_sha256: its text vocabulary's provenance.
        backbone: backbone name, for the record.
        path: the checkpoint file.
    """

    module: Any
    class_names: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    patch: tuple[int, int, int]
    sha256: str
    encoder_id: str = ""
    vocabulary_sha256: str = ""
    backbone: str = ""
    path: str = ""

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Segmenter:
        """Load a checkpoint written by ``workbench.model.checkpoint.save_checkpoint``.

        Args:
            path: the checkpoint file.

        Returns:
            The :class:`Segmenter`, its module in eval mode on the CPU.

        Raises:
            HarmonizeError: unreadable file, not such a checkpoint, or output channels that are not
                universal classes (a checkpoint that does not fit this workbench).
        """
        # Lazy: torch and MONAI load only when a model does (the CLI and the app import this package).
        from workbench.model.checkpoint import load_checkpoint
        from workbench.model.train import TrainConfig

        path = Path(path)
        loaded = load_checkpoint(path)
        names = tuple(loaded.vocabulary.class_names)
        known = set(class_names())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise HarmonizeError(
                path,
                f"predicts classes that are not universal classes: {unknown} (the catalog cannot hold them)",
            )
        cfg = loaded.state.get("config")
        pipeline = TrainConfig.from_dict(cfg).pipeline if isinstance(cfg, Mapping) else None
        spacing = tuple(pipeline.spacing_mm) if pipeline else (1.5, 1.5, 1.5)
        patch = tuple(pipeline.patch) if pipeline else (96, 96, 96)
        return cls(
            module=loaded.model.eval(),
            class_names=names,
            spacing_mm=spacing,  # type: ignore[arg-type]
            patch=patch,  # type: ignore[arg-type]
            sha256=file_sha256(path),
            encoder_id=loaded.vocabulary.encoder_id,
            vocabulary_sha256=loaded.vocabulary.sha256,
            backbone=str(loaded.model.config.get("backbone", "")),
            path=str(path),
        )


def resolve_device(device: str) -> str:
    """The torch device a job runs on.

    Args:
        device: 'auto', or a torch device ('cpu', 'cuda', 'cuda:1').

    Returns:
        'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given.
    """
    if device != "auto":
        return device
    import torch  # lazy: see Segmenter.from_checkpoint

    return "cuda" if torch.cuda.is_available() else "cpu"
