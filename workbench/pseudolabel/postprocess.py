"""Post-processing of thresholded predictions on the original grid: one function per anatomy rule.

:data:`RULES` holds the rules in the order they run; each changes the masks of a
:class:`PostprocessResult` in place and records every change (class, step, voxels before and after, in
words). A run writes the names of the rules it applied into its config (:data:`RULE_NAMES`), as nnU-Net
records its post-processing functions.

1. :func:`resplit_pairs`: paired organs predicted together are pooled and split again at the body midline
   in world coordinates (``harmonize.laterality``).
2. :func:`keep_largest_component`: classes anatomy calls single-component keep their largest 26-connected
   component (``harmonize.geometry.largest_component``).
3. :func:`remove_portal_vein_below_pancreas`: the portal/splenic vein loses what lies below the pancreas
   (the original Universal Model's rule).
4. :func:`keep_inside_parent`: tumours, the kidney cyst and hepatic vessels keep only what lies inside
   their (hole-filled, 5 mm grown) parent organ, the annotated one where the scan has it.

Example:
    >>> res = postprocess({"spleen": mask}, affine, midline_x_mm=0.0)  # doctest: +SKIP
    >>> res.changes[0]["step"]  # doctest: +SKIP
    'largest_component'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonize.geometry import largest_component
from harmonize.laterality import SplitDecision, split_left_right
from harmonize.masks import CroppedMask, crop_affine
from harmonize.taxonomy import PAIRS, class_by_name
from workbench.pseudolabel.uncertainty import PARENT_MARGIN_MM, parent_region, shared_voxels


@dataclass
class PostprocessResult:
    """Masks after post-processing, and what changed.

    Args:
        masks: class -> final mask.
        changes: one dict per change (``class``, ``step``, voxels before/after, detail).
        notes: the same in words, for ``label_set.notes``.
        splits: left/right decisions of re-split pairs.
    """

    masks: dict[str, CroppedMask]
    changes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    splits: list[SplitDecision] = field(default_factory=list)

    def record(self, name: str, step: str, before: int, after: int, detail: str) -> None:
        """Record one change of class ``name`` by rule step ``step``."""
        self.changes.append(
            {"class": name, "step": step, "voxels_before": before, "voxels_after": after, "detail": detail}
        )
        self.notes.append(f"{name}: {detail} ({before} -> {after} voxels)")


@dataclass(frozen=True)
class PostprocessContext:
    """What the rules know of the scan besides the predicted masks.

    Args:
        affine: (4, 4) voxel -> RAS+ mm of the grid.
        midline_x_mm: RAS+ x of the body midline.
        known: the scan's annotated classes -> mask (empty when annotated absent).
        parent_margin_mm: how far outside its parent a child voxel may lie.
    """

    affine: np.ndarray
    midline_x_mm: float
    known: Mapping[str, CroppedMask] = field(default_factory=dict)
    parent_margin_mm: float = PARENT_MARGIN_MM


#: A post-processing rule: changes ``PostprocessResult.masks`` in place and records what it changed.
Rule = Callable[[PostprocessResult, PostprocessContext], None]


def resplit_pairs(res: PostprocessResult, ctx: PostprocessContext) -> None:
    """Pairs predicted together (both sides in the masks): pool and split again at the midline in world
    coordinates; the split decisions go to ``res.splits``.

    Args:
        res: the masks so far (changed in place).
        ctx: the scan's grid and midline.
    """
    out = res.masks
    for pair, (left, right) in PAIRS.items():
        if left not in out or right not in out:
            continue
        pooled = out[left].union(out[right])
        if pooled.is_empty:
            continue
        lmask, rmask, decisions = split_left_right(
            pooled.data,
            crop_affine(np.asarray(ctx.affine), pooled.offset),
            midline_x_mm=ctx.midline_x_mm,
            pair=pair,
        )
        new_l = CroppedMask.from_full(lmask, pooled.offset, pooled.shape)
        new_r = CroppedMask.from_full(rmask, pooled.offset, pooled.shape)
        for name, old, new in ((left, out[left], new_l), (right, out[right], new_r)):
            moved = shared_voxels(old, new)
            if moved != old.voxels or new.voxels != old.voxels:
                res.record(
                    name,
                    "split_left_right",
                    old.voxels,
                    new.voxels,
                    f"{pair} pooled and split at midline x={ctx.midline_x_mm:.1f} mm",
                )
            out[name] = new
        res.splits.extend(decisions)


def keep_largest_component(res: PostprocessResult, ctx: PostprocessContext) -> None:
    """Classes anatomy calls single-component (tumours and vessels with branches excluded) keep their
    largest 26-connected component.

    Args:
        res: the masks so far (changed in place).
        ctx: unused (every rule takes it).
    """
    out = res.masks
    for name in list(out):
        cls = class_by_name(name)
        mask = out[name]
        if not cls.single_component or cls.is_tumor or mask.is_empty:
            continue
        kept, n, removed = largest_component(mask.data)
        if removed:
            new = CroppedMask.from_full(kept, mask.offset, mask.shape)
            detail = f"kept the largest of {n} components"
            res.record(name, "largest_component", mask.voxels, new.voxels, detail)
            out[name] = new


def remove_portal_vein_below_pancreas(res: PostprocessResult, ctx: PostprocessContext) -> None:
    """The portal / splenic vein keeps nothing below the pancreas (annotated pancreas first, else the
    predicted one).

    Args:
        res: the masks so far (changed in place).
        ctx: the scan's grid and annotated masks.
    """
    out = res.masks
    pv, pancreas = "portal_vein_and_splenic_vein", ctx.known.get("pancreas", out.get("pancreas"))
    if pv not in out or out[pv].is_empty or pancreas is None or pancreas.is_empty:
        return
    z_min = float(_world_z(pancreas, ctx.affine).min())
    m = out[pv]
    zmap = _world_z(m, ctx.affine, full_box=True)
    kept_data = m.data & (zmap >= z_min)
    if kept_data.sum() != m.voxels:
        new = CroppedMask.from_full(kept_data, m.offset, m.shape)
        res.record(
            pv,
            "below_pancreas",
            m.voxels,
            new.voxels,
            f"removed voxels below the pancreas (z < {z_min:.1f} mm)",
        )
        out[pv] = new


def keep_inside_parent(res: PostprocessResult, ctx: PostprocessContext) -> None:
    """Children (tumours, the kidney cyst, hepatic vessels) keep only what lies inside their hole-filled
    parent organ grown by ``ctx.parent_margin_mm``: the annotated parent first, else the predicted one.

    Args:
        res: the masks so far (changed in place).
        ctx: the scan's grid, annotated masks and margin.
    """
    out, known = res.masks, ctx.known
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(ctx.affine)[:3, :3], axis=0))
    for name in list(out):
        cls = class_by_name(name)
        m = out[name]
        if not cls.parents or m.is_empty:
            continue
        parents = [known[p] if p in known else out[p] for p in cls.parents if p in known or p in out]
        if not parents:
            res.notes.append(
                f"{name}: no parent organ ({' or '.join(cls.parents)}) known or predicted; kept unchecked"
            )
            continue
        inside = parent_region(parents, spacing, ctx.parent_margin_mm, m)  # type: ignore[arg-type]
        kept_data = m.data & inside
        kept_n = int(np.count_nonzero(kept_data))
        if kept_n != m.voxels:
            res.record(
                name,
                "inside_parent",
                m.voxels,
                kept_n,
                f"removed what lies outside {' or '.join(cls.parents)} (+{ctx.parent_margin_mm:g} mm)",
            )
            out[name] = CroppedMask.from_full(kept_data, m.offset, m.shape)


#: The rules in the order they run.
RULES: tuple[Rule, ...] = (
    resplit_pairs,
    keep_largest_component,
    remove_portal_vein_below_pancreas,
    keep_inside_parent,
)
#: Their names, as a run's config records them.
RULE_NAMES: tuple[str, ...] = tuple(rule.__name__ for rule in RULES)


def postprocess(
    masks: Mapping[str, CroppedMask],
    affine: np.ndarray,
    *,
    midline_x_mm: float,
    known: Mapping[str, CroppedMask] | None = None,
    parent_margin_mm: float = PARENT_MARGIN_MM,
    rules: Sequence[Rule] = RULES,
) -> PostprocessResult:
    """Anatomy-aware clean-up of thresholded predictions on the original grid (see module docstring).

    Args:
        masks: predicted class -> mask (all channels the model has, not only those to be written: a
            predicted parent organ constrains its tumour).
        affine: (4, 4) voxel -> RAS+ mm of the grid.
        midline_x_mm: RAS+ x of the body midline (``harmonize.laterality.estimate_midline_x``).
        known: the scan's annotated classes -> mask (empty when annotated absent); preferred over
            predictions as parents.
        parent_margin_mm: how far outside its parent a tumour voxel may lie.
        rules: the rules to apply, in order (default :data:`RULES`).

    Returns:
        :class:`PostprocessResult`; every mask of ``masks`` is in it (possibly emptied).
    """
    res = PostprocessResult(dict(masks))
    ctx = PostprocessContext(np.asarray(affine), midline_x_mm, known or {}, parent_margin_mm)
    for rule in rules:
        rule(res, ctx)
    return res


def _world_z(m: CroppedMask, affine: np.ndarray, full_box: bool = False) -> np.ndarray:
    """World z (mm) of a mask's voxels, or of every voxel of its box (same shape as ``m.data``)."""
    a = np.asarray(affine)
    if full_box:
        grids = np.meshgrid(*[np.arange(o, o + n) for o, n in zip(m.offset, m.data.shape)], indexing="ij")
        return a[2, 0] * grids[0] + a[2, 1] * grids[1] + a[2, 2] * grids[2] + a[2, 3]
    ijk = np.argwhere(m.data) + np.asarray(m.offset)
    return ijk @ a[2, :3] + a[2, 3]
