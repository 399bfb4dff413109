"""Helpers the app's pages share: the workspace, cached volumes and masks, the reviewer name, errors.

Volumes and masks are cached with ``st.cache_resource`` keyed by workspace, scan and label set, so a
rerun (a slider move, a class change) never reads a file again. Every string from a user or a file reaches
a page through :func:`workbench.review.escape` (Markdown and HTML shown as text). No helper here holds the
catalog: a page opens ``ws.catalog.session()`` only around a few quick reads, never around file work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import streamlit as st

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from storage.catalog import CatalogBusy
from storage.maps import load_uncertainty_map
from storage.workspace import Workspace, resolve_workspace
from workbench import app_data
from workbench.review import escape, validate_reviewer

#: Environment variable naming a file that the viewer appends its server-side render time to (one line
#: per render: ``viewer <seconds> <start, Unix epoch seconds>``); ``benchmarks/bench_app.py`` sets it.
#: Unset: nothing is written.
TIMING_LOG_ENV = "WORKBENCH_TIMING_LOG"


@st.cache_resource(show_spinner=False)
def _open(root: str) -> Workspace:
    return Workspace.open(root)


#: The way back from a damaged file, said after its one line.
WAY_BACK = "`workbench check` names every damaged file; restore it from a `workbench backup` copy."


def workspace() -> Workspace | None:
    """The workspace of ``$WORKBENCH_HOME`` / ``./workspace``, or None when it has no catalog yet.

    A catalog that cannot be opened (a damaged file, a newer schema) stops the page with one line that
    names it and the way back, not a traceback.
    """
    root = resolve_workspace(None)
    if not (root / "catalog.duckdb").exists():
        return None
    try:
        return _open(str(root))
    except CatalogBusy as e:
        st.error(f"The catalog is busy (another job is writing); reload in a moment. ({escape(e)})")
        st.stop()
        raise  # st.stop() raises; this line only tells type checkers
    except Exception as e:  # DuckDB's own errors are not ours to import here; any of them means the same
        st.error(f"The catalog cannot be opened: {escape(e)}. Nothing was changed. {WAY_BACK}")
        st.stop()
        raise  # st.stop() raises; this line only tells type checkers


def demo_offer() -> None:
    """The page shown without a workspace: explain, and offer to build the synthetic demo."""
    root = resolve_workspace(None)
    st.title("CT curation workbench")
    st.warning(f"No workspace at {escape(root)} (set WORKBENCH_HOME or run from a folder with ./workspace).")
    st.markdown(
        "You can build the **demo workspace**: SYNTHETIC phantoms (no patient data) written in the native "
        "file conventions of nine public sources and harmonized like real downloads."
    )
    cases = st.number_input("phantom cases per source", min_value=1, max_value=10, value=3, key="demo_cases")
    if st.button("Build the synthetic demo workspace", key="build_demo"):
        from workbench import demo

        with st.spinner("writing and ingesting synthetic phantoms ..."):
            lines = demo.build_demo(Workspace.open(root), cases_per_source=int(cases), progress=False)
        st.success(escape(lines[-1]))
        st.rerun()


def sidebar(ws: Workspace) -> None:
    """Workspace facts and the reviewer name (kept in the session)."""
    with st.sidebar:
        st.caption(f"workspace: {escape(ws.root)}")
        if (ws.root / "DEMO.txt").exists():
            st.info("Demo workspace: SYNTHETIC phantoms, no patient data.")
        st.text_input("Reviewer name", key="reviewer", help="recorded with every decision")


def reviewer(ws: Workspace) -> str | None:
    """The validated reviewer name, or None after showing why it is missing or not allowed."""
    name = st.session_state.get("reviewer", "")
    if not name:
        st.warning("Enter your reviewer name in the sidebar to record decisions.")
        return None
    try:
        return validate_reviewer(ws, name)
    except HarmonizeError as e:
        st.error(escape(e.problem))
        return None


@contextmanager
def guarded() -> Iterator[None]:
    """Show bad input and a busy catalog as messages, never as a traceback."""
    try:
        yield
    except HarmonizeError as e:
        st.error(f"{escape(e.path)}: {escape(e.problem)}")
    except CatalogBusy as e:
        st.error(f"The catalog is busy (another job is writing); try again in a moment. ({escape(e)})")
    except (KeyError, ValueError) as e:
        st.error(escape(e.args[0] if e.args else e))
    except OSError as e:  # an unreadable file: permission denied, a FIFO, a file gone meanwhile
        st.error(f"{escape(e.filename or '')}: {escape(e.strerror or e)}")


@st.cache_resource(show_spinner=False, max_entries=8)
def display_volume(root: str, scan_id: str, image_path: str) -> app_data.DisplayVolume:
    """The CT of ``scan_id`` reoriented for display (read once per scan)."""
    return app_data.to_display(read_volume(image_path, kind="image"))


@st.cache_resource(show_spinner=False, max_entries=128)
def display_mask(root: str, scan_id: str, image_path: str, mask_key: str, class_name: str) -> np.ndarray:
    """One class of one label set in display order (read once per label set and class)."""
    dv = display_volume(root, scan_id, image_path)
    return dv.mask(_open(root).masks.read(mask_key, class_name))


def display_masks(
    root: str, scan_id: str, image_path: str, mask_key: str, class_names: list[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The display masks of ``class_names`` of one label set, leaving out those that cannot be read.

    Returns:
        ``(masks, problems)``: class name -> (x, y, z) display mask, and one escaped line per unreadable
        mask file (a truncated or corrupt file: its path, the problem and :data:`WAY_BACK`), each once.
    """
    masks: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name in class_names:
        try:
            masks[name] = display_mask(root, scan_id, image_path, mask_key, name)
        except HarmonizeError as e:
            line = f"{escape(e.path)}: {escape(e.problem)}. {WAY_BACK}"
            if line not in problems:
                problems.append(line)
    return masks, problems


@st.cache_resource(show_spinner=False, max_entries=8)
def display_uncertainty(root: str, run_id: str, scan_id: str, image_path: str) -> np.ndarray:
    """The entropy map of ``run_id`` for ``scan_id``, resampled to the CT's grid and reoriented like it:
    (x, y, z) float16 bits in display order (read once per run and scan)."""
    dv = display_volume(root, scan_id, image_path)
    entropy, _ = load_uncertainty_map(_open(root), run_id, scan_id)
    return app_data.display_entropy(dv, entropy)


def record_timing(what: str, started_at: float) -> None:
    """Append ``what <seconds since started_at> <started_at>`` to the file named by :data:`TIMING_LOG_ENV`,
    when it is set (``started_at``: ``time.time()`` when the render began)."""
    path = os.environ.get(TIMING_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{what} {time.time() - started_at:.6f} {started_at:.6f}\n")
