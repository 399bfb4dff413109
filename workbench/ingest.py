"""``workbench ingest SOURCE ROOT``: harmonize a dataset folder into the workspace.

Per case, in this order, so that a kill at any point leaves nothing half-written:

1. read and harmonize the case in memory (``harmonize.harmonize_case``);
2. write its masks to the mask store under a fresh key (atomic file rename);
3. write scan, label set, coverage, statistics and split decisions in ONE catalog transaction.

A kill between 2 and 3 leaves an orphan mask file that no label set references; ``workbench gc`` removes it
once it is old enough that no writer can still be about to commit it
(:meth:`storage.workspace.Workspace.collect_garbage`). An ingest never removes a published mask file: it
cannot know whether a reviewer or a pseudo-label job beside it is about to commit one. Re-ingesting the same
files changes nothing: a case whose image and label have the size and modification time on record is skipped
without reading, and one whose content hashes match is skipped after reading. A case whose label file changed
gets a new ``original`` label set version; the old one stays. A tool's output (a protocol with
``default_origin = "pseudo"``) is stored as a ``pseudo`` label set of the tool's run, with its uncertainty
rows in the same transaction (``workbench.pseudolabel.tool_runs``).

Bad input (see ``harmonize.errors.HarmonizeError``) skips that case with one clear message; the rest of
the ingest goes on and the summary lists what was skipped. A case the layout finds but cannot read before
opening a file is skipped the same way and counted: an image that is a broken link (a datalad or git-annex
dataset not fetched yet), a label without its image.

Case ids are the dataset's published case identifiers (the ``{case}`` part of the layout, e.g.
``case_00012``): stored as they are, in the scan id and wherever the scan is named. A folder whose names
may identify a patient is ingested with ``hash_case_ids=True`` (``workbench ingest --hash-case-ids``):
the case id is then :func:`hashed_case_id` (``h`` + 16 hex digits of the SHA-256 of the name, unsalted so
a re-ingest finds its scans), also in the paths of ``ingest_issue``; only ``scan.image_path`` and
``scan.label_path`` keep the real paths, since the CT is read again from there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harmonize.errors import HarmonizeError
from harmonize.harmonizer import HarmonizedCase, harmonize_case
from harmonize.layout import LABEL_WITHOUT_IMAGE, CaseFiles, find_cases
from harmonize.protocols import Protocol, get_protocol
from harmonize.volume import Volume
from storage.catalog import LabelSetRecord, ScanRecord, new_label_set_id
from storage.workspace import Workspace
from workbench.pseudolabel.tool_runs import ingest_origin, tool_output_rows, tool_run_id


@dataclass
class IngestSummary:
    """What an ingest did; ``skipped`` holds ``(path, problem)`` for every case it could not take."""

    source: str
    found: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.found} cases found, {len(self.added)} added, {len(self.updated)} with new "
            f"labels, {len(self.unchanged)} unchanged, {len(self.excluded)} excluded by inclusion rules, "
            f"{len(self.skipped)} skipped"
        ]
        out += [f"  skipped {path}: {problem}" for path, problem in self.skipped]
        return out


def scan_id_for(source_id: str, case_id: str) -> str:
    """The catalog id of a scan: ``<source>:<case>``."""
    return f"{source_id}:{case_id}"


def hashed_case_id(case_id: str) -> str:
    """The case id stored for ``case_id`` under ``--hash-case-ids``: ``h`` + the first 16 hex digits of
    its SHA-256 (unsalted: the same folder gets the same id in every ingest)."""
    return "h" + hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:16]


def _stat(path: Path) -> tuple[int, float]:
    """(bytes, mtime) of a file, or of all files in a folder (DICOM series, per-class folders)."""
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()]
        return sum(p.stat().st_size for p in files), max((p.stat().st_mtime for p in files), default=0.0)
    st = path.stat()
    return st.st_size, st.st_mtime


def volume_sha256(volume: Volume) -> str:
    """Content hash of a volume: its voxel values (dtype included) and affine, not the file's bytes, so
    the same CT stored as .nii and .nii.gz (LiTS and MSD Task03) is recognised as one scan."""
    h = hashlib.sha256()
    h.update(str(volume.array.dtype).encode())
    h.update(str(volume.shape).encode())
    h.update(np.ascontiguousarray(np.round(volume.affine, 4)).tobytes())
    # Hash the voxels in Fortran (NIfTI) order: free for nibabel's arrays, one copy for the others.
    h.update(np.asfortranarray(volume.array).T.data)
    return h.hexdigest()


def files_sha256(path: Path) -> str:
    """Hash of a label file, or of every file in a label folder (name and bytes)."""
    h = hashlib.sha256()
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with p.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def ingest(
    ws: Workspace,
    source_id: str,
    root: str | Path,
    *,
    progress: bool = True,
    hash_case_ids: bool = False,
    on_case: Callable[[CaseFiles, str], None] | None = None,
) -> IngestSummary:
    """Harmonize every case of ``source_id`` under ``root`` into workspace ``ws``.

    Args:
        ws: the workspace.
        source_id: a built-in source id (``workbench sources`` lists them).
        root: the dataset folder in its published layout.
        progress: show a tqdm progress bar on stderr.
        hash_case_ids: store :func:`hashed_case_id` of every case id instead of the folder or file name
            (for folders whose names may identify a patient; see the module docstring).
        on_case: called with ``(case, outcome)`` after each case (outcome: added, updated, unchanged,
            excluded, skipped); used by tests to interrupt an ingest.

    Raises:
        KeyError: unknown source id.
        HarmonizeError: ``root`` is not a folder of that source (nothing matches its layout).
    """
    protocol = get_protocol(source_id)
    root = Path(root).resolve()
    cases = find_cases(protocol, root)
    known, hashes = ws.catalog.begin_ingest(
        protocol.id,
        protocol.name,
        protocol.protocol_version,
        protocol.annotated,
        protocol.merged_pairs,
        protocol.layout.kind,
        protocol.reference,
    )
    ws.masks.gc()  # temp files of dead writers; published mask files are `workbench gc`'s business
    summary = IngestSummary(protocol.id, found=len(cases))
    for case in tqdm(cases, desc=f"ingest {protocol.id}", unit="scan", disable=not progress):
        if hash_case_ids:
            case = replace(case, case_id=hashed_case_id(case.case_id))
        outcome = _ingest_case(ws, protocol, case, summary, known, hashes, hashed=hash_case_ids)
        if on_case is not None:
            on_case(case, outcome)
    return summary


def _ingest_case(
    ws: Workspace,
    protocol: Protocol,
    case: CaseFiles,
    summary: IngestSummary,
    known: dict[str, dict],
    hashes: set[str],
    *,
    hashed: bool = False,
) -> str:
    scan_id = scan_id_for(protocol.id, case.case_id)
    if case.excluded:
        summary.excluded.append(scan_id)
        return "excluded"
    if case.problem is not None:
        if case.problem == LABEL_WITHOUT_IMAGE:
            at, problem = case.label, f"{case.problem} (no {case.image})"
        else:
            at, problem = case.image, case.problem
        _skip(ws, protocol.id, summary, str(at), problem, case if hashed else None)
        return "skipped"
    existing = known.get(case.case_id)
    has_labels = existing is not None and existing.get("ls_id") is not None
    try:
        if has_labels and case.label.exists():
            assert existing is not None
            if _stat(case.image) == (existing["image_bytes"], existing["image_mtime"]) and _stat(
                case.label
            ) == (existing["ls_label_bytes"], existing["ls_label_mtime"]):
                summary.unchanged.append(scan_id)
                return "unchanged"
        image, harmonized = harmonize_case(protocol, case)
        image_sha = volume_sha256(image)
        label_sha = files_sha256(case.label)
        if existing is not None:
            if existing["image_sha256"] != image_sha:
                raise HarmonizeError(
                    case.image,
                    f"case {case.case_id} is already in the catalog with a different image "
                    f"({existing['image_path']}); remove it first or give the new one another case id",
                )
            if has_labels and existing["ls_label_sha256"] == label_sha:
                summary.unchanged.append(scan_id)
                return "unchanged"
        elif image_sha in hashes:
            dup = ws.catalog.scans_by_sha(image_sha).iloc[0]
            raise HarmonizeError(
                case.image,
                f"the same image is already in the catalog as scan {dup['id']} ({dup['image_path']})",
            )
        parent = None
        if existing is not None and has_labels:
            # the new version follows every label set of the scan (pseudo and revised ones too)
            parent = {"id": existing["ls_id"], "version": existing["ls_max_version"]}
        _store(
            ws,
            protocol,
            case,
            image,
            harmonized,
            image_sha,
            label_sha,
            scan_is_new=existing is None,
            parent=parent,
        )
        hashes.add(image_sha)
    except HarmonizeError as e:
        _skip(ws, protocol.id, summary, e.path, e.problem, case if hashed else None)
        return "skipped"
    except (OSError, MemoryError) as e:
        _skip(ws, protocol.id, summary, str(case.image), _os_problem(e), case if hashed else None)
        return "skipped"
    if existing is None:
        summary.added.append(scan_id)
        return "added"
    summary.updated.append(scan_id)
    return "updated"


def _os_problem(e: BaseException) -> str:
    """One line for an OS error met while reading a case (permission denied said in words)."""
    if isinstance(e, PermissionError):
        return "permission denied (this user may not read it)"
    return f"{type(e).__name__}: {e}"


def _skip(
    ws: Workspace,
    source_id: str,
    summary: IngestSummary,
    path: str,
    problem: str,
    hashed_case: CaseFiles | None,
) -> None:
    """Record a skipped case in the summary and in ``ingest_issue``; under ``--hash-case-ids``
    (``hashed_case`` given) the stored path names the case by its hashed id, never its folder name."""
    summary.skipped.append((path, problem))
    if hashed_case is not None:
        original = hashed_case.fields.get("case", "")
        if original:
            path, problem = (
                path.replace(original, hashed_case.case_id),
                problem.replace(original, hashed_case.case_id),
            )
    ws.catalog.log_issue(source_id, path, problem)


def _store(
    ws: Workspace,
    protocol: Protocol,
    case: CaseFiles,
    image: Volume,
    hc: HarmonizedCase,
    image_sha: str,
    label_sha: str,
    *,
    scan_is_new: bool,
    parent: dict | None,
) -> None:
    scan_id = scan_id_for(protocol.id, case.case_id)
    image_bytes, image_mtime = _stat(case.image)
    label_bytes, label_mtime = _stat(case.label)
    scan = None
    if scan_is_new:
        arr = image.array
        scan = ScanRecord(
            id=scan_id,
            source_id=protocol.id,
            case_id=case.case_id,
            image_path=str(case.image),
            label_path=str(case.label),
            image_sha256=image_sha,
            image_bytes=image_bytes,
            image_mtime=image_mtime,
            shape=image.shape,
            spacing=image.spacing,
            axcodes="".join(image.axcodes),
            affine=tuple(float(v) for v in image.affine.ravel()),
            hu_min=float(arr.min()),
            hu_max=float(arr.max()),
            image_format=image.meta.get("format"),
            series_uid_sha1=image.meta.get("series_uid_sha1"),
        )
    ls_id = new_label_set_id()
    ws.masks.write_label_set(ls_id, dict(hc.masks), hc.shape)
    record = LabelSetRecord(
        id=ls_id,
        scan_id=scan_id,
        version=1 if parent is None else int(parent["version"]) + 1,
        origin=ingest_origin(protocol),  # a tool's output is a pseudo-label of the tool's run
        mask_key=ls_id,
        parent_id=None if parent is None else parent["id"],
        run_id=tool_run_id(protocol),
        author=f"{protocol.id} protocol v{protocol.protocol_version}",
        protocol_version=protocol.protocol_version,
        label_sha256=label_sha,
        label_bytes=label_bytes,
        label_mtime=label_mtime,
        midline_x_mm=hc.midline_x_mm,
        midline_method=hc.midline_method,
        native_voxels=hc.native_voxels,
        notes=tuple(hc.notes),
    )
    try:
        ws.catalog.add_label_set(
            record,
            hc.coverage,
            [s.as_dict() for s in hc.stats.values()],
            [d.as_dict() for d in hc.splits],
            scan=scan,
            uncertainty=tool_output_rows(ws, protocol, scan_id, ls_id, hc, image),
        )
    except BaseException:
        ws.masks.delete(ls_id)  # the catalog refused: do not leave an orphan behind
        raise
