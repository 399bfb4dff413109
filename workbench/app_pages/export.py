"""Export page: choose format, sources, classes and origins; writes under <workspace>/exports/<name>.

The export runs with no catalog session open (the export wing reads the catalog in short transactions),
so reviewers and command-line jobs keep writing while it runs."""

from __future__ import annotations

import re

import streamlit as st

from harmonize.taxonomy import class_names
from workbench.app_pages import common
from workbench.export import export_abdomenatlas, export_monai, export_nnunet
from workbench.review import escape

ws = common.workspace()
assert ws is not None
st.title("Export")
FORMATS = {
    "nnunet": "nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json; partial labels: ignore label)",
    "monai": "MONAI datalist JSON with cross-validation folds (images, label maps, datalist.json)",
    "abdomenatlas": "AbdomenAtlas layout (<case>/ct.nii.gz + segmentations/<class>.nii.gz, original labels)",
}
fmt = st.selectbox("Format", list(FORMATS), format_func=lambda f: f"{f}: {FORMATS[f]}", key="x_format")
sources = ws.catalog.source_ids()
chosen_sources = st.multiselect("Sources (none = all)", sources, key="x_sources")
chosen_classes = st.multiselect("Classes (none = all 32)", class_names(), key="x_classes")
origins = ["revised", "original", "pseudo"]
if fmt != "abdomenatlas":
    origins = st.multiselect(
        "Label origins, in priority order revised > original > pseudo",
        origins,
        default=origins,
        key="x_origins",
    )
n_folds, seed = 5, 0
if fmt == "monai":
    n_folds = int(st.number_input("Folds", 2, 20, 5, key="x_folds"))
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="x_seed"))
name = st.text_input("Export name (folder under exports/)", value=f"{fmt}-export", key="x_name")
if st.button("Export", key="x_go"):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        st.error("Give a plain folder name: letters, digits, '.', '_' or '-', no slashes.")
    elif not origins:
        st.error("Choose at least one label origin.")
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
                    origins=origins,
                    progress=False,
                    on_progress=on_progress,
                )
            elif fmt == "monai":
                manifest = export_monai(
                    ws,
                    out,
                    sources=chosen_sources or None,
                    classes=chosen_classes or None,
                    origins=origins,
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
                        progress=False,
                    )
            bar.progress(1.0, text="done")
            st.success(
                f"Exported {len(manifest['cases'])} cases to {escape(out)} (manifest.json holds every "
                "file's SHA-256)."
            )
            if manifest["skipped"]:
                st.warning(f"Skipped {len(manifest['skipped'])} damaged case(s); manifest.json names them.")
