"""Nested classes in label-map layers (``workbench.review.nesting``): exact by construction."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.taxonomy import class_by_name
from workbench.review.nesting import children_of, decode_class, encode_layers

SHAPE = (24, 24, 24)


def _cube(lo: tuple[int, int, int], size: int | tuple[int, int, int]) -> np.ndarray:
    s = (size,) * 3 if isinstance(size, int) else size
    m = np.zeros(SHAPE, bool)
    m[lo[0] : lo[0] + s[0], lo[1] : lo[1] + s[1], lo[2] : lo[2] + s[2]] = True
    return m


KIDNEY_R = _cube((2, 2, 2), 8)
KIDNEY_L = _cube((14, 2, 2), 8)
LIVER = _cube((2, 12, 2), 10)

CASES = {
    # a tumour inside its kidney: one layer, the kidney keeps the tumour's voxels
    "tumour_in_kidney": ({"kidney_right": KIDNEY_R, "kidney_tumor": _cube((4, 4, 4), 3)}, 1),
    # both kidneys, a tumour in the right one and a cyst in the left: each counts for the kidney it touches
    "two_parents": (
        {
            "kidney_right": KIDNEY_R,
            "kidney_left": KIDNEY_L,
            "kidney_tumor": _cube((4, 4, 4), 3),
            "kidney_cyst": _cube((16, 4, 4), 2),
        },
        1,
    ),
    # a tumour reaching outside its organ cannot share the organ's map
    "tumour_outside": ({"kidney_right": KIDNEY_R, "kidney_tumor": _cube((8, 4, 4), 4)}, 2),
    # two organs that overlap (a pseudo-label's mistake)
    "organs_overlap": ({"liver": LIVER, "stomach": _cube((10, 18, 8), 6)}, 2),
    # a tumour that fills its organ's whole component: nothing of the organ is left to touch
    "tumour_fills_organ": ({"kidney_right": KIDNEY_R, "kidney_tumor": KIDNEY_R.copy()}, 2),
    # a vessel and a tumour in the liver that overlap each other (siblings, not parent and child)
    "siblings_overlap": (
        {"liver": LIVER, "hepatic_vessel": _cube((4, 14, 4), (6, 2, 2)), "liver_tumor": _cube((6, 14, 4), 3)},
        2,
    ),
    # one tumour bridging both kidneys would count for both
    "bridging_tumour": (
        {"kidney_right": _cube((2, 2, 2), (10, 8, 8)), "kidney_left": _cube((12, 2, 2), (10, 8, 8)),
         "kidney_tumor": _cube((10, 4, 4), (4, 2, 2))},
        2,
    ),
    "disjoint_organs": ({"liver": LIVER, "spleen": _cube((14, 14, 14), 5), "kidney_right": KIDNEY_R}, 1),
}  # fmt: skip


@pytest.mark.parametrize(("masks", "n_layers"), CASES.values(), ids=list(CASES))
def test_every_class_decodes_exactly_from_its_layer(masks: dict[str, np.ndarray], n_layers: int) -> None:
    layers = encode_layers(masks, SHAPE)
    assert len(layers) == n_layers
    assert sorted(n for layer in layers for n in layer.classes) == sorted(masks)
    for layer in layers:
        assert layer.labels.dtype == np.uint8
        for name in layer.classes:
            np.testing.assert_array_equal(decode_class(layer.labels, name), masks[name], err_msg=name)


def test_the_tumour_is_painted_over_its_organ_and_counted_back() -> None:
    tumour = _cube((4, 4, 4), 3)
    (layer,) = encode_layers({"kidney_right": KIDNEY_R, "kidney_tumor": tumour}, SHAPE)
    assert int((layer.labels == class_by_name("kidney_right").index).sum()) == 8**3 - 3**3
    assert int((layer.labels == class_by_name("kidney_tumor").index).sum()) == 3**3
    assert int(decode_class(layer.labels, "kidney_right").sum()) == 8**3


def test_a_tumour_that_touches_only_the_other_kidney_is_not_counted_for_this_one() -> None:
    labels = np.zeros(SHAPE, np.uint8)
    labels[KIDNEY_L] = class_by_name("kidney_left").index
    labels[KIDNEY_R] = class_by_name("kidney_right").index
    labels[_cube((16, 4, 4), 2)] = class_by_name("kidney_tumor").index  # inside the left kidney
    assert int(decode_class(labels, "kidney_right").sum()) == 8**3
    assert int(decode_class(labels, "kidney_left").sum()) == 8**3


def test_empty_masks_paint_nothing() -> None:
    assert encode_layers({"liver": np.zeros(SHAPE, bool)}, SHAPE) == []


@pytest.mark.parametrize(
    ("name", "children"),
    [
        ("liver", ("hepatic_vessel", "liver_tumor", "hepatic_vessel_tumor")),
        ("kidney_left", ("kidney_tumor", "kidney_cyst")),
        ("spleen", ()),
        ("liver_tumor", ()),
    ],
)
def test_children_of(name: str, children: tuple[str, ...]) -> None:
    assert children_of(name) == children
