"""Long-tail page: annotated scans per class by source, coverage states, the source x class matrix,
class co-occurrence and volume distributions with outliers that open in the Review page, and the
inter-reviewer agreement of double reading where any item was read twice."""

from __future__ import annotations

import streamlit as st

from workbench import app_data
from workbench.app_pages import common

ws = common.workspace()
assert ws is not None


def open_in_review(scan_id: str, class_name: str) -> None:
    """Show one scan x class in the Review page's viewer (it overrides the queue item there)."""
    st.session_state["browse_scan"] = scan_id
    st.session_state["browse_class"] = class_name
    st.switch_page("app_pages/review.py")


st.title("Long tail")
with common.guarded():
    log = st.toggle("Logarithmic counts", key="lt_log")
    with ws.catalog.session():
        by_source = ws.catalog.long_tail(by_source=True)
        totals = ws.catalog.long_tail()
        co = app_data.cooccurrence(ws)
        summary, outliers = app_data.volume_summary(ws)
    agreement = app_data.agreement_table(ws)
    if by_source.empty:
        st.info("No labelled scans yet: ingest a dataset (`workbench ingest`) or build the demo.")
    else:
        st.plotly_chart(app_data.annotated_by_source_figure(by_source, log), width="stretch")
        st.plotly_chart(app_data.coverage_state_figure(totals, log), width="stretch")
        st.plotly_chart(
            app_data.heatmap_figure(
                app_data.coverage_matrix(by_source), "Source x class: fraction of scans annotated", "fraction"
            ),
            width="stretch",
        )
        st.plotly_chart(
            app_data.heatmap_figure(co, "Class co-occurrence (scans with both present)", "scans"),
            width="stretch",
        )
        clicked = st.plotly_chart(
            app_data.volume_figure(summary, outliers, log=True),
            width="stretch",
            on_select="rerun",
            selection_mode="points",
            key="lt_volume",
        )
        st.caption("Click a red outlier point to open that scan and class in the Review page.")
        target = app_data.outlier_from_selection(clicked)
        if target is not None:
            open_in_review(*target)
        st.subheader("Volume outliers")
        if outliers.empty:
            st.caption("No volume outside the Tukey fences.")
        else:
            st.dataframe(outliers, width="stretch", hide_index=True)
            labels = [f"{r.scan_id} · {r.class_name} · {r.volume_ml:.1f} mL" for r in outliers.itertuples()]
            pick = st.selectbox(
                "Open an outlier in the viewer",
                range(len(labels)),
                format_func=labels.__getitem__,
                key="lt_outlier",
            )
            if st.button("Open in Review", key="lt_open"):
                row = outliers.iloc[int(pick)]
                open_in_review(str(row["scan_id"]), str(row["class_name"]))
    if not agreement.empty:
        st.subheader("Inter-reviewer agreement (double reading)")
        st.plotly_chart(app_data.agreement_figure(agreement), width="stretch")
        st.caption(
            "Per class, over the items two reviewers read blind to each other: the share of equal decisions, "
            "Cohen's kappa, and the mean Dice of their masks where both corrected. Disagreements go to the "
            "adjudication list (Review page, status 'adjudication')."
        )
        st.dataframe(agreement, width="stretch", hide_index=True)
