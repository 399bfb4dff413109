"""Assemble a training set from the catalog: one entry per scan, one label source per class.

Rule: THE ASSEMBLY RULE of the catalog (view ``current_label`` / macro ``current_label_of`` in
:mod:`storage.schema`, applied by :meth:`storage.catalog.Catalog.training_rows`): for every scan x class,
the label comes from the highest-priority label set that knows the class (its coverage is not
``not_annotated``): ``revised`` > ``original`` > accepted pseudo > pseudo, the newest version first within
one basis; a pseudo-label a reviewer rejected (or sent for correction) is never used. Each entry says per
class which ``basis`` applied. A class no label set knows stays unknown: it gets no gradient (partial-label
loss) and no mask. Masks are read from the mask store only when the trainer asks for them.

Training sets, every export and the evaluation truth all come from here, with a chosen list of bases
(:data:`PSEUDO_POLICIES` names the exports' three); held-out scans are left out by the caller
(``exclude_scans``, :func:`workbench.learning.split.held_out_split`).

Example:
    >>> from storage.workspace import Workspace
    >>> entries = assemble_training_set(Workspace.open("ws"))  # doctest: +SKIP
    >>> entries[0].annotated, entries[0].origins["kidney_left"]  # doctest: +SKIP
    (('spleen', 'kidney_right', ...), 'original')
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from harmonize.taxonomy import class_names
from storage.masks import MaskStore
from storage.schema import BASES, ORIGIN_PRIORITY
from storage.workspace import Workspace

__all__ = [
    "EXPERT_BASES",
    "ORIGIN_PRIORITY",
    "PSEUDO_POLICIES",
    "LazyMasks",
    "TrainingEntry",
    "assemble_training_set",
    "bases_for",
]

#: The bases an expert vouches for: the evaluation truth (never a pseudo-label, accepted or not).
EXPERT_BASES: tuple[str, ...] = ("revised", "original")

#: The exports' ``--pseudo`` choice -> the bases that may contribute: ``accepted`` fills partial labels
#: with pseudo-labels a reviewer accepted (the default), ``all`` with every pseudo-label not rejected,
#: ``none`` with none.
PSEUDO_POLICIES: dict[str, tuple[str, ...]] = {
    "accepted": ("revised", "original", "accepted"),
    "all": ("revised", "original", "pseudo"),
    "none": EXPERT_BASES,
}


def bases_for(pseudo: str) -> tuple[str, ...]:
    """The bases of an export's pseudo-label policy.

    Args:
        pseudo: ``accepted``, ``all`` or ``none`` (:data:`PSEUDO_POLICIES`).

    Returns:
        The bases, e.g. ``("revised", "original", "accepted")``.

    Raises:
        ValueError: an unknown policy.
    """
    if pseudo not in PSEUDO_POLICIES:
        raise ValueError(f"unknown pseudo-label policy {pseudo!r}; use one of {sorted(PSEUDO_POLICIES)}")
    return PSEUDO_POLICIES[pseudo]


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
        bases: class -> the basis of the assembly rule that applied (``revised``, ``original``,
            ``accepted`` or ``pseudo``).
    """

    scan_id: str
    source_id: str
    image_path: str
    annotated: tuple[str, ...]
    present: tuple[str, ...]
    masks: Mapping[str, np.ndarray]
    origins: dict[str, str] = field(default_factory=dict)
    label_sets: dict[str, str] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)


def assemble_training_set(
    ws: Workspace,
    *,
    sources: Sequence[str] | None = None,
    scan_ids: Sequence[str] | None = None,
    origins: Sequence[str] = ("revised", "original", "pseudo"),
    exclude_scans: Collection[str] = (),
) -> list[TrainingEntry]:
    """The training set of the workspace under the assembly rule above.

    Args:
        ws: the workspace.
        sources: only scans of these sources.
        scan_ids: only these scans.
        origins: the bases that may contribute (:data:`storage.schema.BASES`; ``pseudo`` admits accepted
            pseudo-labels too, ``accepted`` only those), e.g. leave out ``pseudo``.
        exclude_scans: leave these scans out (the held-out split).

    Returns:
        Entries sorted by scan id; scans with no known class are left out.

    Raises:
        ValueError: an unknown basis.
    """
    unknown = sorted(set(origins) - set(BASES))
    if unknown:
        raise ValueError(f"unknown origins {unknown}; use {sorted(BASES)}")
    rows = ws.catalog.training_rows(origins, sources=sources, scan_ids=scan_ids)
    if len(exclude_scans):
        rows = rows[~rows["scan_id"].isin(list(exclude_scans))]
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
                bases=dict(zip(group["class_name"], group["basis"])),
            )
        )
    return entries


#: The bases whose labels count as annotated examples a model learnt from (an unreviewed pseudo-label
#: teaches a model nothing it did not already predict).
LEARNT_BASES = ("revised", "original", "accepted")


def learnt_counts(entries: Sequence[TrainingEntry]) -> dict[str, dict[str, object]]:
    """Per class, the annotated training scans behind it: the ``trained_on`` record of a model.

    Args:
        entries: the training set (:func:`assemble_training_set`).

    Returns:
        class -> ``{"sources": sorted source ids, "scans": n}``, n = scans whose label of that class has
        basis ``revised``, ``original`` or ``accepted`` (:data:`LEARNT_BASES`); classes with no such scan
        are absent.

    Example:
        >>> e = TrainingEntry("s1", "kits23", "ct.nii.gz", ("kidney_left",), (), {})
        >>> e.bases["kidney_left"] = "original"
        >>> learnt_counts([e])
        {'kidney_left': {'sources': ['kits23'], 'scans': 1}}
    """
    sources: dict[str, set[str]] = {}
    scans: dict[str, int] = {}
    for e in entries:
        for name, basis in e.bases.items():
            if basis in LEARNT_BASES:
                sources.setdefault(name, set()).add(e.source_id)
                scans[name] = scans.get(name, 0) + 1
    return {n: {"sources": sorted(sources[n]), "scans": scans[n]} for n in sorted(scans)}
