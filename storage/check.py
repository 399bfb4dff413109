"""``workbench check``: is the catalog consistent with the files of its workspace?

What is checked, in this order:

1. Every row of every catalog table is read (DuckDB verifies each block's checksum): a damaged catalog
   raises :class:`storage.catalog.CatalogError` with its one line and the way back.
2. Every label set's mask file exists, its index reads, every class decodes (CRC-32, zstd, bit count), its
   shape is the scan's, and it holds exactly the classes the catalog lists as ``annotated_present``, with
   the voxel counts stored in ``class_stats``.
3. Mask files that no label set references are listed as orphans (a killed writer's leftovers; not an
   error: ``workbench gc`` removes them once they are old enough).
4. Uncertainty maps (``Workspace.maps``) of runs or scans the catalog does not know are listed as orphans;
   a map of a known run x scan must load.

Problems (missing, damaged, mismatch) make :attr:`CheckReport.ok` false; orphans do not.

Example:
    >>> report = check_workspace(Workspace.open("ws"))  # doctest: +SKIP
    >>> report.ok, report.lines()[-1]  # doctest: +SKIP
    (True, 'checked 12 label sets, 12 mask files, 3 uncertainty maps: 0 problem(s), 0 orphan(s)')
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harmonize.errors import HarmonizeError
from storage.maps import legacy_map_path, load_uncertainty_map, map_file_path
from storage.masks import MaskStore
from storage.workspace import ORPHAN_MIN_AGE_S, Workspace

#: Finding kinds that make a workspace inconsistent (exit 1 of ``workbench check``).
PROBLEM_KINDS = ("missing", "damaged", "mismatch")
#: Finding kinds that are reported but are no error.
NOTE_KINDS = ("orphan",)

#: The last line of a report with missing or damaged files.
WAY_BACK = (
    "the way back: `workbench restore BACKUP WS --force` restores the latest backup (the workspace is moved "
    "aside, not deleted); original labels can also be re-ingested from their source"
)

_PRESENT = "annotated_present"
_MAP_ERRORS = (HarmonizeError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Finding:
    """One thing ``check`` found.

    Args:
        kind: one of :data:`PROBLEM_KINDS` or :data:`NOTE_KINDS`.
        path: the file at fault.
        message: what is wrong, in words a user can act on.
        label_set_id / scan_id: whose file it is, when known.
    """

    kind: str
    path: str
    message: str
    label_set_id: str | None = None
    scan_id: str | None = None

    def line(self) -> str:
        """Returns: ``<path>: <message>``."""
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_workspace` found, and how much it looked at."""

    label_sets: int = 0
    mask_files: int = 0
    maps: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in PROBLEM_KINDS]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.kind not in PROBLEM_KINDS]

    @property
    def ok(self) -> bool:
        """True when nothing is missing, damaged or mismatched (orphans are allowed)."""
        return not self.problems

    def summary(self) -> str:
        return (
            f"checked {self.label_sets} label sets, {self.mask_files} mask files, {self.maps} uncertainty "
            f"maps: {len(self.problems)} problem(s), {len(self.notes)} orphan(s)"
        )

    def lines(self) -> list[str]:
        """Returns: one line per problem, then one per orphan, then the summary, and the way back when
        files are missing or damaged."""
        out = [f.line() for f in self.problems] + [f.line() for f in self.notes] + [self.summary()]
        if any(f.kind in ("missing", "damaged") for f in self.problems):
            out.append(WAY_BACK)
        return out

    def to_json(self) -> dict[str, Any]:
        """Returns: the report as plain JSON types (``workbench check --json``)."""
        return {
            "ok": self.ok,
            "label_sets": self.label_sets,
            "mask_files": self.mask_files,
            "maps": self.maps,
            "problems": [asdict(f) for f in self.problems],
            "notes": [asdict(f) for f in self.notes],
            "summary": self.summary(),
        }


def check_workspace(ws: Workspace, *, decode: bool = True) -> CheckReport:
    """Check the catalog of ``ws`` against its mask store and uncertainty maps (module docstring).

    Safe while others work: it only reads, lists the files before it reads the catalog (so a label set
    committed meanwhile never makes its file look orphaned), and never holds the catalog between queries.

    Args:
        ws: the workspace.
        decode: decode every class of every mask file (default); False reads only the files' indexes
            (a truncated file is still found, a damaged blob is not).

    Returns:
        The report.

    Raises:
        CatalogError: the catalog itself is damaged.
    """
    listed = ws.masks.keys()
    maps = (
        sorted(p for p in ws.maps.glob("*/*.npz") if not p.name.startswith(".")) if ws.maps.is_dir() else []
    )
    ws.catalog.verify_tables()
    refs = ws.catalog.mask_references()
    expected = ws.catalog.expected_mask_classes()
    report = CheckReport(label_sets=len(refs), mask_files=len(listed), maps=len(maps))
    for row in refs.to_dict("records"):
        report.findings += check_label_set(ws.masks, row, expected.get(str(row["label_set_id"]), {}), decode)
    report.findings += _orphan_masks(ws.masks, listed, set(refs["mask_key"].astype(str)))
    report.findings += _check_maps(ws, maps, decode)
    return report


def check_label_set(
    store: MaskStore,
    row: Mapping[str, Any],
    expected: Mapping[str, tuple[str | None, int | None]],
    decode: bool = True,
) -> list[Finding]:
    """Check one label set's mask file.

    Args:
        store: the mask store.
        row: the label set as :meth:`storage.catalog.Catalog.mask_references` gives it.
        expected: class -> ``(coverage state, stored voxels)`` as
            :meth:`storage.catalog.Catalog.expected_mask_classes` gives it for this label set.
        decode: decode every class (else read the index only).

    Returns:
        The problems found; empty when the file is what the catalog says.
    """
    ls_id, scan_id, key = str(row["label_set_id"]), str(row["scan_id"]), str(row["mask_key"])
    whose = f"label set {ls_id} ({row['origin']}) of scan {scan_id}"

    def finding(kind: str, path: Path | str, message: str) -> Finding:
        return Finding(kind, str(path), f"{message}; {whose}", ls_id, scan_id)

    try:
        path = store.path(key)
    except HarmonizeError as e:
        return [finding("mismatch", e.path, e.problem)]
    if not path.is_file():
        return [finding("missing", path, "mask file is missing")]
    try:
        held = _held_voxels(store, key, decode)
    except HarmonizeError as e:
        return [finding("damaged", path, f"mask file is damaged: {e.problem}")]
    except OSError as e:
        return [finding("damaged", path, f"mask file cannot be read: {e.strerror or e}")]
    shape, voxels = held
    out = [finding("mismatch", path, m) for m in _class_mismatches(voxels, expected)]
    raw = row.get("shape")
    scan_shape = None if raw is None or _is_missing(raw) else tuple(int(s) for s in raw)
    if scan_shape is not None and scan_shape != shape:
        out.append(finding("mismatch", path, f"mask shape {shape} != scan shape {scan_shape}"))
    return out


def _held_voxels(store: MaskStore, key: str, decode: bool) -> tuple[tuple[int, int, int], dict[str, int]]:
    """The file's shape and class -> voxel count; with ``decode``, counted from the decoded bits.

    Raises:
        HarmonizeError: the file is damaged (naming the class when one blob is).
    """
    index = store.index(key)
    voxels = {}
    for name, entry in index.classes.items():
        if decode:
            try:
                crop, _ = store.read_crop(key, name)
            except (ValueError, RuntimeError) as e:
                if isinstance(e, HarmonizeError):
                    raise
                raise HarmonizeError(store.path(key), f"class {name!r} does not decode: {e}") from None
            counted = int(np.count_nonzero(crop))
            if counted != entry.voxels:
                raise HarmonizeError(
                    store.path(key),
                    f"class {name!r} decodes to {counted} voxels, its index says {entry.voxels}",
                )
        voxels[name] = entry.voxels
    return index.shape, voxels


def _class_mismatches(
    held: Mapping[str, int], expected: Mapping[str, tuple[str | None, int | None]]
) -> list[str]:
    """What differs between the classes a file holds and those the catalog lists."""
    out = []
    for name, (state, stored) in sorted(expected.items()):
        found = held.get(name)
        if state == _PRESENT and not found:
            out.append(f"class {name!r} is annotated_present in the catalog but not in the mask file")
        elif state != _PRESENT:
            out.append(f"class {name!r} has statistics ({stored} voxels) but is not annotated_present")
        elif stored is not None and found != stored:
            out.append(f"class {name!r}: the catalog stores {stored} voxels, the mask file holds {found}")
    for name, found in sorted(held.items()):
        if found and name not in expected:
            out.append(f"the mask file holds class {name!r} ({found} voxels) that the catalog does not list")
    return out


def _orphan_masks(store: MaskStore, listed: list[str], referenced: set[str]) -> list[Finding]:
    minutes = ORPHAN_MIN_AGE_S / 60
    return [
        Finding(
            "orphan",
            str(store.path(key)),
            f"no label set references this mask file (a killed writer's leftover); `workbench gc` removes "
            f"it once it is {minutes:g} minutes old",
        )
        for key in listed
        if key not in referenced
    ]


def _check_maps(ws: Workspace, maps: list[Path], decode: bool) -> list[Finding]:
    """Orphan maps (run or scan unknown to the catalog) and, with ``decode``, maps that do not load."""
    if not maps:
        return []
    # Every name a known run x scan's map can have: the unique one of new maps and the legacy one.
    runs: dict[str, str] = {}
    for r in ws.catalog.run_ids():
        runs.update({p.parent.name: r for p in (map_file_path(ws, r, "x:y"), legacy_map_path(ws, r, "x:y"))})
    scans: dict[str, str] = {}
    for s in ws.catalog.scan_ids(limit=max(ws.catalog.counts()["scan"], 1)):
        scans.update({p.stem: s for p in (map_file_path(ws, "r", s), legacy_map_path(ws, "r", s))})
    out = []
    for path in maps:
        run_id, scan_id = runs.get(path.parent.name), scans.get(path.stem)
        if run_id is None or scan_id is None:
            unknown = f"run {path.parent.name!r}" if run_id is None else f"scan {path.stem!r}"
            out.append(
                Finding("orphan", str(path), f"uncertainty map of {unknown}, which the catalog does not know")
            )
            continue
        if not decode:
            continue
        try:
            load_uncertainty_map(ws, run_id, scan_id, on_original_grid=False)
        except _MAP_ERRORS as e:
            out.append(
                Finding(
                    "damaged", str(path), f"uncertainty map does not load: {e}; run {run_id}", None, scan_id
                )
            )
    return out


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and pd.isna(value)
