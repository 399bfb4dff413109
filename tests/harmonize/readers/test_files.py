"""What every reader says before decoding: missing, broken link, not a regular file, permission denied."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

import harmonize.readers._files as files
from harmonize.errors import HarmonizeError
from harmonize.readers import read_nifti, read_nrrd, read_volume


def _broken_link(path: Path) -> None:
    path.symlink_to(path.parent / ".git" / "annex" / "objects" / "not-fetched")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd"])
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (None, "file not found"),
        (_broken_link, "broken link (not fetched? try `datalad get` / `git annex get`)"),
        (_fifo, "not a regular file (a FIFO)"),
    ],
)
def test_readers_name_what_is_wrong_with_the_path(tmp_path: Path, name: str, make, problem: str) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    reader = read_nifti if name.endswith(".nii.gz") else read_nrrd
    for read in (reader, read_volume):
        with pytest.raises(HarmonizeError) as err:
            read(path)
        assert err.value.path == str(path)
        assert err.value.problem == problem or (make is None and "not found" in err.value.problem)


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    _folder(tmp_path / "ct.nii.gz")
    with pytest.raises(HarmonizeError, match="a folder, not a file"):
        read_nifti(tmp_path / "ct.nii.gz")


def test_permission_denied_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root may read any file, so the refusal is simulated at the readers' open."""
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"x")

    def refuse(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(files, "open", refuse, raising=False)
    with pytest.raises(HarmonizeError, match=r": permission denied"):
        read_volume(path)
    assert files.path_problem(tmp_path, folder=True) is None
