"""The Streamlit workbench: ``streamlit run workbench/app.py``.

Opens the workspace in ``$WORKBENCH_HOME`` (else ``./workspace``). Without one, it offers to build the
demo workspace (synthetic phantoms, no patient data) and says so. The app is review-only: it never loads
a model (no torch import); pseudo-labels come from ``workbench pseudolabel`` runs.

Pages (``workbench/app_pages/``): Overview, Long tail, Review, Export. They are thin layers over
``workbench.app_data`` (tables, figures, slice images) and ``workbench.review`` (decisions, corrections).
Every user- or file-controlled string is shown through ``workbench.review.escape``; the server listens on
127.0.0.1 only (``.streamlit/config.toml``; ``docs/serving.md`` says how to serve a team behind a login).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run workbench/app.py` puts workbench/ on sys.path, not the repository root.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from workbench.app_pages import common  # noqa: E402

st.set_page_config(page_title="CT curation workbench", layout="wide")

ws = common.workspace()
if ws is None:
    common.demo_offer()
else:
    _HERE = Path(__file__).resolve().parent / "app_pages"
    pages = [
        st.Page(_HERE / "overview.py", title="Overview", default=True),
        st.Page(_HERE / "long_tail.py", title="Long tail"),
        st.Page(_HERE / "review.py", title="Review"),
        st.Page(_HERE / "export.py", title="Export"),
    ]
    common.sidebar(ws)
    # No catalog session around the render: a page pins one only around a few quick reads, so an export,
    # an image read or a mask decode never keeps other processes (ingest, pseudo-labelling, the CLI) from
    # writing.
    st.navigation(pages).run()
