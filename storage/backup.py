"""``workbench backup`` and ``workbench restore``: a consistent snapshot of a workspace while others work.

A backup is a folder laid out like a workspace, plus a manifest::

    OUT/catalog.duckdb          the catalog at one point in time (Catalog.snapshot_to: COPY FROM DATABASE
                                in one transaction, under the catalog's write lock)
    OUT/masks/<key>.masks       every mask file a label set of that snapshot references
    OUT/uncertainty/<run>/<scan>.npz   the uncertainty maps
    OUT/manifest.json           sha256 and size of every file, counts, schema version, time

The order makes it consistent without stopping anyone: mask files are published before the label set row
that names them and never change afterwards, so every file the snapshot references exists when it is
copied. The folder is built as ``OUT.partial-<pid>-<token>`` and renamed to ``OUT`` at the end: a killed
backup leaves no ``OUT`` that looks complete.

Files are copied, not hard-linked, by default: a hard link shares the bytes, so damage done to a mask
file in place (a truncation, a bad disk sector) would reach every backup too. ``link=True`` hard-links
masks and maps where the filesystem allows (fast, no space; it still protects against deletion). The
catalog is always a copy of its own.

:func:`restore_backup` checks the manifest first, builds the workspace beside the target and renames it
into place; an occupied target is refused unless ``force``, which moves it aside (never deletes it).

Example:
    >>> result = backup_workspace(Workspace.open("ws"), "backups/2024-06-01")  # doctest: +SKIP
    >>> restore_backup("backups/2024-06-01", "ws-restored").workspace  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from harmonize.errors import HarmonizeError
from storage.catalog import Catalog
from storage.check import Finding
from storage.files import atomic_write_json, file_sha256
from storage.masks import MaskStore, _fsync_dir
from storage.workspace import Workspace

MANIFEST = "manifest.json"
CATALOG = "catalog.duckdb"
FORMAT = "workbench-backup"
FORMAT_VERSION = 1


class BackupError(RuntimeError):
    """A backup that cannot be written, verified or restored; the message names the file and the problem."""


@dataclass
class BackupResult:
    """What :func:`backup_workspace` wrote."""

    path: Path
    schema_version: int
    label_sets: int
    mask_files: int
    maps: int
    bytes: int
    missing: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Returns: one line per mask file that was missing in the workspace, then the summary."""
        out = [
            f"{p}: referenced by the catalog but missing in the workspace, so missing in the backup too "
            "(run `workbench check`)"
            for p in self.missing
        ]
        out.append(
            f"backed up the catalog (schema v{self.schema_version}, {self.label_sets} label sets), "
            f"{self.mask_files} mask files and {self.maps} uncertainty maps to {self.path} "
            f"({self.bytes / 1e6:.1f} MB; {MANIFEST} lists the sha256 of every file)"
        )
        return out


@dataclass
class RestoreResult:
    """What :func:`restore_backup` did."""

    workspace: Path
    files: int
    moved_aside: Path | None = None

    def lines(self) -> list[str]:
        out = [f"restored {self.files} files into {self.workspace}"]
        if self.moved_aside is not None:
            out.append(f"the previous contents of {self.workspace} were moved to {self.moved_aside}")
        return out


def backup_workspace(ws: Workspace, out: str | Path, *, link: bool = False) -> BackupResult:
    """Write a consistent backup of ``ws`` (catalog, referenced mask files, uncertainty maps) to ``out``.

    Others may keep working meanwhile: the catalog copy holds the file only for the copy itself.

    Args:
        ws: the workspace.
        out: the backup folder; must not exist.
        link: hard-link mask files and maps instead of copying them (module docstring).

    Returns:
        What was written; ``missing`` lists referenced mask files the workspace lacked.

    Raises:
        BackupError: ``out`` exists. CatalogError / CatalogBusy: the catalog is damaged / held too long.
    """
    out = Path(out).absolute()
    if out.exists():
        raise BackupError(f"{out}: exists; a backup goes into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        result = _write_backup(ws, staging, link)
        if out.exists():
            raise BackupError(f"{out}: appeared while the backup was written; it is left as it was")
        os.rename(staging, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.path = out
    return result


def _write_backup(ws: Workspace, staging: Path, link: bool) -> BackupResult:
    """Fill ``staging`` with the snapshot, its mask files, the maps and the manifest."""
    ws.catalog.snapshot_to(staging / CATALOG)
    snapshot = Catalog(staging / CATALOG)
    tables = snapshot.verify_tables()
    keys = sorted(set(snapshot.mask_references()["mask_key"].astype(str)))
    schema_version = snapshot.schema_version
    (staging / "masks").mkdir()
    placed, missing = [], []
    for key in keys:
        src = ws.masks.path(key)
        try:
            _place(src, staging / "masks" / src.name, link)
        except FileNotFoundError:
            missing.append(src)
            continue
        placed.append(f"masks/{src.name}")
    maps = _copy_maps(ws.maps, staging / ws.maps.name, link)
    files = {rel: _describe(staging / rel) for rel in [CATALOG, *placed, *maps]}
    for folder in {(staging / rel).parent for rel in files}:
        _fsync_dir(folder)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema_version": schema_version,
        "counts": {
            "tables": tables,
            "mask_files": len(placed),
            "maps": len(maps),
            "missing_masks": len(missing),
        },
        "missing_masks": [p.name for p in missing],
        "files": files,
    }
    atomic_write_json(staging / MANIFEST, manifest)
    _fsync_dir(staging)
    return BackupResult(
        path=staging,
        schema_version=schema_version,
        label_sets=tables.get("label_set", 0),
        mask_files=len(placed),
        maps=len(maps),
        bytes=sum(int(f["bytes"]) for f in files.values()),
        missing=missing,
    )


def _copy_maps(src_root: Path, dst_root: Path, link: bool) -> list[str]:
    """Copy every published map ``<run>/<scan>.npz`` (not the temp files of writers in flight).

    Returns:
        Their paths relative to the backup folder.
    """
    if not src_root.is_dir():
        return []
    out = []
    for src in sorted(src_root.glob("*/*.npz")):
        if src.name.startswith(".") or src.parent.name.startswith("."):
            continue
        dst = dst_root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            _place(src, dst, link)
        except FileNotFoundError:
            continue  # replaced or removed between listing and copying: the next backup has it
        out.append(dst.relative_to(dst_root.parent).as_posix())
    return out


def _place(src: Path, dst: Path, link: bool) -> None:
    """Hard-link (``link``, where the filesystem allows) or copy ``src`` to ``dst``, durably.

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    if link:
        try:
            os.link(src, dst)
            return
        except FileNotFoundError:
            raise
        except OSError:
            pass  # another filesystem, or no hard links there: copy
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _describe(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------------------ verify


def read_manifest(backup: str | Path) -> dict[str, Any]:
    """The manifest of a backup folder.

    Raises:
        BackupError: no manifest, not JSON, or not a workbench backup.
    """
    path = Path(backup) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{path}: missing; {backup} is not a finished workbench backup") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{path}: cannot be read: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not the manifest of a workbench backup")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(f"{path}: backup format v{manifest['format_version']} is newer than this workbench")
    if not isinstance(manifest.get("files"), dict) or CATALOG not in manifest["files"]:
        raise BackupError(f"{path}: lists no {CATALOG}")
    return manifest


def verify_backup(backup: str | Path) -> list[str]:
    """Check every file of a backup against its manifest (existence, size, sha256).

    Args:
        backup: the backup folder.

    Returns:
        One line per problem (``<file>: <problem>``); empty when the backup is intact.

    Raises:
        BackupError: the manifest itself is missing or unusable.
    """
    root = Path(backup)
    manifest = read_manifest(root)
    problems = []
    for rel, want in sorted(manifest["files"].items()):
        path = root / rel
        if not _inside(root, path):
            problems.append(f"{path}: lies outside the backup folder")
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if size != int(want["bytes"]):
            problems.append(f"{path}: {size} bytes, the manifest says {want['bytes']} (damaged)")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (damaged)")
    return problems


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


# ----------------------------------------------------------------------------------------- restore


def restore_backup(
    backup: str | Path, target: str | Path, *, force: bool = False, link: bool = False
) -> RestoreResult:
    """Restore a backup into the workspace folder ``target``.

    The manifest is verified first; the workspace is built beside ``target`` and renamed into place, so
    a killed restore leaves ``target`` as it was.

    Args:
        backup: the backup folder (:func:`backup_workspace`).
        target: the workspace folder to create.
        force: when ``target`` is not empty, move it aside to ``<target>.before-restore-<time>`` (never
            deleted); refused while another process holds its catalog.
        link: hard-link mask files and maps from the backup (the catalog is always copied).

    Returns:
        What was restored, and where the old contents went.

    Raises:
        BackupError: the backup does not match its manifest, ``target`` is occupied (without ``force``)
            or in use. CatalogError: the restored catalog does not open (e.g. from a newer workbench).
    """
    root, target = Path(backup).absolute(), Path(target).absolute()
    problems = verify_backup(root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupError(
            f"{root}: not restored, the backup does not match its manifest: {problems[0]}{more}"
        )
    occupied = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if occupied and not force:
        raise BackupError(
            f"{target}: not empty; restore into a new folder, or pass --force to move it aside "
            "(nothing is deleted)"
        )
    if occupied and _in_use(target / CATALOG):
        raise BackupError(f"{target / CATALOG}: another process has the catalog open; stop it, then restore")
    files = sorted(read_manifest(root)["files"])
    staging = target.with_name(f"{target.name}.partial-restore-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    aside = None
    try:
        _restore_files(root, staging, files, link)
        Catalog(staging / CATALOG)  # opens it (and migrates an older backup's schema) before it counts
        if occupied:
            aside = _aside_name(target)
            os.rename(target, aside)
        elif target.exists():
            target.rmdir()
        os.rename(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        if aside is not None and not target.exists():
            os.rename(aside, target)
            aside = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreResult(target, len(files), aside)


def _restore_files(root: Path, staging: Path, files: Iterable[str], link: bool) -> None:
    folders = {staging}
    for rel in files:
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _place(root / rel, dst, link and rel != CATALOG)
        folders.add(dst.parent)
    for folder in folders:
        _fsync_dir(folder)


def _aside_name(target: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = target.with_name(f"{target.name}.before-restore-{stamp}")
    return aside if not aside.exists() else aside.with_name(f"{aside.name}-{uuid.uuid4().hex[:6]}")


def _in_use(catalog: Path) -> bool:
    """True when another process holds ``catalog`` open (DuckDB's file lock); a damaged or missing file
    is not in use (it may be why the workspace is being restored)."""
    if not catalog.is_file():
        return False
    try:
        duckdb.connect(str(catalog), read_only=True).close()
    except duckdb.IOException as e:
        return "lock" in str(e).lower()
    except duckdb.Error:
        return False
    return False


# ------------------------------------------------------------------------------------------ repair


def repair_masks(ws: Workspace, backup: str | Path, findings: Iterable[Finding]) -> list[str]:
    """Put back, from a backup, the mask files that ``check`` found missing or damaged, leaving the rest
    of the workspace (and work done since the backup) as it is.

    A mask file never changes once published, so the backup's copy of a label set's file is that file.
    The backup's copy is verified against its manifest, then written through the mask store
    (``overwrite=True``, atomically).

    Args:
        ws: the workspace.
        backup: a backup folder (:func:`backup_workspace`).
        findings: :attr:`storage.check.CheckReport.problems`; only ``missing`` and ``damaged`` findings of
            mask files are acted on.

    Returns:
        One line per file: restored, or why not (not in the backup, damaged there too).
    """
    root = Path(backup).absolute()
    files = read_manifest(root)["files"]
    source = MaskStore(root / "masks")
    lines = []
    for f in findings:
        path = Path(f.path)
        if f.kind not in ("missing", "damaged") or f.label_set_id is None or path.parent != ws.masks.root:
            continue
        rel = f"masks/{path.name}"
        if rel not in files:
            lines.append(f"{path}: not in the backup {root}; not repaired")
            continue
        if file_sha256(root / rel) != files[rel]["sha256"]:
            lines.append(f"{root / rel}: differs from its manifest (damaged); {path} not repaired")
            continue
        key = path.name.removesuffix(".masks")
        try:
            masks, shape = source.read_many(key), source.index(key).shape
        except HarmonizeError as e:
            lines.append(f"{e.path}: damaged in the backup too ({e.problem}); {path} not repaired")
            continue
        ws.masks.write_label_set(key, masks, shape, overwrite=True)
        lines.append(f"{path}: restored from {root}")
    return lines
