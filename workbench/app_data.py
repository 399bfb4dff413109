"""Pure data functions behind the Streamlit app: tables, plotly figures and slice images.

Nothing here imports Streamlit, so every function is tested directly; the pages in ``workbench/app_pages``
only lay these out and cache them.

Slices are shown in patient orientation, radiological convention: a volume is first reoriented (a
permutation and flips of its axes, no resampling) to RAS order ``[x, y, z]`` (x towards the patient's
Right, y Anterior, z Superior), then

* axial (viewed from the feet): rows anterior -> posterior, columns patient Right -> Left;
* coronal (viewed from the front): rows superior -> inferior, columns patient Right -> Left;
* sagittal (viewed from the patient's left): rows superior -> inferior, columns anterior -> posterior.

So the patient's right side is on the image's left, as radiologists read CT; :func:`view_labels` names the
four edges. Pixels are scaled to the physical spacing, so voxels with 0.8 x 0.8 x 5 mm look right.

Example:
    >>> dv = to_display(volume)  # doctest: +SKIP
    >>> rgb = slice_image(dv, "axial", 30, *WL_PRESETS["abdomen"])  # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from harmonize.taxonomy import class_by_name, class_names
from harmonize.volume import Volume
from storage.workspace import Workspace

#: Window presets: name -> (width, level) in HU.
WL_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
VIEWS = ("axial", "coronal", "sagittal")
#: Display axis (in RAS order) that each view slices through.
VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Smallest side of a displayed slice image in pixels (small phantoms are enlarged).
MIN_DISPLAY_PX = 320


def class_color(name: str) -> tuple[int, int, int]:
    """A fixed, distinct RGB colour (0-255) per universal class (golden-ratio hues; tumours darker)."""
    c = class_by_name(name)
    hue = (c.index * 0.618033988749895) % 1.0
    value = 0.75 if c.is_tumor else 0.95
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return int(r * 255), int(g * 255), int(b * 255)


# ---------------------------------------------------------------------------------------------- slices


@dataclass(frozen=True)
class DisplayVolume:
    """A CT reoriented to RAS array order for display.

    Args:
        array: (x, y, z) HU values (a view or copy of the file's voxels, permuted and flipped).
        spacing: (x, y, z) voxel size in mm.
        ornt: nibabel orientation (3, 2) that maps the file's axes onto this array.
        file_shape: (i, j, k) shape in the file's own voxel order.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    ornt: np.ndarray
    file_shape: tuple[int, int, int]

    def mask(self, file_mask: np.ndarray) -> np.ndarray:
        """A (i, j, k) mask in file voxel order, reoriented like the CT."""
        return np.asarray(nib.orientations.apply_orientation(file_mask, self.ornt))

    def to_file_index(self, xyz: Sequence[int]) -> tuple[int, int, int]:
        """The (i, j, k) file voxel of display voxel ``xyz``."""
        out = [0, 0, 0]
        for a, (target, flip) in enumerate(self.ornt):
            v = int(xyz[int(target)])
            out[a] = self.file_shape[a] - 1 - v if flip < 0 else v
        return out[0], out[1], out[2]

    def n_slices(self, view: str) -> int:
        return int(self.array.shape[VIEW_AXIS[view]])


def to_display(volume: Volume) -> DisplayVolume:
    """Reorient ``volume`` to RAS array order (no resampling); see the module docstring."""
    ornt = nib.orientations.io_orientation(volume.affine)
    arr = np.asarray(nib.orientations.apply_orientation(volume.array, ornt))
    spacing = [0.0, 0.0, 0.0]
    for a, (target, _) in enumerate(ornt):
        spacing[int(target)] = volume.spacing[a]
    return DisplayVolume(arr, (spacing[0], spacing[1], spacing[2]), ornt, volume.shape)


def _plane(a: np.ndarray, view: str, index: int) -> np.ndarray:
    """2D (rows, cols) plane of an (x, y, z) array in radiological display order."""
    if view == "axial":
        return a[::-1, ::-1, index].T  # rows y (A at top), cols x (R at left)
    if view == "coronal":
        return a[::-1, index, ::-1].T  # rows z (S at top), cols x (R at left)
    if view == "sagittal":
        return a[index, ::-1, ::-1].T  # rows z (S at top), cols y (A at left)
    raise ValueError(f"view {view!r} is not one of {VIEWS}")


def _pixel_mm(dv: DisplayVolume, view: str) -> tuple[float, float]:
    """(row height, column width) in mm of a plane of ``view``."""
    sx, sy, sz = dv.spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def view_labels(view: str) -> dict[str, str]:
    """Patient direction at each edge of a displayed slice (``left``, ``right``, ``top``, ``bottom``)."""
    return {
        "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
        "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
    }[view]


def apply_window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8 grey: ``level - width/2`` -> 0, ``level + width/2`` -> 255, clipped."""
    width = max(float(width), 1.0)
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def slice_image(
    dv: DisplayVolume,
    view: str,
    index: int,
    width: float,
    level: float,
    overlays: Mapping[str, np.ndarray] | None = None,
    opacity: float = 0.4,
    entropy: np.ndarray | None = None,
    entropy_opacity: float = 0.5,
) -> np.ndarray:
    """One slice as an RGB image, windowed, with coloured class overlays and an optional uncertainty heat
    overlay on top, scaled to physical aspect.

    Args:
        dv: the display volume.
        view: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the view's axis (0 .. ``dv.n_slices(view) - 1``).
        width / level: window in HU.
        overlays: class name -> (x, y, z) bool mask in display order (``dv.mask``).
        opacity: overlay alpha in [0, 1].
        entropy: (x, y, z) entropy map in bits in display order (:func:`display_entropy`), or None.
        entropy_opacity: alpha of the heat colours in [0, 1] (:func:`uncertainty_overlay`).

    Returns:
        (rows, cols, 3) uint8; rows/cols as in the module docstring, at least :data:`MIN_DISPLAY_PX` on
        the shorter side.
    """
    index = int(np.clip(index, 0, dv.n_slices(view) - 1))
    grey = apply_window(_plane(dv.array, view, index), width, level)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    alpha = float(np.clip(opacity, 0.0, 1.0))
    for name, m in (overlays or {}).items():
        plane = _plane(m, view, index)
        if plane.any():
            rgb[plane] = (1 - alpha) * rgb[plane] + alpha * np.asarray(class_color(name), np.float32)
    if entropy is not None:
        rgb = uncertainty_overlay(rgb, _plane(entropy, view, index), entropy_opacity)
    out = rgb.astype(np.uint8)
    row_mm, col_mm = _pixel_mm(dv, view)
    h_mm, w_mm = out.shape[0] * row_mm, out.shape[1] * col_mm
    scale = max(MIN_DISPLAY_PX / min(h_mm, w_mm), 1.0 / max(row_mm, col_mm))
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    if size != (out.shape[1], out.shape[0]):
        out = np.asarray(Image.fromarray(out).resize(size, Image.Resampling.NEAREST))
    return out


def best_slice(mask: np.ndarray, view: str) -> int | None:
    """Index of the ``view`` slice with the most voxels of the (x, y, z) display ``mask``; None if empty."""
    axis = VIEW_AXIS[view]
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return None if counts.max(initial=0) == 0 else int(np.argmax(counts))


def uncertainty_slice_hint(
    entropy: np.ndarray | None, view: str, region: np.ndarray | None = None
) -> int | None:
    """The slice a queue item opens on: the most uncertain slice of its run's entropy map.

    The uncertainty signals hold no voxel position (see ``workbench.uncertainty.SIGNAL_KEYS``: scalar
    statistics only), so the map itself gives the hint.

    Args:
        entropy: (x, y, z) entropy map in display order (:func:`display_entropy`), or None without a map.
        view: ``axial``, ``coronal`` or ``sagittal``.
        region: (x, y, z) bool display mask of the item's class, or None; see :func:`most_uncertain_slice`.

    Returns:
        The slice index along the view's axis, or None without a map or with an all-zero map.
    """
    if entropy is None:
        return None
    return most_uncertain_slice(entropy, view, region)


# ------------------------------------------------------------------------------------ uncertainty map

#: Entropy (bits) below which a voxel is left uncoloured: the model is confident there (p < 1.3 % or
#: p > 98.7 %), and colouring it would only hide the CT.
ENTROPY_FLOOR = 0.1
#: The heat colour map of the uncertainty overlay: entropy in bits -> RGB (0-255), linear in between.
#: Dark red at the floor, through orange and yellow, to near-white at 1 bit (p = 0.5). It is a ramp in
#: brightness, unlike the fixed-brightness class colours, so the two overlays do not read alike.
HEAT_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (ENTROPY_FLOOR, (110, 0, 0)),
    (0.4, (220, 40, 0)),
    (0.7, (255, 160, 0)),
    (1.0, (255, 255, 210)),
)
#: What the colours mean, for the viewer's legend.
HEAT_LEGEND = (
    f"Uncertainty: voxel-wise binary entropy of the model's probability (maximum over the predicted "
    f"classes). Dark red = {ENTROPY_FLOOR:g} bit, orange, yellow, near-white = 1 bit (probability 0.5: "
    f"the model cannot decide). Below {ENTROPY_FLOOR:g} bit the CT is left uncoloured."
)


def entropy_colors(entropy: np.ndarray) -> np.ndarray:
    """Heat colours of entropy values: ``(...,)`` bits -> ``(..., 3)`` float32 RGB 0-255 (:data:`HEAT_STOPS`;
    values outside [floor, 1] get the end colours)."""
    h = np.asarray(entropy, dtype=np.float32)
    xs = [x for x, _ in HEAT_STOPS]
    return np.stack(
        [np.interp(h, xs, [c[ch] for _, c in HEAT_STOPS]).astype(np.float32) for ch in range(3)], axis=-1
    )


def entropy_legend(width: int = 240, height: int = 12) -> np.ndarray:
    """A (height, width, 3) uint8 colour bar of :data:`HEAT_STOPS`, floor on the left, 1 bit on the right."""
    row = entropy_colors(np.linspace(ENTROPY_FLOOR, 1.0, width))
    return np.repeat(row[None], height, axis=0).astype(np.uint8)


def display_entropy(dv: DisplayVolume, entropy: np.ndarray) -> np.ndarray:
    """An entropy map on the CT's grid, in file voxel order, reoriented like the CT.

    Args:
        dv: the display volume of the scan.
        entropy: (i, j, k) entropy in bits, shape ``dv.file_shape``
            (``workbench.uncertainty.load_uncertainty_map`` resamples the stored map onto that grid).

    Returns:
        (x, y, z) float16 entropy in display order.

    Raises:
        ValueError: the map's shape is not the scan's.
    """
    if tuple(entropy.shape) != tuple(dv.file_shape):
        raise ValueError(
            f"uncertainty map shape {tuple(entropy.shape)} does not match the scan's {tuple(dv.file_shape)}"
        )
    return dv.mask(np.asarray(entropy, dtype=np.float16))


def uncertainty_overlay(rgb: np.ndarray, entropy_plane: np.ndarray, opacity: float) -> np.ndarray:
    """Blend the heat colours of one entropy plane over an RGB plane of the same size.

    Args:
        rgb: (rows, cols, 3) RGB 0-255 (uint8 or float), the windowed slice before display scaling.
        entropy_plane: (rows, cols) entropy in bits, same plane (``_plane`` of the display map).
        opacity: alpha of the heat colours in [0, 1].

    Returns:
        (rows, cols, 3) float32: ``rgb`` where entropy < :data:`ENTROPY_FLOOR`, else
        ``(1 - opacity) * rgb + opacity * entropy_colors(entropy)``.
    """
    out = np.asarray(rgb, dtype=np.float32).copy()
    h = np.asarray(entropy_plane, dtype=np.float32)
    hot = h >= ENTROPY_FLOOR
    if hot.any():
        alpha = float(np.clip(opacity, 0.0, 1.0))
        out[hot] = (1 - alpha) * out[hot] + alpha * entropy_colors(h[hot])
    return out


def _near(region: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """``region`` plus a one-voxel border (where a mask's entropy peaks: its edge), cropped to its
    bounding box + 1; returns (crop mask, crop slices), or None for an empty region."""
    from scipy import ndimage

    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        bounds.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, region.shape[axis])))
    box = (bounds[0], bounds[1], bounds[2])
    return ndimage.binary_dilation(region[box]), box


def most_uncertain_slice(entropy: np.ndarray, view: str, region: np.ndarray | None = None) -> int | None:
    """The ``view`` slice with the largest SUM of entropy (not the maximum: every predicted edge holds
    voxels near 1 bit, so the maximum ties on most slices; the sum finds where the model is unsure over
    the largest area).

    Args:
        entropy: (x, y, z) entropy in bits, display order.
        view: ``axial``, ``coronal`` or ``sagittal``.
        region: (x, y, z) bool display mask of a class, or None. When it has voxels, only the region plus
            a one-voxel border counts (the class's own uncertainty); otherwise the whole map.

    Returns:
        The slice index along the view's axis (the first of equal sums), or None when nothing counted
        is above zero.
    """
    axis = VIEW_AXIS[view]
    others = tuple(a for a in range(3) if a != axis)
    near = _near(np.asarray(region, bool)) if region is not None else None
    if near is None:
        sums = np.asarray(entropy, np.float64).sum(axis=others)
    else:
        crop, box = near
        sums = np.zeros(entropy.shape[axis], np.float64)
        part = np.where(crop, np.asarray(entropy[box], np.float64), 0.0).sum(axis=others)
        sums[box[axis]] = part
    return None if sums.max(initial=0.0) <= 0 else int(np.argmax(sums))


def uncertainty_unavailable(ws: Workspace, run_id: str | None, scan_id: str) -> str | None:
    """Why the viewer cannot show an uncertainty map for ``scan_id`` (a sentence), or None when
    ``<ws>/uncertainty/<run_id>/<scan>.npz`` exists.

    Args:
        ws: the workspace.
        run_id: the pseudo-labelling run of the item or of the shown label set; None for original or
            revised labels.
        scan_id: catalog scan id.
    """
    from storage.maps import uncertainty_map_path

    if not run_id:
        return "no uncertainty map: these labels do not come from a pseudo-labelling run"
    if not uncertainty_map_path(ws, run_id, scan_id).is_file():
        return f"no uncertainty map: run {run_id} wrote none for this scan"
    return None


# --------------------------------------------------------------------------------------------- overview


def overview(ws: Workspace) -> dict[str, Any]:
    """What the Overview page shows: ``counts`` (table -> rows), ``sources`` (per source: scans, label
    sets by origin), ``origins`` (label sets per origin), ``runs`` (newest first), ``attention`` (list of
    one-line strings: what needs a person's look), ``demo`` (True for the synthetic demo workspace)."""
    with ws.catalog.session():
        counts = ws.catalog.counts()
        sources = ws.catalog.query(
            """
            SELECT s.id AS source, s.name, s.protocol_version, count(DISTINCT sc.id) AS scans,
                   count(l.id) FILTER (WHERE l.origin = 'original') AS original,
                   count(l.id) FILTER (WHERE l.origin = 'pseudo') AS pseudo,
                   count(l.id) FILTER (WHERE l.origin = 'revised') AS revised
            FROM source s LEFT JOIN scan sc ON sc.source_id = s.id LEFT JOIN label_set l ON l.scan_id = sc.id
            GROUP BY ALL ORDER BY s.id
            """
        )
        origins = ws.catalog.query(
            "SELECT origin, count(*) AS label_sets FROM label_set GROUP BY 1 ORDER BY 1"
        )
        runs = ws.catalog.query(
            "SELECT id, kind, device, text_encoder, started_at, finished_at FROM run "
            "ORDER BY started_at DESC LIMIT 20"
        )
        issues = int(ws.catalog.query("SELECT count(*) AS n FROM ingest_issue")["n"].iloc[0])
        q = ws.catalog.query(
            """
            WITH standing AS (
                SELECT scan_id, class_name, label_set_id, arg_max(decision, created_at) AS decision
                FROM review WHERE decision <> 'undo'
                  AND id NOT IN (SELECT undo_of FROM review WHERE decision = 'undo' AND undo_of IS NOT NULL)
                GROUP BY ALL
            )
            SELECT count(*) FILTER (WHERE d.decision IS NULL) AS pending,
                   count(*) FILTER (WHERE d.decision = 'needs_correction') AS needs_correction
            FROM uncertainty u LEFT JOIN standing d USING (scan_id, class_name, label_set_id)
            """
        )
        unlabeled = int(
            ws.catalog.query(
                "SELECT count(*) AS n FROM scan WHERE id NOT IN (SELECT scan_id FROM label_set)"
            )["n"].iloc[0]
        )
        demo = not ws.catalog.query("SELECT value FROM schema_meta WHERE key = 'demo'").empty
    attention = []
    pending, needs = int(q["pending"].iloc[0] or 0), int(q["needs_correction"].iloc[0] or 0)
    if pending:
        attention.append(f"{pending} pseudo-label items wait for review (Review page)")
    if needs:
        attention.append(f"{needs} items are marked 'needs correction'")
    if issues:
        attention.append(f"{issues} files were skipped by ingest (see ingest issues)")
    if unlabeled:
        attention.append(f"{unlabeled} scans have no label set")
    if counts["scan"] and not counts["run"]:
        attention.append("no model run yet: the review queue fills once pseudo-labels exist")
    return {
        "counts": counts,
        "sources": sources,
        "origins": origins,
        "runs": runs,
        "attention": attention,
        "demo": demo,
    }


def ingest_issues(ws: Workspace, limit: int = 200) -> pd.DataFrame:
    """The newest skipped files (source, path, problem, seen_at)."""
    return ws.catalog.query("SELECT * FROM ingest_issue ORDER BY seen_at DESC LIMIT ?", [limit])


# -------------------------------------------------------------------------------------------- long tail


def _ordered(df: pd.DataFrame, col: str = "class_name") -> pd.DataFrame:
    order = {n: i for i, n in enumerate(class_names())}
    return df.assign(_o=df[col].map(order)).sort_values(["_o"]).drop(columns="_o")


def annotated_by_source_figure(by_source: pd.DataFrame, log: bool = False) -> go.Figure:
    """Stacked bars: scans that annotate each class, stacked by source (``long_tail(by_source=True)``)."""
    fig = go.Figure()
    classes = class_names()
    for source, g in by_source.groupby("source_id", sort=True):
        g = g.set_index("class_name").reindex(classes)
        fig.add_bar(name=str(source), x=classes, y=g["annotated"].fillna(0).tolist())
    fig.update_layout(
        barmode="stack",
        title="Annotated scans per class, by source",
        xaxis_title="class",
        yaxis_title="annotated scans",
        height=420,
        margin={"t": 40, "b": 10},
    )
    if log:
        fig.update_yaxes(type="log")
    return fig


def coverage_state_figure(long_tail: pd.DataFrame, log: bool = False) -> go.Figure:
    """Stacked bars per class: annotated present / annotated absent / not annotated scans."""
    df = _ordered(long_tail)
    fig = go.Figure()
    for col, label, color in (
        ("present", "annotated, present", "#2a9d8f"),
        ("absent", "annotated, absent", "#e9c46a"),
        ("not_annotated", "not annotated", "#bbbbbb"),
    ):
        fig.add_bar(name=label, x=df["class_name"].tolist(), y=df[col].tolist(), marker_color=color)
    fig.update_layout(barmode="stack", title="Coverage per class", height=420, margin={"t": 40, "b": 10})
    if log:
        fig.update_yaxes(type="log")
    return fig


def coverage_matrix(by_source: pd.DataFrame) -> pd.DataFrame:
    """source x class fraction of scans that annotate the class (0..1), classes in model order."""
    if by_source.empty:
        return pd.DataFrame(columns=class_names())
    total = by_source.assign(n=by_source[["annotated", "not_annotated"]].sum(axis=1))
    frac = total.assign(f=total["annotated"] / total["n"].where(total["n"] > 0))
    m = frac.pivot_table(index="source_id", columns="class_name", values="f", aggfunc="sum", fill_value=0.0)
    return m.reindex(columns=class_names(), fill_value=0.0)


def heatmap_figure(matrix: pd.DataFrame, title: str, colorbar: str) -> go.Figure:
    """A heat map of a DataFrame (rows x columns)."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(dtype=float),
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            colorscale="Viridis",
            colorbar={"title": colorbar},
        )
    )
    fig.update_layout(title=title, height=max(300, 22 * len(matrix.index) + 160), margin={"t": 40})
    return fig


def cooccurrence(ws: Workspace) -> pd.DataFrame:
    """class x class number of scans whose current original labels have BOTH classes present (the
    diagonal is the present count), classes in model order, all 32 x 32."""
    df = ws.catalog.query(
        """
        WITH cur AS (SELECT arg_max(id, version) AS label_set_id FROM label_set WHERE origin = 'original'
                     GROUP BY scan_id),
        p AS (SELECT c.label_set_id, c.class_name FROM class_coverage c JOIN cur USING (label_set_id)
              WHERE c.state = 'annotated_present')
        SELECT a.class_name AS a, b.class_name AS b, count(*) AS n
        FROM p a JOIN p b ON a.label_set_id = b.label_set_id GROUP BY 1, 2
        """
    )
    names = class_names()
    m = df.pivot_table(index="a", columns="b", values="n", aggfunc="sum", fill_value=0)
    return m.reindex(index=names, columns=names, fill_value=0).astype(np.int64)


def volume_summary(ws: Workspace, outliers_per_class: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class volume distribution of the current original labels, computed in SQL (no per-scan rows
    leave the database except outliers).

    Returns:
        ``(summary, outliers)``: summary has one row per class with ``n``, ``q1``, ``median``, ``q3``,
        ``lo``/``hi`` (Tukey fences clipped to the data) in mL; outliers lists, per class, up to
        ``outliers_per_class`` scans beyond the fences furthest from the median (``scan_id``,
        ``class_name``, ``volume_ml``, ``label_set_id``).
    """
    base = """
        WITH cur AS (SELECT arg_max(id, version) AS label_set_id, scan_id FROM label_set
                     WHERE origin = 'original' GROUP BY scan_id),
        v AS (SELECT cur.scan_id, st.label_set_id, st.class_name, st.volume_ml
              FROM class_stats st JOIN cur USING (label_set_id)),
        q AS (SELECT class_name, count(*) AS n, quantile_cont(volume_ml, 0.25) AS q1,
                     median(volume_ml) AS median, quantile_cont(volume_ml, 0.75) AS q3,
                     min(volume_ml) AS vmin, max(volume_ml) AS vmax
              FROM v GROUP BY class_name)
    """
    with ws.catalog.session():
        summary = ws.catalog.query(
            base
            + """
            SELECT class_name, n, q1, median, q3,
                   greatest(vmin, q1 - 1.5 * (q3 - q1)) AS lo, least(vmax, q3 + 1.5 * (q3 - q1)) AS hi
            FROM q
            """
        )
        outliers = ws.catalog.query(
            base
            + """
            SELECT v.scan_id, v.class_name, v.volume_ml, v.label_set_id FROM v JOIN q USING (class_name)
            WHERE v.volume_ml < q.q1 - 1.5 * (q.q3 - q.q1) OR v.volume_ml > q.q3 + 1.5 * (q.q3 - q.q1)
            QUALIFY row_number() OVER (PARTITION BY v.class_name ORDER BY abs(v.volume_ml - q.median) DESC)
                    <= ?
            """,
            [outliers_per_class],
        )
    return _ordered(summary).reset_index(drop=True), _ordered(outliers).reset_index(drop=True)


def volume_figure(summary: pd.DataFrame, outliers: pd.DataFrame, log: bool = True) -> go.Figure:
    """Box plot per class from precomputed quartiles, with the outlier scans as points whose
    ``customdata`` is ``[scan_id, class_name]`` (hover shows the scan; :func:`outlier_from_selection`
    decodes a click)."""
    fig = go.Figure()
    if not summary.empty:
        fig.add_trace(
            go.Box(
                name="volume",
                x=summary["class_name"].tolist(),
                q1=summary["q1"].tolist(),
                median=summary["median"].tolist(),
                q3=summary["q3"].tolist(),
                lowerfence=summary["lo"].tolist(),
                upperfence=summary["hi"].tolist(),
                boxpoints=False,
                showlegend=False,
            )
        )
    if not outliers.empty:
        fig.add_trace(
            go.Scatter(
                x=outliers["class_name"].tolist(),
                y=outliers["volume_ml"].tolist(),
                mode="markers",
                name="outliers",
                customdata=outliers[["scan_id", "class_name"]].astype(str).values.tolist(),
                hovertemplate="%{customdata[0]}: %{y:.1f} mL (click to open)",
                marker={"color": "#d62828", "size": 7},
            )
        )
    fig.update_layout(title="Volume per class (mL)", height=420, margin={"t": 40, "b": 10})
    if log:
        fig.update_yaxes(type="log")
    return fig


def outlier_from_selection(event: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The (scan_id, class_name) of the first clicked outlier point in a Streamlit plotly selection event
    (``st.plotly_chart(..., on_select="rerun")``: ``{"selection": {"points": [{"customdata": [scan_id,
    class_name], ...}], "point_indices": [...], "box": [], "lasso": []}}``), or None when no selected
    point carries such customdata (no selection, a click on a box, malformed data)."""
    if not isinstance(event, Mapping):
        return None
    selection = event.get("selection")
    points = selection.get("points") if isinstance(selection, Mapping) else None
    for point in points if isinstance(points, list) else []:
        data = point.get("customdata") if isinstance(point, Mapping) else None
        if (
            isinstance(data, (list, tuple))
            and len(data) == 2
            and all(isinstance(v, str) and v for v in data)
            and data[1] in class_names()
        ):
            return str(data[0]), str(data[1])
    return None


# ------------------------------------------------------------------------------------------ review data


def scan_choices(ws: Workspace, limit: int = 5000) -> list[str]:
    """Scan ids for the viewer's scan picker (sorted, at most ``limit``)."""
    return ws.catalog.query("SELECT id FROM scan ORDER BY id LIMIT ?", [limit])["id"].tolist()


def label_sets_of(ws: Workspace, scan_id: str) -> pd.DataFrame:
    """Label sets of one scan (id, version, origin, author, created_at, notes), newest first."""
    return ws.catalog.query(
        "SELECT id, version, origin, author, run_id, parent_id, created_at, notes, mask_key FROM label_set "
        "WHERE scan_id = ? ORDER BY version DESC",
        [scan_id],
    )


def present_classes(ws: Workspace, label_set_id: str) -> list[str]:
    """Classes with state ``annotated_present`` in a label set, in model order."""
    cov = ws.catalog.coverage(label_set_id)
    return [n for n in class_names() if cov.get(n) == "annotated_present"]


def annotate_edges(rgb: np.ndarray, labels: Mapping[str, str]) -> np.ndarray:
    """Draw the patient direction letters (``view_labels``) at the middle of each edge of an RGB slice."""
    from PIL import ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    pos = {
        "left": (4, h // 2 - 6),
        "right": (w - 12, h // 2 - 6),
        "top": (w // 2 - 4, 2),
        "bottom": (w // 2 - 4, h - 14),
    }
    for edge, letter in labels.items():
        x, y = pos[edge]
        draw.text((x + 1, y + 1), letter, fill=(0, 0, 0))
        draw.text((x, y), letter, fill=(255, 255, 0))
    return np.asarray(img)


def plane_to_display(dv: DisplayVolume, view: str, index: int, row: int, col: int) -> tuple[int, int, int]:
    """The (x, y, z) display voxel under pixel (``row``, ``col``) of an UNSCALED plane of ``view`` at
    ``index`` (the inverse of the flips in :func:`slice_image`, before the aspect scaling)."""
    nx, ny, nz = dv.array.shape
    if view == "axial":
        return nx - 1 - col, ny - 1 - row, index
    if view == "coronal":
        return nx - 1 - col, index, nz - 1 - row
    if view == "sagittal":
        return index, ny - 1 - col, nz - 1 - row
    raise ValueError(f"view {view!r} is not one of {VIEWS}")


def safe_name(text: str) -> str:
    """A file-system-safe name for a scan id (``kits23:00001`` -> ``kits23_00001``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"
