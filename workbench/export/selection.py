"""Which scans and labels an export writes: the assembly rule with a pseudo-label policy, held-out out.

Every export (AbdomenAtlas, nnU-Net, MONAI) takes each scan x class from
:func:`workbench.training_set.assemble_training_set`, i.e. the catalog's assembly rule (revised > original
> accepted pseudo > pseudo, a rejected pseudo-label never), with the bases of its ``pseudo`` policy
(:data:`workbench.training_set.PSEUDO_POLICIES`: ``accepted`` by default, ``all``, ``none``). Exports are
meant for training, so the held-out split (:func:`workbench.learning.split.held_out_split`, chosen now if
it is not yet) stays out unless ``include_held_out``; the manifest says so and how many scans it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench.training_set import PSEUDO_POLICIES, TrainingEntry, assemble_training_set, bases_for

#: The ``pseudo`` choices of every export (CLI ``--pseudo``, the app's Export page), the default first.
PSEUDO_CHOICES: tuple[str, ...] = tuple(PSEUDO_POLICIES)


@dataclass(frozen=True)
class Selection:
    """What an export writes.

    Args:
        entries: the scans, each knowing at least one exported class, sorted by scan id.
        classes: the exported classes (as asked; all 32 by default).
        pseudo: the pseudo-label policy.
        bases: its bases.
        include_held_out: whether held-out scans were kept.
        held_out_left_out: scan ids left out because they are held out (empty when kept).
    """

    entries: list[TrainingEntry]
    classes: list[str]
    pseudo: str
    bases: tuple[str, ...]
    include_held_out: bool
    held_out_left_out: tuple[str, ...]

    def held_out(self) -> dict[str, Any]:
        """The manifest's ``held_out`` entry: ``left_out`` (bool) and ``scans`` (how many were left out)."""
        return {"left_out": not self.include_held_out, "scans": len(self.held_out_left_out)}

    def parameters(self) -> dict[str, Any]:
        """The selection's part of a manifest's ``parameters``."""
        return {
            "classes": self.classes,
            "pseudo": self.pseudo,
            "bases": list(self.bases),
            "include_held_out": self.include_held_out,
            "priority": ["revised", "original", "accepted", "pseudo"],
        }


def select(
    ws: Workspace,
    *,
    sources: Sequence[str] | None,
    classes: Sequence[str] | None,
    pseudo: str,
    include_held_out: bool,
) -> Selection:
    """The scans and labels of an export.

    Args:
        ws: the workspace.
        sources: only these sources (None or empty: all).
        classes: only these universal classes (None or empty: all 32).
        pseudo: ``accepted``, ``all`` or ``none``.
        include_held_out: keep the held-out scans (not for training!).

    Returns:
        The :class:`Selection`.

    Raises:
        KeyError: a class is not a universal class.
        ValueError: an unknown pseudo-label policy.
    """
    wanted = list(classes) if classes else class_names()
    unknown = sorted(set(wanted) - set(class_names()))
    if unknown:
        raise KeyError(f"unknown classes {unknown}")
    bases = bases_for(pseudo)
    # imported here: workbench.learning's package init imports review, which imports this package
    from workbench.learning.split import held_out_split

    held = set() if include_held_out else held_out_split(ws)
    entries = [
        e for e in assemble_training_set(ws, sources=sources, origins=bases) if set(e.annotated) & set(wanted)
    ]
    left_out = tuple(e.scan_id for e in entries if e.scan_id in held)
    kept = [e for e in entries if e.scan_id not in held]
    return Selection(kept, wanted, pseudo, bases, include_held_out, left_out)


def case_labels(entry: TrainingEntry, classes: Sequence[str]) -> dict[str, Any]:
    """The manifest's per-class record of one case: for every known exported class its state, basis and
    label set.

    Args:
        entry: the scan's training entry.
        classes: the exported classes.

    Returns:
        ``{"label_sets": {class: id}, "origins": {class: origin}, "bases": {class: basis}}`` over the
        known exported classes.
    """
    known = [c for c in classes if c in entry.annotated]
    return {
        "label_sets": {c: entry.label_sets[c] for c in known},
        "origins": {c: entry.origins[c] for c in known},
        "bases": {c: entry.bases[c] for c in known},
    }
