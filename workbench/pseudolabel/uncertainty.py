"""Uncertainty of pseudo-labels, per scan x class: the signals that put an item in the review queue.

Signals (keys of ``uncertainty.signals``, JSON; see :data:`SIGNAL_KEYS`):

* ``entropy``: mean binary entropy (bits, 0..1) of the class's sigmoid inside its final mask plus a
  one-voxel border, on the inference grid (where the model is unsure).
* ``tta_disagreement``: ``1 - Dice`` between the main prediction and a test-time augmentation (a coarser
  grid, other window tiling, an intensity shift; never a mirror: left and right are different classes).
* ``overlap`` / ``overlap_with``: the largest fraction of the mask shared with a class it must not overlap
  (a tumour may overlap its organ; two organs may not), annotated masks of the scan included; an organ's
  overlap with another organ's tumour counts for the tumour only (:func:`blames_other`).
* plausibility against the catalog's statistics of ANNOTATED scans (:class:`ReferenceStats`):
  ``volume_z`` (z-score of log volume), ``components`` vs ``expected_components``, ``side_offset_mm``
  (centroid's distance from the body midline towards the class's own side; negative = wrong side),
  ``outside_parent`` (fraction of a tumour outside its dilated organ; None while the organ is predicted
  absent: then the organ is the item to fix), and for a class predicted absent,
  ``in_region`` + ``expected_presence`` (the scan covers where the class lies, judged from the other
  organs' positions, and how often annotated scans have it).
* ``near_miss_ml`` / ``near_miss_p``: for a class predicted absent, the volume (mL) of the largest
  26-connected region where the model's probability still reached :data:`NEAR_MISS_P` (below the 0.5
  threshold), and the highest probability there: the structure a model saw faintly and then dropped (a
  missed small tumour looks like this); None for a class predicted present or without probabilities.
* ``absent_peak_p``: for a class predicted absent, the highest probability of the class anywhere on the
  inference grid. Near zero (below ``scoring.CONFIDENT_ABSENT_P``) everywhere is the model's own evidence
  of a TRUE absence (a nephrectomy, a splenectomy): a model that misses an organ it should see still
  gives it some probability where it lies. The whole grid bounds the expected region's maximum from
  above, so a faint response anywhere keeps the item a "missing" one (the safe side). None for a class
  predicted present or without probabilities (then "missing" counts in full).
* ``twin_density_match``: for a paired organ predicted absent whose twin is predicted present, the
  fraction of the twin's mask mirrored across the body midline (where the absent organ lies: the two
  kidneys sit at nearly the same height and distance from the spine) whose CT value falls within the
  10th-90th percentile HU of the twin's core: the CT's own evidence. A fossa emptied by a nephrectomy
  holds fat, bowel or the neighbours that moved in (little of it at renal parenchyma HU); a kidney the
  model missed is still there at the twin's density. Without contrast between the organ and its
  surroundings (an unenhanced kidney looks like muscle and bowel) the match stays high and the item
  stays a "missing" one: the check can only keep a miss in the queue, never hide one. None without the
  CT, a twin or an absence to judge.

``workbench.pseudolabel.scoring.assess`` turns them into the score and the reasons of the rows
(:func:`uncertainty_rows`). The viewer's map (:func:`scan_signals`) is the voxel-wise maximum entropy
over the predicted classes, float16 on the inference grid with its affine; ``storage.maps`` stores and
loads it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from harmonize.geometry import STRUCT26, label_components, mask_to_grid
from harmonize.masks import CroppedMask
from harmonize.taxonomy import class_by_name
from storage.workspace import Workspace
from workbench.pseudolabel.scoring import assess

SIGNAL_KEYS = (
    "present",
    "voxels",
    "volume_ml",
    "entropy",
    "tta_disagreement",
    "overlap",
    "overlap_with",
    "volume_z",
    "components",
    "expected_components",
    "side",
    "side_offset_mm",
    "parent",
    "outside_parent",
    "in_region",
    "expected_presence",
    "n_reference",
    "near_miss_ml",
    "near_miss_p",
    "absent_peak_p",
    "twin_density_match",
)
#: The probability from which a region of a class predicted absent counts as a near miss: a logit of
#: -2.2, which a trained model's background stays well below (a well-trained sigmoid head puts tissue that
#: is plainly not the class under 0.01); a structure it half-sees (a small tumour, a faint organ) reaches it.
NEAR_MISS_P = 0.1
#: Margin (mm) around a parent organ inside which a tumour still counts as inside (as post-processing).
PARENT_MARGIN_MM = 5.0
#: Reference statistics need this many annotated present scans of a class.
MIN_REFERENCE = 3
#: Floor of the standard deviation of log volume (a handful of near-identical scans must not turn a 10%
#: difference into 5 sd).
MIN_LOG_VOLUME_SD = 0.15


# ------------------------------------------------------------------------------------- reference


@dataclass
class ClassReference:
    """Statistics of one class over the catalog's annotated scans (current original label sets).

    Args:
        n_annotated: scans whose source annotates the class.
        n_present: of those, scans where it is present.
        log_volume_mean / log_volume_sd: of ln(volume in mL) over present scans.
        components_p95: 95th percentile of the component count.
        z_offsets: anchor class -> (mean, sd, n) of (centroid z of this class - centroid z of the anchor),
            RAS+ mm, over scans where both are present.
        radius_mm: radius of a sphere of the median volume (a size scale for region checks).
    """

    n_annotated: int
    n_present: int
    log_volume_mean: float | None = None
    log_volume_sd: float | None = None
    components_p95: int | None = None
    z_offsets: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    radius_mm: float = 0.0

    @property
    def presence(self) -> float:
        return self.n_present / self.n_annotated if self.n_annotated else 0.0


ReferenceStats = dict[str, ClassReference]


def reference_stats(ws: Workspace) -> ReferenceStats:
    """Per class, the statistics of the catalog's annotated scans (their current ``original`` labels).

    Args:
        ws: the workspace.

    Returns:
        :data:`ReferenceStats` (``Catalog.reference_rows`` through :func:`reference_from_rows`).
    """
    return reference_from_rows(ws.catalog.reference_rows())


def reference_from_rows(rows: Sequence[Mapping[str, Any]]) -> ReferenceStats:
    """Build :data:`ReferenceStats` from rows ``scan_id, class_name, state, volume_ml, components,
    centroid_mm`` (centroid RAS+ mm; None for absent classes)."""
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    z_of: dict[str, dict[str, float]] = {}
    for r in rows:
        by_class.setdefault(str(r["class_name"]), []).append(r)
        if r["state"] == "annotated_present" and r.get("centroid_mm") is not None:
            z_of.setdefault(str(r["scan_id"]), {})[str(r["class_name"])] = float(list(r["centroid_mm"])[2])
    out: ReferenceStats = {}
    for name, rs in by_class.items():
        present = [r for r in rs if r["state"] == "annotated_present" and r.get("volume_ml")]
        ref = ClassReference(n_annotated=len(rs), n_present=len(present))
        if len(present) >= MIN_REFERENCE:
            logv = np.log([float(r["volume_ml"]) for r in present])
            ref.log_volume_mean = float(logv.mean())
            ref.log_volume_sd = float(max(logv.std(ddof=1), MIN_LOG_VOLUME_SD))
            ref.components_p95 = math.ceil(float(np.percentile([int(r["components"]) for r in present], 95)))
            ref.radius_mm = float((3 * math.exp(float(np.median(logv))) * 1000 / (4 * math.pi)) ** (1 / 3))
            offsets: dict[str, list[float]] = {}
            for r in present:
                zs = z_of.get(str(r["scan_id"]), {})
                for anchor, za in zs.items():
                    if anchor != name:
                        offsets.setdefault(anchor, []).append(zs[name] - za)
            for anchor, vals in offsets.items():
                if len(vals) >= MIN_REFERENCE:
                    ref.z_offsets[anchor] = (float(np.mean(vals)), float(np.std(vals, ddof=1)), len(vals))
        out[name] = ref
    return out


# ----------------------------------------------------------------------------------- signals


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), elementwise, float32 (0 at p = 0 or 1, 1 at p = 0.5)."""
    q = np.clip(np.asarray(p, dtype=np.float32), 1e-6, 1 - 1e-6)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def entropy_signal(prob: np.ndarray, mask: np.ndarray) -> float:
    """Mean binary entropy (bits) of ``prob`` inside ``mask`` and its one-voxel (26-neighbour) border.

    Args:
        prob: (X, Y, Z) class probability on the inference grid.
        mask: (X, Y, Z) bool final mask on the same grid. When empty, the region is where ``prob`` >=
            :data:`NEAR_MISS_P` (the model's near-misses); 0.0 when there is none.
    """
    region = ndimage.binary_dilation(mask, STRUCT26) if mask.any() else np.asarray(prob) >= NEAR_MISS_P
    if not region.any():
        return 0.0
    return float(binary_entropy(np.asarray(prob)[region]).mean())


def near_miss(prob: np.ndarray, mask: np.ndarray, voxel_ml: float) -> tuple[float | None, float | None]:
    """The largest sub-threshold region of a class predicted absent.

    Args:
        prob: (X, Y, Z) class probability on the inference grid.
        mask: (X, Y, Z) bool final mask on the same grid.
        voxel_ml: volume of one inference voxel in mL.

    Returns:
        ``(mL, peak probability)`` of the largest 26-connected region where ``prob`` >= :data:`NEAR_MISS_P`;
        ``(0.0, max prob)`` when there is none; ``(None, None)`` when the mask is not empty (a class
        predicted present has its entropy instead).
    """
    if mask.any():
        return None, None
    p = np.asarray(prob, dtype=np.float32)
    region = p >= NEAR_MISS_P
    if not region.any():
        return 0.0, float(p.max()) if p.size else 0.0
    labels, n = label_components(region)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    biggest = int(np.argmax(sizes)) + 1
    return float(sizes[biggest - 1] * voxel_ml), float(p[labels == biggest].max())


def absent_peak(prob: np.ndarray, mask: np.ndarray) -> float | None:
    """The highest probability of a class predicted absent, anywhere on the inference grid.

    Args:
        prob: (X, Y, Z) class probability on the inference grid.
        mask: (X, Y, Z) bool final mask on the same grid.

    Returns:
        ``max(prob)`` (0.0 for an empty grid) when ``mask`` is empty; None when it is not (the signal is
        the model's evidence for an absence, which a class predicted present does not claim).
    """
    if mask.any():
        return None
    p = np.asarray(prob)
    return float(p.max()) if p.size else 0.0


def dice_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - Dice`` of two bool masks; 0.0 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 0.0
    return 1.0 - 2.0 * int(np.count_nonzero(a & b)) / total


def may_overlap(a: str, b: str) -> bool:
    """Whether classes ``a`` and ``b`` may share voxels: one lies inside the other (a tumour in its
    organ), or both lie inside a common organ (a liver tumour and a hepatic vessel)."""
    ca, cb = class_by_name(a), class_by_name(b)
    return a in cb.parents or b in ca.parents or bool(set(ca.parents) & set(cb.parents))


def blames_other(name: str, other: str) -> bool:
    """Whether an overlap of organ ``name`` with ``other`` is ``other``'s error alone: ``other`` lies
    inside an organ (a tumour, a cyst, a vessel of its parent) and ``name`` lies inside none. A liver
    tumour drawn into the spleen is the tumour's mistake (its ``outside_parent`` signal says so); the
    spleen item stays clean."""
    return bool(class_by_name(other).parents) and not class_by_name(name).parents


def shared_voxels(a: CroppedMask, b: CroppedMask) -> int:
    """Number of voxels two masks of the same volume share (computed on the overlap of their boxes)."""
    lo = np.maximum(a.offset, b.offset)
    hi = np.minimum(np.add(a.offset, a.data.shape), np.add(b.offset, b.data.shape))
    if (hi <= lo).any():
        return 0
    sa = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(lo, hi, a.offset))
    sb = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(lo, hi, b.offset))
    return int(np.count_nonzero(a.data[sa] & b.data[sb]))


def overlap_signal(
    name: str, mask: CroppedMask, others: Mapping[str, CroppedMask]
) -> tuple[float, str | None]:
    """(largest fraction of ``mask`` shared with a class it must not overlap, that class) — (0.0, None)
    when there is none. ``others`` maps class name -> mask on the same grid (predicted or annotated)."""
    voxels = mask.voxels
    if voxels == 0:
        return 0.0, None
    best, with_ = 0.0, None
    for other, m in others.items():
        if other == name or m.is_empty or may_overlap(name, other) or blames_other(name, other):
            continue
        frac = shared_voxels(mask, m) / voxels
        if frac > best:
            best, with_ = frac, other
    return best, with_


def component_count(mask: CroppedMask) -> int:
    """Number of 26-connected components."""
    if mask.is_empty:
        return 0
    return label_components(mask.data)[1]


def centroid_mm(mask: CroppedMask, affine: np.ndarray) -> np.ndarray | None:
    """RAS+ centroid (mm) of a mask, or None when empty."""
    if mask.is_empty:
        return None
    idx = np.nonzero(mask.data)
    ijk = np.array([i.mean() for i in idx]) + np.asarray(mask.offset, dtype=np.float64)
    return np.asarray(affine)[:3, :3] @ ijk + np.asarray(affine)[:3, 3]


def side_offset(name: str, centroid: np.ndarray | None, midline_x_mm: float) -> float | None:
    """Distance (mm) of the centroid from the midline towards the class's own side (RAS+: the patient's
    right is +x); negative means the wrong side. None for unpaired classes or an empty mask."""
    side = class_by_name(name).side
    if side is None or centroid is None:
        return None
    return float((centroid[0] - midline_x_mm) * (1.0 if side == "right" else -1.0))


def parent_region(
    parents: Sequence[CroppedMask], spacing: tuple[float, float, float], margin_mm: float, box: CroppedMask
) -> np.ndarray:
    """Bool array of ``box.data``'s shape: inside the union of ``parents`` with holes filled, grown by
    ``margin_mm`` (the tumour-inside-organ test, shared with post-processing).

    Args:
        parents: masks of the parent organs (empty ones are ignored).
        spacing: voxel size (mm) along i, j, k.
        margin_mm: growth distance.
        box: the mask whose bounding box the answer covers.
    """
    out = np.zeros(box.data.shape, dtype=bool)
    pad = [math.ceil(margin_mm / max(s, 1e-6)) for s in spacing]
    lo = np.subtract(box.offset, pad)
    hi = np.add(np.add(box.offset, box.data.shape), pad)
    window = np.zeros(tuple(hi - lo), dtype=bool)
    for p in parents:
        if p.is_empty:
            continue
        filled = _filled(p)
        a = np.maximum(lo, p.offset)
        b = np.minimum(hi, np.add(p.offset, p.data.shape))
        if (b <= a).any():
            continue
        src = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, p.offset))
        dst = tuple(slice(int(x - w), int(y - w)) for x, y, w in zip(a, b, lo))
        window[dst] |= filled[src]
    if not window.any():
        return out
    if margin_mm > 0:
        window = ndimage.distance_transform_edt(~window, sampling=spacing) <= margin_mm
    inner = tuple(slice(p_, p_ + n) for p_, n in zip(pad, box.data.shape))
    return window[inner]


_FILLED_CACHE: dict[int, tuple[CroppedMask, np.ndarray]] = {}


def _filled(m: CroppedMask) -> np.ndarray:
    # Filling a large organ's holes is the costly part; a job asks for the same parent once per child.
    hit = _FILLED_CACHE.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    filled = ndimage.binary_fill_holes(m.data)
    if len(_FILLED_CACHE) > 16:
        _FILLED_CACHE.clear()
    _FILLED_CACHE[id(m)] = (m, filled)
    return filled


def outside_parent_signal(
    mask: CroppedMask, parents: Sequence[CroppedMask], spacing: tuple[float, float, float]
) -> float:
    """Fraction of ``mask``'s voxels outside its (hole-filled, :data:`PARENT_MARGIN_MM`-grown) parents."""
    voxels = mask.voxels
    if voxels == 0:
        return 0.0
    inside = parent_region(parents, spacing, PARENT_MARGIN_MM, mask)
    return 1.0 - int(np.count_nonzero(mask.data & inside)) / voxels


def expected_z(
    name: str, anchors: Mapping[str, float], reference: ReferenceStats
) -> tuple[float, float] | None:
    """(expected centroid z, its sd) of ``name`` from the z of other classes present in the scan
    (``anchors``: class -> RAS+ z mm), inverse-variance weighted over the reference offsets; None when no
    anchor has a reference offset."""
    ref = reference.get(name)
    if ref is None:
        return None
    num = den = 0.0
    for anchor, z in anchors.items():
        off = ref.z_offsets.get(anchor)
        if off is None:
            continue
        mean, sd, _ = off
        w = 1.0 / max(sd, 5.0) ** 2
        num += w * (z + mean)
        den += w
    if den == 0:
        return None
    return num / den, math.sqrt(1.0 / den)


def scan_z_range(affine: np.ndarray, shape: Sequence[int]) -> tuple[float, float]:
    """(min, max) RAS+ z (mm) of the scan's voxel centres."""
    corners = np.array(
        [[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)]
    )
    z = corners @ np.asarray(affine)[2, :3] + np.asarray(affine)[2, 3]
    return float(z.min()), float(z.max())


@dataclass
class ScanContext:
    """What the signals of one scan need besides its masks.

    Args:
        affine: (4, 4) voxel -> RAS+ mm of the original grid.
        shape: original (i, j, k) shape.
        midline_x_mm: RAS+ x of the body midline.
        known: annotated classes of the scan's original labels -> mask (empty for annotated absent).
        known_centroids: annotated present classes -> RAS+ centroid (mm).
        hu: the CT (HU) on the original grid, ``shape``; None skips the signals that read it.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    midline_x_mm: float
    known: dict[str, CroppedMask] = field(default_factory=dict)
    known_centroids: dict[str, np.ndarray] = field(default_factory=dict)
    hu: np.ndarray | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)
        return float(s[0]), float(s[1]), float(s[2])


#: The twin's HU percentiles that bound "the twin's density" (its parenchyma, not its edges or hilum).
TWIN_HU_PERCENTILES = (10.0, 90.0)


def twin_density_match(twin: CroppedMask, ctx: ScanContext) -> float | None:
    """Fraction of ``twin``'s voxels mirrored across the body midline whose HU lies within the twin's own
    :data:`TWIN_HU_PERCENTILES` range (the ``twin_density_match`` signal; see the module docstring).

    Args:
        twin: the present twin's mask on the original grid.
        ctx: the scan's geometry and midline; ``ctx.hu`` the CT on that grid.

    Returns:
        A fraction in [0, 1] (mirrored voxels outside the scan count as not matching); None without
        ``ctx.hu`` or with an empty twin. The HU range is taken over the twin's core (its mask eroded by
        one voxel; the whole mask when that leaves nothing).
    """
    if ctx.hu is None or twin.is_empty:
        return None
    hu = np.asarray(ctx.hu)
    ijk = np.argwhere(twin.data) + np.asarray(twin.offset)
    # The density comes from the twin's core: a predicted mask's boundary voxels hold fat (a tenth of a
    # small organ's voxels at a coarse grid), which would stretch the range down to the fossa's fat.
    core = ndimage.binary_erosion(twin.data)
    inner = np.argwhere(core) + np.asarray(twin.offset) if core.any() else ijk
    lo, hi = np.percentile(hu[tuple(inner.T)], TWIN_HU_PERCENTILES)
    affine = np.asarray(ctx.affine, dtype=np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    world[:, 0] = 2.0 * ctx.midline_x_mm - world[:, 0]  # RAS+: x is the patient's left-right axis
    back = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(np.int64)
    inside = np.all((back >= 0) & (back < np.asarray(hu.shape)), axis=1)
    values = hu[tuple(back[inside].T)]
    return float(np.count_nonzero((values >= lo) & (values <= hi))) / len(ijk)


def plausibility_signals(
    name: str,
    mask: CroppedMask,
    masks: Mapping[str, CroppedMask],
    ctx: ScanContext,
    reference: ReferenceStats,
) -> dict[str, Any]:
    """The catalog-statistics and anatomy signals of one class (no probabilities needed).

    Args:
        name: the class.
        mask: its final mask on the original grid.
        masks: the predicted classes' final masks the signal may read (overlap, parents and anchors;
            :func:`scan_signals` leaves out the classes the model never learnt).
        ctx: the scan's geometry, midline and annotated masks.
        reference: :func:`reference_stats` of the catalog.

    Returns:
        A dict with the keys of :data:`SIGNAL_KEYS` except ``entropy`` and ``tta_disagreement``.
    """
    cls = class_by_name(name)
    ref = reference.get(name)
    voxel_ml = float(abs(np.linalg.det(np.asarray(ctx.affine)[:3, :3]))) / 1000.0
    voxels = mask.voxels
    sig: dict[str, Any] = {
        "present": voxels > 0,
        "voxels": voxels,
        "volume_ml": round(voxels * voxel_ml, 4),
        "side": cls.side,
        "n_reference": ref.n_annotated if ref else 0,
    }
    everything = {**ctx.known, **masks}
    sig["overlap"], sig["overlap_with"] = overlap_signal(name, mask, everything)
    sig["components"] = component_count(mask)
    sig["expected_components"] = 1 if cls.single_component else (ref.components_p95 if ref else None)
    c = centroid_mm(mask, ctx.affine)
    sig["side_offset_mm"] = side_offset(name, c, ctx.midline_x_mm)
    sig["volume_z"] = None
    if voxels and ref is not None and ref.log_volume_mean is not None and ref.log_volume_sd:
        sig["volume_z"] = (math.log(voxels * voxel_ml) - ref.log_volume_mean) / ref.log_volume_sd
    sig["parent"] = None
    sig["outside_parent"] = None
    if cls.parents:
        # a parent predicted absent leaves the tumour nothing to lie outside of: that is the parent's
        # error (its own ``missing`` signal), not the tumour's
        parents = [everything[p] for p in cls.parents if p in everything and not everything[p].is_empty]
        sig["parent"] = " or ".join(cls.parents)
        if parents:
            sig["outside_parent"] = outside_parent_signal(mask, parents, ctx.spacing)
    sig["in_region"] = None
    sig["expected_presence"] = ref.presence if ref and ref.n_annotated else None
    sig["twin_density_match"] = None
    if not voxels and cls.twin is not None and cls.twin in everything:
        sig["twin_density_match"] = twin_density_match(everything[cls.twin], ctx)
    if not voxels and not cls.is_tumor:
        anchors: dict[str, float] = {k: float(v[2]) for k, v in ctx.known_centroids.items()}
        for other, m in masks.items():
            if other != name and not m.is_empty:
                cm = centroid_mm(m, ctx.affine)
                if cm is not None:
                    anchors[other] = float(cm[2])
        guess = expected_z(name, anchors, reference)
        if guess is not None:
            z0, z1 = scan_z_range(ctx.affine, ctx.shape)
            # Inside the field of view by at least half the organ's size (it cannot hide beyond the edge).
            half = 0.5 * (ref.radius_mm if ref else 0.0)
            sig["in_region"] = bool(z0 + half <= guess[0] <= z1 - half)
    return sig


def scan_signals(
    masks: Mapping[str, CroppedMask],
    ctx: ScanContext,
    reference: ReferenceStats,
    probs: np.ndarray | None = None,
    prob_names: Sequence[str] = (),
    prob_affine: np.ndarray | None = None,
    tta_probs: np.ndarray | None = None,
    learnt: Collection[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], np.ndarray | None]:
    """Every signal of every predicted class of one scan, and the viewer's entropy map.

    Args:
        masks: predicted class -> final mask on the original grid (empty when predicted absent).
        ctx: geometry, midline and annotated masks of the scan.
        reference: the catalog's annotated-scan statistics.
        probs: (C, X, Y, Z) float16/32 probabilities on the inference grid, channel c = ``prob_names[c]``;
            None skips entropy and TTA.
        prob_names: class of each channel.
        prob_affine: (4, 4) voxel -> RAS+ mm of the inference grid.
        tta_probs: (C, X, Y, Z) probabilities of the test-time augmentation on the same grid, or None.
        learnt: the predicted classes the model learnt (``workbench.review.learnt.learnt``); None: all.
            The masks of the others are noise: every class still gets its own signals, but no class's
            overlap, parent or anchor reads an unlearnt class's mask (annotated masks still count).

    Returns:
        ``(signals, entropy_map)``: class -> signal dict; float16 (X, Y, Z) voxel-wise max entropy over the
        predicted classes (None without ``probs``).
    """
    out: dict[str, dict[str, Any]] = {}
    emap: np.ndarray | None = None
    channel = {n: i for i, n in enumerate(prob_names)}
    # An unlearnt head's mask must not make a learnt class's item look wrong (overlap, outside parent).
    trusted = {n: m for n, m in masks.items() if learnt is None or n in learnt}
    for name, mask in masks.items():
        sig = plausibility_signals(name, mask, trusted, ctx, reference)
        sig["entropy"] = None
        sig["tta_disagreement"] = None
        if probs is not None and name in channel and prob_affine is not None:
            p = probs[channel[name]]
            low = mask_to_grid(mask, ctx.affine, prob_affine, p.shape)
            sig["entropy"] = round(entropy_signal(p, low), 4)
            voxel_ml = abs(float(np.linalg.det(np.asarray(prob_affine)[:3, :3]))) / 1000.0
            sig["near_miss_ml"], sig["near_miss_p"] = near_miss(p, low, voxel_ml)
            sig["absent_peak_p"] = absent_peak(p, low)
            h = binary_entropy(p).astype(np.float16)
            emap = h if emap is None else np.maximum(emap, h)
            if tta_probs is not None:
                sig["tta_disagreement"] = round(
                    dice_disagreement(p >= 0.5, tta_probs[channel[name]] >= 0.5), 4
                )
        out[name] = {k: _jsonable(sig.get(k)) for k in SIGNAL_KEYS}
    return out, emap


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return round(f, 4) if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# ------------------------------------------------------------------------------------- rows


def uncertainty_rows(
    scan_id: str,
    run_id: str,
    label_set_id: str,
    signals: Mapping[str, Mapping[str, Any]],
    n_annotated: Mapping[str, int],
) -> list[dict[str, Any]]:
    """Rows for the ``uncertainty`` table, scored by ``workbench.pseudolabel.scoring.assess``.

    Args:
        scan_id / run_id / label_set_id: the item's keys.
        signals: class -> its signals (:func:`scan_signals`).
        n_annotated: class -> annotated scans in the catalog (``Catalog.annotated_counts``).

    Returns:
        Dicts ``scan_id, class_name, run_id, label_set_id, score, signals, reasons``.
    """
    rows = []
    for name, sig in signals.items():
        score, reasons = assess(name, sig, n_annotated.get(name, 0))
        rows.append(
            {
                "scan_id": scan_id,
                "class_name": name,
                "run_id": run_id,
                "label_set_id": label_set_id,
                "score": score,
                "signals": dict(sig),
                "reasons": reasons,
            }
        )
    return rows


def store_uncertainty(ws: Workspace, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write uncertainty rows (:func:`uncertainty_rows`; ``signals`` a dict or JSON text) in ONE catalog
    transaction (``Catalog.add_uncertainty``); a row with the same scan, class and run is replaced.

    Args:
        ws: the workspace.
        rows: the rows.
    """
    ws.catalog.add_uncertainty([dict(r) for r in rows])
