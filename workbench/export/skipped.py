"""Damaged cases in an export: skipped with one line, listed under ``"skipped"`` in the manifest.

A case whose CT is missing or unreadable, or whose mask file is damaged (the mask store raises
:class:`~harmonize.errors.HarmonizeError` for a truncated file or a CRC mismatch), must not stop an export
half-way: every export reads a case completely before it writes any of its files, and a read that fails
with one of :data:`READ_ERRORS` turns into a :func:`skipped_case` entry. Files an earlier export left under
the skipped case's names are removed (:func:`remove_stale`), so the folder matches its manifest.

Example:
    >>> e = skipped_case("kits23:case_1", "kits23_case_1", HarmonizeError("m.masks", "truncated"))
    >>> skip_line(e)
    'skipped kits23:case_1 (kits23_case_1): m.masks: truncated'
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harmonize.errors import HarmonizeError

#: What reading one case may raise for a damaged or missing file (readers and the mask store raise
#: HarmonizeError; the operating system OSError, e.g. permission denied).
READ_ERRORS: tuple[type[Exception], ...] = (HarmonizeError, OSError)


def skipped_case(scan_id: str, case: str, error: Exception) -> dict[str, str]:
    """The manifest entry of a case that could not be read.

    Args:
        scan_id: catalog scan id.
        case: the name the case would have had in the export.
        error: what reading it raised (one of :data:`READ_ERRORS`).

    Returns:
        ``{"case", "scan_id", "file", "problem"}``.
    """
    if isinstance(error, HarmonizeError):
        file, problem = error.path, error.problem
    elif isinstance(error, OSError):
        file, problem = str(error.filename or ""), error.strerror or str(error)
    else:
        file, problem = "", str(error)
    return {"case": case, "scan_id": scan_id, "file": file, "problem": problem}


def skip_line(entry: dict[str, Any]) -> str:
    """The one line that reports a skipped case (:func:`skipped_case`).

    Args:
        entry: a ``"skipped"`` entry of a manifest.

    Returns:
        ``skipped <scan> (<case>): <file>: <problem>``.
    """
    where = f"{entry['file']}: " if entry.get("file") else ""
    return f"skipped {entry['scan_id']} ({entry['case']}): {where}{entry['problem']}"


def remove_stale(paths: Iterable[Path]) -> None:
    """Remove what an earlier export wrote under a skipped case's names (files or folders; missing is
    fine).

    Args:
        paths: the case's files or folder in this export.
    """
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
