"""Export page: choose format, sources, classes, which pseudo-labels fill partial labels (accepted by
default, as on the command line) and whether held-out scans stay out; writes under
<workspace>/exports/<name>.

The export runs with no catalog session open (the export wing reads the catalog in short transactions),
so reviewers and command-line jobs keep writing while it runs."""

from __future__ import annotations

import re

import streamlit as st

from harmonize.taxonomy import class_names
from workbench.app_pages import common
from workbench.export import PSEUDO_CHOICES, export_abdomenatlas, export_monai, export_nnunet
from workbench.export.summary import export_lines
from workbench.review import escape

ws = common.workspace()
assert ws is not None
st.title("Export")
FORMATS = {
    "nnunet": "nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json; partial labels: ignore label)",
    "monai": "MONAI datalist JSON with cross-validation folds (images, label maps, datalist.json)",
    "abdomenatlas": "AbdomenAtlas layout (<case>/ct.nii.gz + segmentations/<class>.nii.gz per class)",
}
PSEUDO_HELP = {
    "accepted": "accepted: pseudo-labels a reviewer accepted",
    "all": "all: every pseudo-label not rejected",
    "none": "none: expert labels only",
}
fmt = st.selectbox("Format", list(FORMATS), format_func=lambda f: f"{f}: {FORMATS[f]}", key="x_format")
sources = ws.catalog.source_ids()
chosen_sources = st.multiselect("Sources (none = all)", sources, key="x_sources")
chosen_classes = st.multiselect("Classes (none = all 32)", class_names(), key="x_classes")
pseudo = st.radio(
    "Fill partial labels with (priority revised > original > accepted > pseudo; rejected never)",
    PSEUDO_CHOICES,
    index=0,
    format_func=PSEUDO_HELP.__getitem__,
    key="x_pseudo",
)
include_held_out = st.checkbox(
    "Include the held-out scans (not for training: evaluation on them would no longer be honest)",
    value=False,
    key="x_held_out",
)
margin_mm = 10.0
if fmt != "abdomenatlas":
    margin_mm = float(
        st.number_input(
            "Ignore margin around an unknown class's pseudo-label (mm)", 0.0, 100.0, 10.0, key="x_margin"
        )
    )
n_folds, seed = 5, 0
if fmt == "monai":
    n_folds = int(st.number_input("Folds", 2, 20, 5, key="x_folds"))
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="x_seed"))
name = st.text_input("Export name (folder under exports/)", value=f"{fmt}-export", key="x_name")
if st.button("Export", key="x_go"):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        st.error("Give a plain folder name: letters, digits, '.', '_' or '-', no slashes.")
    else:
        out = ws.exports / name
        bar = st.progress(0.0, text="starting")

        def on_progress(done: int, total: int, case: str) -> None:
            bar.progress(done / max(total, 1), text=f"{done}/{total} {escape(case)}")

        with common.guarded():
            if fmt == "nnunet":
                manifest = export_nnunet(
                    ws,
                    out,
                    sources=chosen_sources or None,
                    classes=chosen_classes or None,
                    pseudo=pseudo,
                    include_held_out=include_held_out,
                    ignore_margin_mm=margin_mm,
                    progress=False,
                    on_progress=on_progress,
                )
            elif fmt == "monai":
                manifest = export_monai(
                    ws,
                    out,
                    sources=chosen_sources or None,
                    classes=chosen_classes or None,
                    pseudo=pseudo,
                    include_held_out=include_held_out,
                    ignore_margin_mm=margin_mm,
                    n_folds=n_folds,
                    seed=seed,
                    progress=False,
                    on_progress=on_progress,
                )
            else:
                with st.spinner("exporting ..."):
                    manifest = export_abdomenatlas(
                        ws,
                        out,
                        sources=chosen_sources or None,
                        classes=chosen_classes or None,
                        pseudo=pseudo,
                        include_held_out=include_held_out,
                        progress=False,
                    )
            bar.progress(1.0, text="done")
            st.success(
                f"Exported {len(manifest['cases'])} cases to {escape(out)} (manifest.json holds every "
                "file's SHA-256)."
            )
            st.text("\n".join(export_lines(manifest)))
            if manifest["skipped"]:
                st.warning(f"Skipped {len(manifest['skipped'])} damaged case(s); manifest.json names them.")
