"""The naming rules of ``storage.files``: the sanitiser and the one collision-free, stable name."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storage.files import MAX_READABLE_LEN, name_digest, safe_name, unique_name

_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def test_the_three_hostile_names_get_three_names() -> None:
    names = [unique_name(c, key=f"kits23:{c}") for c in ("case 1", "case_1", "case(1)")]
    assert names[1] == "case_1"  # sanitising changed nothing: the name stays readable
    assert names[0] == f"case_1-{hashlib.sha256(b'kits23:case 1').hexdigest()[:8]}"
    assert names[2] == f"case_1-{name_digest('kits23:case(1)')}"
    assert len(set(names)) == 3
    # ... while the sanitiser alone maps all three to one
    assert {safe_name(c) for c in ("case 1", "case_1", "case(1)")} == {"case_1"}


@pytest.mark.parametrize(
    "text",
    ["case_00001", "case 1", "case(1)", "", ".", "..", "../../etc", "a/b", "Müller, Hans", "x" * 300, "\x00"],
)
def test_unique_names_are_safe_stable_and_never_empty(text: str) -> None:
    name = unique_name(text)
    assert name == unique_name(text)  # stable
    assert _SAFE.fullmatch(name) and name not in (".", "..")
    assert len(name) <= MAX_READABLE_LEN + 9
    if safe_name(text) == text and len(text) <= MAX_READABLE_LEN:
        assert name == text
    else:
        assert name.endswith(f"-{name_digest(text)}")


def test_a_plain_name_never_looks_like_a_digested_one() -> None:
    # "case_1-<digest of case 1>" as a real case id must not take the name of "case 1"
    digested = unique_name("case 1")
    assert unique_name(digested) != digested
    assert unique_name("case_1-2024") == "case_1-2024"  # not 8 hex digits: plain


@pytest.mark.parametrize(("key", "other"), [("kits23:case 1", "lits:case 1"), ("a", "b")])
def test_the_digest_is_of_the_key(key: str, other: str) -> None:
    assert unique_name("case 1", key=key) != unique_name("case 1", key=other)
    assert unique_name("case_1", key=key, hashed=True) == f"case_1-{name_digest(key)}"


def test_remove_abandoned_partials_keeps_live_writers(tmp_path: Path) -> None:

    from storage.files import PARTIAL_PREFIX, remove_abandoned_partials

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    abandoned = tmp_path / "sub" / f"{PARTIAL_PREFIX}{dead_pid}-0123abcd-case_0000.nii.gz"
    mine = tmp_path / f"{PARTIAL_PREFIX}{os.getpid()}-0123abcd-case_0001.nii.gz"
    other = tmp_path / f"{PARTIAL_PREFIX}case_0002"  # not an atomic_path temp file: not ours to judge
    for p in (abandoned, mine, other):
        p.write_bytes(b"x")
    assert remove_abandoned_partials(tmp_path) == [abandoned]
    assert mine.exists() and other.exists()
