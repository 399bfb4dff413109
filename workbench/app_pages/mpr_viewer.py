"""The Review page's multiplanar viewer as Streamlit components: the viewer itself (static files in
``workbench/app_data/viewer_component/``) and the process's private folder of item files, registered as a
data-only component so Streamlit serves those files to the viewer on the app's own address (127.0.0.1).

The payloads, their preload and the edits are :mod:`workbench.app_data.multiplanar` (no Streamlit there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from harmonize.errors import HarmonizeError
from harmonize.readers import read_volume
from storage.maps import load_uncertainty_map
from storage.workspace import Workspace
from workbench import app_data
from workbench.app_data import multiplanar

#: The viewer component: ``VIEWER(item=..., prefetch=..., keys=..., key=...)`` returns the newest action.
VIEWER = components.declare_component("multiplanar_viewer", path=str(multiplanar.COMPONENT_DIR))


@st.cache_resource(show_spinner=False)
def payload_store() -> multiplanar.PayloadStore:
    """The process's private folder of item files (one per app process, removed at exit)."""
    return multiplanar.PayloadStore()


DATA = components.declare_component("multiplanar_data", path=str(payload_store().folder))


def base_url() -> str:
    """The URL folder of the item files, relative to the viewer's own page."""
    return f"../{DATA.name}/"


def _readers(ws: Workspace) -> tuple[Any, Any, Any]:
    def read_ct(source: multiplanar.ItemSource) -> app_data.DisplayVolume:
        # read from the file, not kept: the payload's files hold what the browser needs
        return app_data.to_display(read_volume(source.image_path, kind="image"))

    def read_mask(source: multiplanar.ItemSource, name: str) -> np.ndarray:
        return ws.masks.read(source.mask_key, name)

    def read_entropy(source: multiplanar.ItemSource, dv: app_data.DisplayVolume) -> np.ndarray | None:
        if not source.run_id:
            return None
        try:
            entropy, _ = load_uncertainty_map(ws, source.run_id, source.scan_id)
            return app_data.display_entropy(dv, entropy)
        except (HarmonizeError, OSError, ValueError):  # no map, or one that cannot be read: no heat
            return None

    return read_ct, read_mask, read_entropy


def prepare(ws: Workspace, source: multiplanar.ItemSource) -> multiplanar.Payload:
    """The item's payload (built now, found, or waited for when the preload is building it).

    Raises:
        HarmonizeError / OSError: the CT cannot be read.
    """
    return payload_store().prepare(source, *_readers(ws))


def preload(
    ws: Workspace, source: multiplanar.ItemSource, title: str, target: dict[str, str]
) -> dict[str, Any]:
    """Start building the next item's payload in the background; returns what the browser prefetches
    (:func:`multiplanar.prefetch_item`, with the item's ``title`` line and ``target``)."""
    store = payload_store()
    store.preload(source, *_readers(ws))
    return multiplanar.prefetch_item(store, source, base_url(), title, target)
