"""The model of a pseudo-label job: a checkpoint loaded for inference, and the device it runs on.

Example:
    >>> seg = Segmenter.from_checkpoint("ws/models/latest/last.pt")  # doctest: +SKIP
    >>> seg.class_names[:2], seg.patch  # doctest: +SKIP
    (('spleen', 'kidney_right'), (96, 96, 96))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace

if TYPE_CHECKING:
    from workbench.model.registry import ModelFile


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
        kind: 'workbench' (our checkpoint) or 'release' (an original Universal Model file).
        name: its registered name ('' when used as a bare file).
        settings: its inference defaults (``workbench.model.registry.RELEASE_SETTINGS`` for a release).
        trained_on: class -> ``{"sources": [...], "scans": n or None}``, what it learnt from (None:
            unknown, an old checkpoint); recorded in each run's config (``workbench.review.learnt``).
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
    kind: str = "workbench"
    name: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] | None = None

    @property
    def is_release(self) -> bool:
        """Whether this is an original release model (the paper's settings are its defaults)."""
        return self.kind == "release"

    def with_classes(self, names: Sequence[str]) -> Segmenter:
        """The same model predicting only ``names`` (its heads for the others never run: less device
        memory per window, ``--classes``); the identity (sha256) stays the model's.

        Raises:
            ValueError: a class the model does not predict.
        """
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(f"the model does not predict {unknown}; it predicts {list(self.class_names)}")
        channels = [self.class_names.index(n) for n in names]
        return dataclasses.replace(
            self, module=_channel_subset(self.module, channels), class_names=tuple(names)
        )

    @classmethod
    def from_model_file(cls, mf: ModelFile, name: str = "") -> Segmenter:
        """The :class:`Segmenter` of a read model file (``workbench.model.registry.read_model_file``)."""
        return cls(
            module=mf.model.eval(),
            class_names=tuple(mf.vocabulary.class_names),
            spacing_mm=mf.spacing_mm,
            patch=mf.patch,
            sha256=mf.sha256,
            encoder_id=mf.vocabulary.encoder_id,
            vocabulary_sha256=mf.vocabulary.sha256,
            backbone=mf.backbone,
            path=str(mf.path),
            kind=mf.kind,
            name=name,
            settings=dict(mf.settings),
            trained_on=mf.trained_on,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, backbone: str | None = None) -> Segmenter:
        """Load a workbench checkpoint or an original release file (told apart by its contents).

        Args:
            path: the file.
            backbone: 'unet' / 'swinunetr', only for a release file whose keys are ambiguous.

        Returns:
            The :class:`Segmenter`, its module in eval mode on the CPU.

        Raises:
            HarmonizeError: unreadable file, neither format, or output channels that are not universal
                classes (a checkpoint that does not fit this workbench).
        """
        # Lazy: torch and MONAI load only when a model does (the CLI and the app import this package).
        from workbench.model.registry import read_model_file

        return cls.from_model_file(read_model_file(path, backbone=backbone))


def _channel_subset(module: Any, channels: Sequence[int]) -> Any:
    """A module computing only ``channels`` of ``module``'s output (a ``UniversalModel`` runs only those
    heads; any other module is sliced after its forward)."""
    import torch  # lazy: see Segmenter.from_checkpoint

    from workbench.model.network import UniversalModel

    heads_only = isinstance(module, UniversalModel)

    class ChannelSubset(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.channels = list(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if heads_only:
                return self.inner(x, channels=self.channels)  # type: ignore[no-any-return]
            return self.inner(x)[:, self.channels]  # type: ignore[no-any-return]

    return ChannelSubset().eval()


def load_model(ws: Workspace, ref: str | Path, *, backbone: str | None = None) -> Segmenter:
    """A model by registered name (or sha256), else by file (``workbench pseudolabel NAME|FILE``).

    Args:
        ws: the workspace whose registry is searched.
        ref: a registered model's name or sha256 (prefix of 8+), or a model file.
        backbone: for a release file whose keys are ambiguous.

    Returns:
        The :class:`Segmenter`.

    Raises:
        HarmonizeError: neither a registered model nor a file (the registered names are listed), or a file
            that is not a model of this workbench.
    """
    from workbench.model.registry import read_model_file, registered_path

    row = ws.catalog.model(str(ref)) if ws.exists else None
    if row is not None:
        mf = read_model_file(registered_path(ws, row), backbone=str(row["backbone"]))
        return Segmenter.from_model_file(mf, name=str(row["name"]))
    path = Path(ref)
    if not path.is_file():
        names = ws.catalog.models()["name"].tolist() if ws.exists else []
        raise HarmonizeError(
            path,
            "no such checkpoint file, and no registered model of that name (registered: "
            f"{', '.join(names) or 'none; see `workbench import-model`'})",
        )
    return Segmenter.from_checkpoint(path, backbone=backbone)


def resolve_device(device: str) -> str:
    """The torch device a job runs on.

    Args:
        device: 'auto', or a torch device ('cpu', 'cuda', 'cuda:1').

    Returns:
        'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given.

    Raises:
        ValueError: a CUDA device asked for where none is visible (one line).
    """
    import torch  # lazy: see Segmenter.from_checkpoint

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible here (use --device cpu or auto)")
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return device
