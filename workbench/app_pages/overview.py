"""Overview page: sources, scans, label sets, runs, and what needs attention."""

from __future__ import annotations

import streamlit as st

from workbench import app_data
from workbench.app_pages import common

ws = common.workspace()
assert ws is not None  # app.py routes here only with a workspace
st.title("Overview")
with common.guarded():
    data = app_data.overview(ws)
    if data["demo"]:
        st.info("This is the demo workspace: SYNTHETIC phantoms, no patient data.")
    counts = data["counts"]
    cols = st.columns(5)
    for col, (label, key) in zip(
        cols,
        [
            ("Sources", "source"),
            ("Scans", "scan"),
            ("Label sets", "label_set"),
            ("Runs", "run"),
            ("Reviews", "review"),
        ],
    ):
        col.metric(label, f"{counts[key]:,}")
    st.subheader("Needs attention")
    if data["attention"]:
        for line in data["attention"]:
            st.markdown(f"- {line}")
    else:
        st.success("Nothing waits: no pending review items, no skipped files.")
    st.subheader("Sources")
    st.dataframe(data["sources"], width="stretch", hide_index=True)
    left, right = st.columns(2)
    with left:
        st.subheader("Label sets by origin")
        st.dataframe(data["origins"], width="stretch", hide_index=True)
    with right:
        st.subheader("Model runs")
        if data["runs"].empty:
            st.caption("No model runs yet.")
        else:
            st.dataframe(data["runs"], width="stretch", hide_index=True)
    if counts["ingest_issue"]:
        with st.expander(f"Files skipped by ingest ({counts['ingest_issue']})"):
            st.dataframe(app_data.ingest_issues(ws), width="stretch", hide_index=True)
