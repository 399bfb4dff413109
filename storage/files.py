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
