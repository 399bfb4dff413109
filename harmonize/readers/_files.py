"""Checks every reader applies to a path before decoding it: present, a regular file (or folder), readable.

Kept in one place so that every reader names the same problems in the same words: a missing file, a broken
symbolic link (a datalad or git-annex dataset whose content was not fetched yet), something that is not a
regular file (a FIFO, a socket, a device), and a file this user may not read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from harmonize.errors import HarmonizeError

#: The problem of a symbolic link whose target does not exist.
BROKEN_LINK = "broken link (not fetched? try `datalad get` / `git annex get`)"
PERMISSION_DENIED = "permission denied (this user may not read it)"

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def path_problem(path: Path, *, folder: bool = False) -> str | None:
    """What stops ``path`` from being read as a regular file (``folder``: as a folder); None when nothing.

    Args:
        path: the file or folder.
        folder: expect a folder instead of a regular file.

    Returns:
        ``"file not found"`` / ``"folder not found"``, :data:`BROKEN_LINK`, ``"not a regular file (a
        FIFO)"`` (socket, device), ``"not a folder"``, :data:`PERMISSION_DENIED`, or None.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return BROKEN_LINK
        return "folder not found" if folder else "file not found"
    except PermissionError:
        return PERMISSION_DENIED
    except OSError as e:
        return f"cannot read it ({type(e).__name__}: {e.strerror or e})"
    if folder:
        if not stat.S_ISDIR(st.st_mode):
            return "not a folder"
        return None if os.access(path, os.R_OK | os.X_OK) else PERMISSION_DENIED
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')})"
    try:
        with open(path, "rb"):  # the one check that holds for root and for ACLs alike
            pass
    except PermissionError:
        return PERMISSION_DENIED
    except OSError as e:
        return f"cannot open it ({type(e).__name__}: {e.strerror or e})"
    return None


def require_file(path: str | Path) -> Path:
    """``path`` as a Path, or one HarmonizeError naming it and the :func:`path_problem`."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise HarmonizeError(path, problem)
    return path


def require_folder(path: str | Path) -> Path:
    """``path`` as a Path when it is a readable folder, else one HarmonizeError naming the problem."""
    path = Path(path)
    problem = path_problem(path, folder=True)
    if problem is not None:
        raise HarmonizeError(path, problem)
    return path
