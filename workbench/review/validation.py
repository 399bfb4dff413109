"""The checks every review write runs before it stores anything, and the lookups that refuse unknown ids.

What a reviewer types (name, comment, an upload's file name) is checked here, and so are the ids a write
names (class, scan, label set): each failure is one :class:`~harmonize.errors.HarmonizeError` that says
what is wrong, raised before anything is written. :func:`escape` is the one way typed (or file-controlled)
text reaches a page.

Example:
    >>> escape("<b>Dr Ada</b>")
    '&lt;b&gt;Dr Ada&lt;\\\\/b&gt;'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_by_name
from storage.workspace import Workspace

MAX_REVIEWER_LEN = 64
MAX_COMMENT_LEN = 2000
#: The most characters an uploaded correction's file name may have.
MAX_UPLOAD_NAME_LEN = 200

# Letters (any script), digits, space and . ' - _ @ only: no markup, quotes or control characters.
_REVIEWER_RE = re.compile(r"[^\W][\w .'@-]*", re.UNICODE)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def validate_reviewer(ws: Workspace, reviewer: str) -> str:
    """Check a reviewer name.

    Args:
        ws: the workspace (its catalog is named in the error).
        reviewer: the name as typed.

    Returns:
        The name stripped.

    Raises:
        HarmonizeError: the name is empty, longer than :data:`MAX_REVIEWER_LEN`, or holds markup, quotes,
            slashes or control characters.
    """
    name = reviewer.strip() if isinstance(reviewer, str) else ""
    if not name or len(name) > MAX_REVIEWER_LEN or not _REVIEWER_RE.fullmatch(name):
        raise HarmonizeError(
            ws.catalog.path,
            f"reviewer name {reviewer!r} is not allowed: use 1-{MAX_REVIEWER_LEN} letters, digits, spaces "
            "and . ' - _ @ (no markup, quotes, slashes or control characters)",
        )
    return name


def validate_comment(ws: Workspace, comment: str | None) -> str:
    """Check a comment. Markup is kept as text: displays escape it (:func:`escape`).

    Args:
        ws: the workspace (its catalog is named in the error).
        comment: the comment as typed (None counts as '').

    Returns:
        The comment stripped.

    Raises:
        HarmonizeError: control characters (tab and newline are fine) or more than
            :data:`MAX_COMMENT_LEN` characters.
    """
    text = (comment or "").strip()
    if len(text) > MAX_COMMENT_LEN or _CONTROL_RE.search(text):
        raise HarmonizeError(
            ws.catalog.path,
            f"comment is not allowed: at most {MAX_COMMENT_LEN} characters, no control characters",
        )
    return text


#: What :func:`escape` makes of each character that HTML or Markdown give a meaning: HTML's five become
#: entities; every other ASCII punctuation character that CommonMark, GitHub's extensions (tables,
#: strikethrough, autolinks of ``www.``, ``http://`` and e-mail addresses) or Streamlit's directives
#: (``:red[...]``) and math (``$``) read gets a backslash, which CommonMark shows as the character itself.
#: ``:`` stays: alone it starts nothing that links or loads (an autolink also needs ``/``, ``.`` or ``@``),
#: and scan ids read ``source:case``.
_HTML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}
_MARKDOWN_PUNCTUATION = "\\`*_{}[]()#+-.!|~$/@="
_HTML_TABLE = str.maketrans(_HTML_ESCAPES)
_MARKDOWN_TABLE = str.maketrans({**_HTML_ESCAPES, **{c: "\\" + c for c in _MARKDOWN_PUNCTUATION}})
#: Where GitHub's autolink literals start (``http://``, ``https://``, ``www.``, ``user@host``). Streamlit
#: finds them in the rendered text, after backslashes and entities are undone, so only a character in
#: between stops them: an invisible word joiner (U+2060) after the ``:`` of ``://``, after ``www`` and
#: after ``@``.
_AUTOLINK_START = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def escape(text: object, *, markdown: bool = True) -> str:
    """Make any value safe to show as literal text in a page: nothing in it becomes a link, an image, an
    HTML tag or formatting. The one rule for every user- or file-controlled string the app shows (scan,
    case and source ids, reviewer names, comments, paths, error messages).

    Args:
        text: any value (None shows as '').
        markdown: True (default) for anything Streamlit renders as Markdown (``st.markdown``, captions,
            titles and headers, alerts, widget and button labels, image captions, progress texts); False
            for HTML-only renderers (plotly's hover texts, legends and tick labels), where a backslash
            would show.

    Returns:
        The text with ``& < > " '`` as HTML entities and, with ``markdown``, a backslash before every
        other Markdown punctuation character (``\\ ` * _ { } [ ] ( ) # + - . ! | ~ $ / @ =``) and an
        invisible :data:`WORD_JOINER` where an autolink would start (``://``, ``www.``, ``@``).

    Example:
        >>> escape("case [log in](https:evil.example)")
        'case \\\\[log in\\\\]\\\\(https:evil\\\\.example\\\\)'
        >>> escape("www.evil.example") == "www" + WORD_JOINER + "\\\\.evil\\\\.example"
        True
    """
    plain = "" if text is None else str(text)
    if not markdown:
        return plain.translate(_HTML_TABLE)
    return _AUTOLINK_START.sub(WORD_JOINER, plain).translate(_MARKDOWN_TABLE)


def check_class(ws: Workspace, class_name: str) -> str:
    """Check a universal class name.

    Args:
        ws: the workspace (its catalog is named in the error).
        class_name: the name.

    Returns:
        The class's canonical name.

    Raises:
        HarmonizeError: not a universal class.
    """
    try:
        return class_by_name(class_name).name
    except KeyError as e:
        raise HarmonizeError(ws.catalog.path, str(e.args[0])) from None


def check_upload_name(name: str) -> str:
    """Check the file name of an uploaded correction: a plain ``.nii`` / ``.nii.gz`` file name.

    Args:
        name: the name the browser sent.

    Returns:
        The name, unchanged.

    Raises:
        HarmonizeError: empty, a path (folders, ``..``, either slash), hidden, control characters, longer
            than :data:`MAX_UPLOAD_NAME_LEN`, or not a NIfTI suffix.
    """
    base = name if isinstance(name, str) else ""
    if (
        not base
        or base != Path(base).name
        or "/" in base
        or "\\" in base
        or ".." in base
        or base.startswith(".")
        or _CONTROL_RE.search(base)
        or len(base) > MAX_UPLOAD_NAME_LEN
        or not base.lower().endswith(_NIFTI_SUFFIXES)
    ):
        raise HarmonizeError(
            name if isinstance(name, str) else "upload",
            "not accepted as a correction file name: give a plain NIfTI file name ending in .nii or .nii.gz "
            "(no folders, '..' or control characters)",
        )
    return base


def scan_row(ws: Workspace, scan_id: str) -> dict[str, Any]:
    """The catalog row of a scan.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.

    Returns:
        The ``scan`` row (``shape``, ``affine`` as 16 row-major floats, ``image_path``, ...).

    Raises:
        HarmonizeError: no such scan.
    """
    row = ws.catalog.scan_row(scan_id)
    if row is None:
        raise HarmonizeError(ws.catalog.path, f"no scan {scan_id!r} in the catalog")
    return row


def label_set_row(ws: Workspace, label_set_id: str, scan_id: str | None = None) -> dict[str, Any]:
    """The catalog row of a label set, optionally checked to belong to ``scan_id``.

    Args:
        ws: the workspace.
        label_set_id: the label set.
        scan_id: the scan it must belong to (None: any).

    Returns:
        The ``label_set`` row.

    Raises:
        HarmonizeError: no such label set, or one of another scan.
    """
    row = ws.catalog.label_set_row(label_set_id)
    if row is None:
        raise HarmonizeError(ws.catalog.path, f"no label set {label_set_id!r} in the catalog")
    if scan_id is not None and row["scan_id"] != scan_id:
        raise HarmonizeError(
            ws.catalog.path, f"label set {label_set_id!r} belongs to scan {row['scan_id']}, not {scan_id}"
        )
    return row


def scan_affine(row: Mapping[str, Any]) -> np.ndarray:
    """The voxel -> RAS+ mm affine of a scan row.

    Args:
        row: a ``scan`` row (:func:`scan_row`).

    Returns:
        The (4, 4) float64 affine.
    """
    return np.asarray(list(row["affine"]), dtype=np.float64).reshape(4, 4)
