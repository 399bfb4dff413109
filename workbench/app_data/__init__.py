"""The Streamlit-free view model behind the app: tables, plotly figures and slice images.

Nothing here imports Streamlit, so every function is tested directly; the pages in ``workbench/app_pages``
only lay these out and cache them.

* :mod:`~workbench.app_data.viewer`: display orientation (radiological) of CTs, masks and entropy maps,
  window/level, slice planes, edge labels, display <-> file voxels.
* :mod:`~workbench.app_data.overlays`: class colours and the uncertainty heat map drawn over a slice,
  the composed slice image, the most uncertain slice.
* :mod:`~workbench.app_data.dashboards`: overview, ingest issues, long-tail / coverage / co-occurrence /
  volume tables and figures, outlier clicks, the review pickers' lists.

Every public name is re-exported here, so ``from workbench import app_data; app_data.slice_image(...)``
works; ``class_color`` (:mod:`harmonize.taxonomy`) and ``safe_name`` (:mod:`storage.files`) too.

Example:
    >>> dv = app_data.to_display(volume)  # doctest: +SKIP
    >>> rgb = app_data.slice_image(dv, "axial", 30, *app_data.WL_PRESETS["abdomen"])  # doctest: +SKIP
"""

from __future__ import annotations

from harmonize.taxonomy import class_color
from storage.files import safe_name
from workbench.app_data.dashboards import (
    agreement_figure,
    agreement_table,
    annotated_by_source_figure,
    cooccurrence,
    coverage_matrix,
    coverage_state_figure,
    heatmap_figure,
    ingest_issues,
    label_sets_of,
    outlier_from_selection,
    overview,
    present_classes,
    reading_detail,
    scan_choices,
    volume_figure,
    volume_summary,
)
from workbench.app_data.overlays import (
    ENTROPY_FLOOR,
    HEAT_LEGEND,
    HEAT_STOPS,
    entropy_colors,
    entropy_legend,
    most_uncertain_slice,
    slice_image,
    uncertainty_overlay,
    uncertainty_slice_hint,
    uncertainty_unavailable,
)
from workbench.app_data.viewer import (
    MIN_DISPLAY_PX,
    VIEW_AXIS,
    VIEWS,
    WL_PRESETS,
    DisplayVolume,
    annotate_edges,
    apply_window,
    best_slice,
    display_entropy,
    pixel_mm,
    plane_to_display,
    to_display,
    view_labels,
    view_plane,
)

__all__ = [
    "ENTROPY_FLOOR",
    "HEAT_LEGEND",
    "HEAT_STOPS",
    "MIN_DISPLAY_PX",
    "VIEWS",
    "VIEW_AXIS",
    "WL_PRESETS",
    "DisplayVolume",
    "agreement_figure",
    "agreement_table",
    "annotate_edges",
    "annotated_by_source_figure",
    "apply_window",
    "best_slice",
    "class_color",
    "cooccurrence",
    "coverage_matrix",
    "coverage_state_figure",
    "display_entropy",
    "entropy_colors",
    "entropy_legend",
    "heatmap_figure",
    "ingest_issues",
    "label_sets_of",
    "most_uncertain_slice",
    "outlier_from_selection",
    "overview",
    "pixel_mm",
    "plane_to_display",
    "present_classes",
    "reading_detail",
    "safe_name",
    "scan_choices",
    "slice_image",
    "to_display",
    "uncertainty_overlay",
    "uncertainty_slice_hint",
    "uncertainty_unavailable",
    "view_labels",
    "view_plane",
    "volume_figure",
    "volume_summary",
]
