"""Assemble a training set from the catalog: one entry per scan, one label source per class.

Rule (DESIGN.md): for every scan x class, the label comes from the highest-priority label set that
knows the class (its coverage is not ``not_annotated``): ``revised`` > ``original`` > ``pseudo``, the
newest version first within one origin (:data:`storage.schema.ORIGIN_PRIORITY`, applied in the catalog by
:meth:`storage.catalog.Catalog.training_rows`). A class no label set knows stays unknown: it gets no gradient
(partial-label loss) and no mask. Masks are read from the mask store only when the trainer asks for them.

Example:
    >>> from storage.workspace import Workspace
    >>> entries = assemble_training_set(Workspace.open("ws"))  # doctest: +SKIP
    >>> entries[0].annotated, entries[0].origins["kidney_left"]  # doctest: +SKIP
    (('spleen', 'kidney_right', ...), 'original')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from harmonize.taxonomy import class_names
from storage.masks import MaskStore
from storage.schema import ORIGIN_PRIORITY
from storage.workspace import Workspace

__all__ = ["ORIGIN_PRIORITY", "LazyMasks", "TrainingEntry", "assemble_training_set"]


class LazyMasks(Mapping[str, np.ndarray]):
    """class name -> bool mask, read from the mask store on access (nothing is held in memory)."""

    def __init__(self, store: MaskStore, keys: Mapping[str, str]) -> None:
        self._store = store
        self._keys = dict(keys)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._store.read(self._keys[name], name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class TrainingEntry:
    """One scan of a training set.

    Args:
        scan_id: catalog scan id.
        source_id: its source.
        image_path: the original CT (file or DICOM folder).
        annotated: every class whose state is known, in model order.
        present: the subset of ``annotated`` that is drawn.
        masks: present class -> bool mask on the CT grid (lazy).
        origins: class -> origin of the label set it came from.
        label_sets: class -> label set id it came from.
    """

    scan_id: str
    source_id: str
    image_path: str
    annotated: tuple[str, ...]
    present: tuple[str, ...]
    masks: Mapping[str, np.ndarray]
    origins: dict[str, str] = field(default_factory=dict)
    label_sets: dict[str, str] = field(default_factory=dict)


def assemble_training_set(
    ws: Workspace,
    *,
    sources: Sequence[str] | None = None,
    scan_ids: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
) -> list[TrainingEntry]:
    """The training set of the workspace under the priority rule above.

    Args:
        ws: the workspace.
        sources: only scans of these sources.
        scan_ids: only these scans.
        origins: which origins may contribute (e.g. leave out ``pseudo``).

    Returns:
        Entries sorted by scan id; scans with no known class are left out.
    """
    unknown = sorted(set(origins) - set(ORIGIN_PRIORITY))
    if unknown:
        raise ValueError(f"unknown origins {unknown}; use {sorted(ORIGIN_PRIORITY)}")
    rows = ws.catalog.training_rows(origins, sources=sources, scan_ids=scan_ids)
    order = {n: i for i, n in enumerate(class_names())}
    entries = []
    for scan_id, group in rows.groupby("scan_id", sort=True):
        group = group.assign(_o=group["class_name"].map(order)).sort_values("_o")
        present = group[group["state"] == "annotated_present"]
        entries.append(
            TrainingEntry(
                scan_id=str(scan_id),
                source_id=str(group["source_id"].iloc[0]),
                image_path=str(group["image_path"].iloc[0]),
                annotated=tuple(group["class_name"]),
                present=tuple(present["class_name"]),
                masks=LazyMasks(ws.masks, dict(zip(present["class_name"], present["mask_key"]))),
                origins=dict(zip(group["class_name"], group["origin"])),
                label_sets=dict(zip(group["class_name"], group["label_set_id"])),
            )
        )
    return entries
