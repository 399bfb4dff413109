"""Where a label-map export may say "unknown": the ignore region of a partially labelled scan.

A scan that knows every exported class gets true background outside its classes. A scan that does not
know some exported class U cannot say of a voxel "this is background" where U might be, and must not say
it nowhere: a model trained on all-ignore background learns no background at all (a mixed partial export
used to have 0 of 6.4 M voxels background). The rule, per scan and per unknown class U:

* U has a current pseudo-label of that scan that is not rejected (``current_label_of(['pseudo'])``: a
  plain one, or an accepted one when the export does not ship accepted pseudo-labels) drawing U: the
  ignore region is that mask dilated by ``margin_mm`` (default :data:`DEFAULT_MARGIN_MM`, in mm on the
  scan's own spacing). The model's guess says where U is; the margin covers where it is wrong by a few mm.
* that pseudo-label says U is absent, and U lies inside an organ (a tumour, a cyst, the hepatic vessels:
  :attr:`harmonize.taxonomy.UniversalClass.parents`): models miss small lesions, so U may still be
  anywhere in its organ: the ignore region is the organ (the scan's known or pseudo-labelled mask of a
  parent) dilated by the margin; with no mask of any parent, the body (below).
* that pseudo-label says U is absent and U is an organ: a whole missing organ is out of the field of view
  or removed, which models get right, so U is ignored nowhere (a reviewer who disagrees rejects the
  pseudo-label, and the body rule applies).
* otherwise (no pseudo-label of U, or only a rejected one): U may be anywhere in the body, so the ignore
  region is the body (:func:`body_mask`: CT above :data:`BODY_HU` HU, holes filled per axial slice so the
  lungs and the bowel gas count as body). The air around the patient and the table gap stay background.

The scan's ignore region is the union over its unknown classes; the known classes are painted over it
(:func:`workbench.export.labelmap.label_map`), the rest is background. A rejected pseudo-label is never a
hint: a reviewer said it is wrong, so the body stands in for it.

Example:
    >>> ct = np.full((5, 5, 3), -1000.0); ct[1:4, 1:4, :] = 40.0
    >>> int(body_mask(ct, np.eye(4)).sum())
    27
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from harmonize.taxonomy import class_by_name

#: Margin around an unknown class's pseudo-label inside which its voxels are ignored, mm.
DEFAULT_MARGIN_MM = 10.0
#: CT voxels above this (HU) are body; the air around the patient is about -1000 HU.
BODY_HU = -500.0
#: How an unknown class's ignore region was drawn (the manifest cases' ``ignore_classes`` values).
FROM_PSEUDO, FROM_PARENT, FROM_ABSENT, FROM_BODY = (
    "pseudo-label + margin",
    "parent organ + margin",
    "nowhere (pseudo-label: organ absent)",
    "body",
)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along i, j, k of a voxel -> world affine.

    Args:
        affine: (4, 4) voxel -> RAS mm.

    Returns:
        The lengths of the first three columns of the affine's 3 x 3 part.
    """
    s = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return float(s[0]), float(s[1]), float(s[2])


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the patient's superior-inferior direction (0, 1 or 2)."""
    a = np.asarray(affine, float)[:3, :3]
    direction = np.abs(a[2]) / np.maximum(np.linalg.norm(a, axis=0), 1e-12)
    return int(np.argmax(direction))


def body_mask(ct: np.ndarray, affine: np.ndarray, threshold_hu: float = BODY_HU) -> np.ndarray:
    """The patient's body: voxels above ``threshold_hu``, holes filled slice by slice along the axial axis.

    Args:
        ct: (i, j, k) HU.
        affine: (4, 4) voxel -> RAS mm (picks the axial axis).
        threshold_hu: body threshold.

    Returns:
        (i, j, k) bool.
    """
    axis = axial_axis(affine)
    above = np.moveaxis(np.asarray(ct) > threshold_hu, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in above]) if above.size else above
    return np.moveaxis(filled, 0, axis)


def dilate_mm(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance in mm, anisotropic spacing honoured).

    Args:
        mask: (i, j, k) bool.
        spacing: voxel size (mm) along i, j, k.
        margin_mm: the margin; 0 returns the mask itself.

    Returns:
        (i, j, k) bool: every voxel within ``margin_mm`` of the mask.
    """
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    pad = [int(np.ceil(margin_mm / max(s, 1e-6))) + 1 for s in spacing]
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + np.array(pad) + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
    out = np.zeros_like(mask, dtype=bool)
    out[box] = distance <= margin_mm
    return out


def ignore_region(
    unknown: Sequence[str],
    hints: Mapping[str, np.ndarray],
    ct: np.ndarray,
    affine: np.ndarray,
    margin_mm: float = DEFAULT_MARGIN_MM,
    *,
    absent: Collection[str] = (),
    organs: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, str]]:
    """The voxels of one scan where its unknown classes may be (the rule of the module docstring).

    Args:
        unknown: the exported classes the scan does not know.
        hints: unknown class -> its non-rejected pseudo-label mask (only classes it draws).
        ct: (i, j, k) HU of the scan.
        affine: (4, 4) voxel -> RAS mm.
        margin_mm: margin around a pseudo-label or a parent organ, mm.
        absent: unknown classes a non-rejected pseudo-label of the scan says are absent.
        organs: class -> the scan's mask of it (known or pseudo-labelled), for the parents of absent
            lesions.

    Returns:
        ``(region, how)``: (i, j, k) bool, and unknown class -> :data:`FROM_PSEUDO`, :data:`FROM_PARENT`,
        :data:`FROM_ABSENT` or :data:`FROM_BODY`.
    """
    near = np.zeros(ct.shape, bool)
    how: dict[str, str] = {}
    for name in unknown:
        hint = hints.get(name)
        if hint is not None and hint.shape == ct.shape and hint.any():
            near |= hint
            how[name] = FROM_PSEUDO
        elif name in absent:
            how[name] = _absent_class(name, organs or {}, near)
        else:
            how[name] = FROM_BODY
    # one dilation of the union (= the union of the dilations), so many unknown classes cost one transform
    region = dilate_mm(near, spacing_of(affine), margin_mm)
    if FROM_BODY in how.values():
        region |= body_mask(ct, affine)
    return region, how


def _absent_class(name: str, organs: Mapping[str, np.ndarray], near: np.ndarray) -> str:
    """How a class a pseudo-label calls absent is ignored; adds its parents' masks to ``near``."""
    parents = class_by_name(name).parents
    if not parents:
        return FROM_ABSENT
    masks = [organs[p] for p in parents if p in organs and organs[p].shape == near.shape]
    if not any(m.any() for m in masks):
        return FROM_BODY
    for m in masks:
        near |= m
    return FROM_PARENT


def ignore_totals(cases: Sequence[Mapping[str, Any]], margin_mm: float) -> dict[str, Any]:
    """The manifest's overall ``ignore`` entry from its cases' ``voxels`` / ``ignore_voxels`` /
    ``background_voxels``.

    Args:
        cases: manifest cases of a label-map export.
        margin_mm: the margin used.

    Returns:
        ``rule, margin_mm, voxels, ignore_voxels, ignore_share, background_voxels, background_share,
        cases_with_ignore``.
    """
    total = sum(int(c["voxels"]) for c in cases)
    ignored = sum(int(c["ignore_voxels"]) for c in cases)
    background = sum(int(c["background_voxels"]) for c in cases)
    return {
        "rule": "unknown class: its non-rejected pseudo-label dilated by margin_mm, else the body "
        f"(CT > {BODY_HU:g} HU, holes filled per axial slice); known classes painted over it; the rest "
        "is background",
        "margin_mm": float(margin_mm),
        "voxels": total,
        "ignore_voxels": ignored,
        "ignore_share": ignored / total if total else 0.0,
        "background_voxels": background,
        "background_share": background / total if total else 0.0,
        "cases_with_ignore": sum(1 for c in cases if int(c["ignore_voxels"]) > 0),
    }
