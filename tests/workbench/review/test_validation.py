"""Review input checks: reviewer names, comments, escaping (``workbench.review.validation``)."""

from __future__ import annotations

import pytest

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench import review

SCAN = "btcv:demo000"


@pytest.mark.parametrize("name", ["Dr Ada Lovelace", "ana.o'neil", "reviewer_2", "Zoë Müller", "a@b-c"])
def test_good_reviewer_names_pass(ws: Workspace, name: str) -> None:
    assert review.validate_reviewer(ws, f"  {name} ") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "<b>x</b>",
        "<script>alert(1)</script>",
        "a/b",
        "..\\x",
        'Bob "x"',
        "Ann\x00",
        "x" * 65,
        "tab\there",
        "&amp;",
    ],
)
def test_bad_reviewer_names_are_refused_and_nothing_is_stored(ws: Workspace, name: str) -> None:
    ls = review.current_label_set(ws, SCAN, "kidney_left")
    assert ls is not None
    with pytest.raises(HarmonizeError, match="reviewer name"):
        review.record_decision(ws, SCAN, "kidney_left", ls, "accept", name)
    assert ws.catalog.counts()["review"] == 0


def test_escape_neutralises_markup() -> None:
    assert review.escape("<b>x</b> & 'y'", markdown=False) == "&lt;b&gt;x&lt;/b&gt; &amp; &#x27;y&#x27;"
    assert review.escape("<b>x</b> & 'y'") == "&lt;b&gt;x&lt;\\/b&gt; &amp; &#x27;y&#x27;"  # and Markdown
