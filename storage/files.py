"""Files in the workspace and in exports: atomic writes, content hashes, safe names.

Every file the workbench publishes (an export's NIfTI and manifest, an uncertainty map, a checkpoint) is
written to a temporary sibling first and moved into place with one ``os.replace``, so a reader or a
process killed mid-write never leaves a half-written file under the final name.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "manifest.json"
    >>> atomic_write_json(out, {"cases": 2})
    >>> out.read_text()
    '{\\n "cases": 2\\n}'
    >>> safe_name("kits23:case 00001")
    'kits23_case_00001'
    >>> unique_name("case_1"), unique_name("case 1", key="kits23:case 1")
    ('case_1', 'case_1-4f46fb0a')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Prefix of the temporary sibling of a file being written; what follows keeps the final name's suffix
#: (``.nii.gz``), so format-sniffing writers (nibabel) write the right format.
PARTIAL_PREFIX = ".partial-"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Hex digits of the SHA-256 that :func:`unique_name` appends to a name sanitising changed.
NAME_DIGEST_LEN = 8
#: The longest readable part of a :func:`unique_name` (file names end at 255 bytes; exports add suffixes).
MAX_READABLE_LEN = 120
_DIGEST_SUFFIX = re.compile(rf"-[0-9a-f]{{{NAME_DIGEST_LEN}}}$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; moved onto ``path`` when the block succeeds, removed
    when it raises. The file is flushed to disk (fsync) before the move.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(p) as tmp:
        ...     _ = tmp.write_text("done")
        >>> p.read_text()
        'done'
    """
    path = Path(path)
    tmp = path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_PARTIAL_FILE = re.compile(re.escape(PARTIAL_PREFIX) + r"(\d+)-[0-9a-f]{8}-.+")


def remove_abandoned_partials(root: str | Path) -> list[Path]:
    """Remove the temporary files under ``root`` that :func:`atomic_path` writers left when they were
    killed: a ``.partial-<pid>-...`` file whose process is no longer running. A live writer's file stays.

    For folders only this machine writes (exports, the workspace), so a pid names a process here.

    Returns:
        The removed paths, sorted.
    """
    removed = []
    for p in Path(root).rglob(f"{PARTIAL_PREFIX}*"):
        m = _PARTIAL_FILE.fullmatch(p.name)
        if m is None or not p.is_file() or _pid_alive(int(m.group(1))):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return sorted(removed)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (non-JSON values as ``str``) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def safe_name(text: str, *, colon: str = "_") -> str:
    """A file-system-safe name: ``:`` becomes ``colon``, every run of other characters than letters,
    digits, ``.``, ``_`` and ``-`` becomes ``_``, leading and trailing dots and underscores go; an empty
    result is ``case``. The one sanitiser for every file and folder named after a scan, case or run.

    Example:
        >>> safe_name("kits23:case_00001", colon="__")
        'kits23__case_00001'
        >>> safe_name("../..")
        'case'
    """
    return _UNSAFE.sub("_", text.replace(":", colon)).strip("._") or "case"


def name_digest(key: str) -> str:
    """The short stable digest :func:`unique_name` appends: the first :data:`NAME_DIGEST_LEN` hex digits
    of the SHA-256 of ``key`` (UTF-8).

    Args:
        key: the original identifier, e.g. a scan id ``kits23:case 1``.

    Returns:
        8 lowercase hex digits.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:NAME_DIGEST_LEN]


def unique_name(text: str, *, key: str | None = None, hashed: bool = False) -> str:
    """The one collision-free, stable file name of an identifier.

    ``text`` itself when :func:`safe_name` leaves it unchanged (and it is at most
    :data:`MAX_READABLE_LEN` characters and does not already end like a digest); otherwise its sanitised
    form (cut to :data:`MAX_READABLE_LEN`) plus ``-`` and :func:`name_digest` of ``key``. A plain name
    never ends in ``-<8 hex>`` and a digested one always does, so two different identifiers get different
    names (``case_1``, ``case 1`` and ``case(1)`` give three); the same identifier always gets the same
    name.

    Args:
        text: the identifier to name a file or folder after (a case id, a scan id, a run id).
        key: what the digest is taken of (default ``text``); pass the full scan id when ``text`` is only
            its case part, so the digest tells scans of different sources apart.
        hashed: append the digest even to a safe ``text`` (a caller that knows the plain form would be
            ambiguous).

    Returns:
        The name: letters, digits, ``.``, ``_`` and ``-`` only, never empty, never ``.`` or ``..``.

    Example:
        >>> unique_name("case(1)", key="kits23:case(1)")
        'case_1-33ab432a'
        >>> unique_name("../..")
        'case-0cfd1c96'
    """
    readable = safe_name(text)
    plain = readable == text and len(text) <= MAX_READABLE_LEN and not _DIGEST_SUFFIX.search(text)
    if plain and not hashed:
        return text
    return f"{readable[:MAX_READABLE_LEN]}-{name_digest(text if key is None else key)}"
