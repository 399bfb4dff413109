"""Nested classes in label maps: masks that overlap, written as layers of plain label maps and read back
bit for bit.

A label map holds one value per voxel (the universal class index, 0 background), so it cannot hold a
tumour AND the kidney around it. The rule that restores nesting (:func:`decode_class`):

* a voxel of value ``C`` belongs to class ``C``;
* a 26-connected component of voxels valued with children of ``C`` (classes whose
  :attr:`harmonize.taxonomy.UniversalClass.parents` include ``C``: tumours, cysts, hepatic vessels)
  belongs to ``C`` too when it touches a voxel of value ``C`` (26-neighbours). So a tumour painted over
  its organ stays part of the organ, and a kidney tumour counts for the kidney it lies in, not the other.

:func:`encode_layers` paints the classes in :func:`harmonize.taxonomy.paint_order` (organs, then
structures inside organs, then tumours) into as few label maps as it can such that this rule gives back
EVERY class exactly; a class that overlaps a non-parent (two organs of a pseudo-label), a tumour that
reaches outside its organ, or a child that fills its parent's whole component goes to a further layer.
It checks its own output with :func:`decode_class`, so a round trip is lossless by construction. Each
layer is an ordinary label map that 3D Slicer and ITK-SNAP open and edit with the same colour table.

Example:
    >>> layers = encode_layers({"kidney_right": kid, "kidney_tumor": tumour}, kid.shape)  # doctest: +SKIP
    >>> [layer.classes for layer in layers]  # doctest: +SKIP
    [('kidney_right', 'kidney_tumor')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from harmonize.geometry import STRUCT26, bbox_slices, label_components
from harmonize.taxonomy import CLASSES, class_by_name, paint_order

#: The label maps' dtype: the 32 universal class indices fit.
LABEL_DTYPE = np.uint8


@dataclass(frozen=True)
class Layer:
    """One label map of an encoding.

    Args:
        classes: the classes painted into it, in painting order.
        labels: (i, j, k) uint8 label map, value = universal class index, 0 background.
    """

    classes: tuple[str, ...]
    labels: np.ndarray


def children_of(name: str) -> tuple[str, ...]:
    """The classes that lie inside ``name`` (their ``parents`` include it), in universal order.

    Args:
        name: a universal class.

    Returns:
        Their names (empty for a tumour or an organ without nested classes).
    """
    return tuple(c.name for c in CLASSES if name in c.parents)


def decode_class(labels: np.ndarray, name: str) -> np.ndarray:
    """One class's mask from a label map, with its nested classes restored (module docstring).

    Args:
        labels: (i, j, k) integer label map, value = universal class index.
        name: the class.

    Returns:
        (i, j, k) bool mask.
    """
    own = labels == class_by_name(name).index
    kids = [class_by_name(c).index for c in children_of(name)]
    if not kids or not own.any():
        return own
    nested = np.isin(labels, kids)
    tight = bbox_slices(nested)
    if tight is None:
        return own
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in tight)  # one voxel of context
    comps, n = label_components(nested[box])
    if n == 0:
        return own
    touching = ndimage.binary_dilation(own[box], STRUCT26) & (comps > 0)
    keep = np.unique(comps[touching])
    out = own.copy()
    out[box] |= np.isin(comps, keep[keep > 0])
    return out


def paint(masks: Mapping[str, np.ndarray], classes: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    """Paint ``classes`` in :func:`harmonize.taxonomy.paint_order` into one label map (later wins).

    Args:
        masks: class -> (i, j, k) bool mask.
        classes: the classes to paint.
        shape: the volume's shape.

    Returns:
        (i, j, k) uint8 label map.
    """
    labels = np.zeros(shape, LABEL_DTYPE)
    for n in paint_order(list(classes)):
        labels[masks[n]] = class_by_name(n).index
    return labels


def _culprit(labels: np.ndarray, name: str, truth: np.ndarray, members: Sequence[str]) -> str:
    """The class of a layer to move out so that ``name`` decodes exactly: the latest-painted class found
    on a voxel where the decoded ``name`` differs from its truth (painted over it, or a nested class
    counted for it that does not lie inside it)."""
    wrong = decode_class(labels, name) != truth
    values = {int(v) for v in np.unique(labels[wrong])} - {0, class_by_name(name).index}
    found = [n for n in members if class_by_name(n).index in values]
    return paint_order(found)[-1] if found else name


def encode_layers(masks: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> list[Layer]:
    """Encode overlapping class masks as label-map layers that :func:`decode_class` reads back exactly.

    Args:
        masks: class -> (i, j, k) bool mask on one grid (empty masks are left out: nothing to paint).
        shape: the grid's shape.

    Returns:
        The layers, the first holding as many classes as the rule allows; [] when every mask is empty.
        For every class ``n`` painted, ``decode_class(layer.labels, n)`` of its layer equals ``masks[n]``.
    """
    remaining = paint_order([n for n, m in masks.items() if np.asarray(m).any()])
    layers: list[Layer] = []
    while remaining:
        members = list(remaining)
        while True:
            labels = paint(masks, members, shape)
            bad = next((n for n in members if not np.array_equal(decode_class(labels, n), masks[n])), None)
            if bad is None:
                break
            members.remove(_culprit(labels, bad, np.asarray(masks[bad], bool), members))
        layers.append(Layer(tuple(members), labels))
        remaining = [n for n in remaining if n not in members]
    return layers
