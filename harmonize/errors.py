"""One exception type for bad input: it names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class HarmonizeError(ValueError):
    """Bad input: an unreadable file, a geometry mismatch, an unknown label value, ...

    Args:
        path: the file (or folder) at fault.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
