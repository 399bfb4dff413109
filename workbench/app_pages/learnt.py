"""The Review page's notice of classes a model never learnt, and the checkbox that shows their items.

Example:
    >>> include_unlearnt = unlearnt_notice(ws)  # doctest: +SKIP
"""

from __future__ import annotations

import streamlit as st

from storage.workspace import Workspace
from workbench import review


def unlearnt_notice(ws: Workspace) -> bool:
    """Show one caption per class the runs' models never learnt (``review.learnt_notice``) and, when there
    are such items, a checkbox that lists them anyway.

    Args:
        ws: the workspace.

    Returns:
        True when the reviewer asked to see the held-back items.
    """
    lines = review.learnt_notice(ws)
    held = [line for line in lines if "never learnt" in line]
    include = bool(held) and st.checkbox(
        "Show items of classes the model never learnt", key="q_unlearnt", value=False
    )
    for line in review.learnt_notice(ws, include_unlearnt=True) if include else lines:
        st.caption(review.escape(line.replace(f"; {review.INCLUDE_FLAG} shows them", "")))
    return include
