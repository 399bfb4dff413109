"""The phantom generator: anatomy in the right places, in RAS+, with the requested variants."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from harmonize.phantoms import make_phantom
from harmonize.taxonomy import CLASSES, class_by_name

SEEDS = [0, 1, 2, 7, 11]
CHILDREN = {c.name for c in CLASSES if c.parents}

# Intended mean HU per class, measured on the organ without the children inside it (post-contrast).
HU_RANGES = {
    "liver": (40, 80),
    "spleen": (80, 130),
    "kidney_left": (120, 180),
    "kidney_right": (120, 180),
    "aorta": (170, 230),
    "postcava": (140, 200),
    "portal_vein_and_splenic_vein": (150, 210),
    "celiac_trunk": (160, 240),
    "lung_left": (-900, -780),
    "lung_right": (-900, -780),
    "femur_left": (400, 1000),
    "femur_right": (400, 1000),
    "gall_bladder": (-10, 30),
    "bladder": (-10, 30),
    "pancreas": (60, 120),
    "stomach": (0, 60),
    "hepatic_vessel": (140, 210),
    "liver_tumor": (0, 50),
    "kidney_cyst": (-15, 25),
    "kidney_tumor": (50, 110),
}


def world_centroid(phantom, name: str) -> np.ndarray:
    ijk = np.argwhere(phantom.masks[name]).mean(axis=0)
    return phantom.ct.world(ijk[None])[0]


@pytest.fixture(scope="module", params=SEEDS)
def phantom(request):
    return make_phantom(request.param)


def test_grid_is_ras_int16(phantom) -> None:
    assert phantom.ct.axcodes == ("R", "A", "S")
    assert phantom.ct.array.dtype == np.int16
    assert phantom.ct.shape == (96, 96, 64)
    assert phantom.ct.spacing == (3.0, 3.0, 3.0)
    assert all(m.shape == phantom.ct.shape and m.dtype == bool for m in phantom.masks.values())


def test_every_class_present_by_default(phantom) -> None:
    assert sorted(phantom.masks) == sorted(c.name for c in CLASSES)
    assert all(m.any() for m in phantom.masks.values())


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("kidney_left", "kidney_right"),
        ("adrenal_gland_left", "adrenal_gland_right"),
        ("lung_left", "lung_right"),
        ("femur_left", "femur_right"),
    ],
)
def test_left_organs_have_smaller_world_x(phantom, left: str, right: str) -> None:
    x_left, x_right = world_centroid(phantom, left)[0], world_centroid(phantom, right)[0]
    assert x_left < phantom.midline_x_mm < x_right


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("liver", "right"),
        ("gall_bladder", "right"),
        ("postcava", "right"),
        ("spleen", "left"),
        ("stomach", "left"),
        ("aorta", "left"),
    ],
)
def test_unpaired_organs_on_their_side(phantom, name: str, side: str) -> None:
    x = world_centroid(phantom, name)[0]
    assert (x > phantom.midline_x_mm) == (side == "right")


def test_cranio_caudal_order(phantom) -> None:
    z = {
        n: world_centroid(phantom, n)[2]
        for n in ("lung_right", "liver", "kidney_right", "bladder", "femur_left")
    }
    assert z["lung_right"] > z["liver"] > z["kidney_right"] > z["bladder"]
    assert z["femur_left"] < z["kidney_right"]
    # the aorta lies in front of the spine: behind the pancreas and in front of the kidneys' back
    assert world_centroid(phantom, "aorta")[1] < world_centroid(phantom, "pancreas")[1]


def test_children_inside_a_parent(phantom) -> None:
    for name in CHILDREN & set(phantom.masks):
        parents = np.zeros(phantom.ct.shape, dtype=bool)
        for p in class_by_name(name).parents:
            parents |= phantom.masks.get(p, False)
        assert not (phantom.masks[name] & ~parents).any(), name


def test_organs_do_not_overlap(phantom) -> None:
    count = sum(m.astype(np.int32) for n, m in phantom.masks.items() if n not in CHILDREN)
    assert count.max() == 1
    children = sum(m.astype(np.int32) for n, m in phantom.masks.items() if n in CHILDREN)
    assert children.max() == 1


@pytest.mark.parametrize("name", sorted(HU_RANGES))
def test_mean_hu_in_intended_range(phantom, name: str) -> None:
    own = phantom.masks[name].copy()
    for child in CHILDREN - {name}:
        if name in class_by_name(child).parents:
            own &= ~phantom.masks[child]
    lo, hi = HU_RANGES[name]
    assert lo <= phantom.ct.array[own].mean() <= hi


def test_air_outside_and_bone_bright(phantom) -> None:
    ct = phantom.ct.array
    assert ct[0, 0, :].mean() < -950  # corner of the field of view is air
    column = ct[:, :, 32]
    assert (column > 400).sum() > 10  # the spine is in every slice


def test_same_seed_same_phantom() -> None:
    a, b = make_phantom(5), make_phantom(5)
    assert np.array_equal(a.ct.array, b.ct.array)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not np.array_equal(a.ct.array, make_phantom(6).ct.array)


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize(
    ("missing", "gone"),
    [
        (("kidney_left",), {"kidney_left"}),
        (("kidney",), {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst"}),
        (("liver",), {"liver", "liver_tumor", "hepatic_vessel", "hepatic_vessel_tumor"}),
        (("spleen", "gall_bladder"), {"spleen", "gall_bladder"}),
    ],
)
def test_missing_organs_absent(seed: int, missing: tuple[str, ...], gone: set[str]) -> None:
    p = make_phantom(seed, missing=missing)
    assert not gone & set(p.masks)
    assert len(p.masks) == 32 - len(gone)


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_nephrectomy_moves_kidney_lesions_to_remaining_kidney(seed: int) -> None:
    p = make_phantom(seed, missing=["kidney_right"])
    for lesion in ("kidney_tumor", "kidney_cyst"):
        assert not (p.masks[lesion] & ~p.masks["kidney_left"]).any()


@pytest.mark.parametrize(
    ("tumors", "present"),
    [
        (False, set()),
        (["liver_tumor"], {"liver_tumor"}),
        (["kidney_cyst", "lung_tumor"], {"kidney_cyst", "lung_tumor"}),
    ],
)
def test_tumor_selection(tumors, present: set[str]) -> None:
    p = make_phantom(2, tumors=tumors)
    assert {n for n in p.masks if class_by_name(n).is_tumor} == present


@pytest.mark.parametrize("seed", [0, 1, 5, 9])
def test_horseshoe_is_one_component_across_the_midline(seed: int) -> None:
    p = make_phantom(seed, variant="horseshoe")
    both = p.masks["kidney_left"] | p.masks["kidney_right"]
    _, n = ndimage.label(both, structure=np.ones((3, 3, 3)))
    assert n == 1
    x = p.ct.world(np.argwhere(both))[:, 0]
    step = p.ct.spacing[0]
    assert (np.abs(x - p.midline_x_mm) <= step).any()  # the isthmus crosses the midline
    xl = p.ct.world(np.argwhere(p.masks["kidney_left"]))[:, 0]
    xr = p.ct.world(np.argwhere(p.masks["kidney_right"]))[:, 0]
    assert xl.max() < p.midline_x_mm <= xr.min()


@pytest.mark.parametrize("seed", [0, 1, 5, 9, 12])
def test_fragmented_kidney_has_disconnected_fragments(seed: int) -> None:
    p = make_phantom(seed, variant="fragmented_kidney")
    counts = sorted(
        ndimage.label(p.masks[k], structure=np.ones((3, 3, 3)))[1] for k in ("kidney_left", "kidney_right")
    )
    assert counts[0] == 1 and 2 <= counts[1] <= 3


def test_anisotropic_grid_scales_anatomy() -> None:
    p = make_phantom(1, shape=(128, 112, 40), spacing=(2.0, 2.2, 5.0))
    assert p.ct.spacing == (2.0, 2.2, 5.0)
    assert world_centroid(p, "kidney_left")[0] < world_centroid(p, "kidney_right")[0]
    assert len(p.masks) == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "twisted"}, "unknown variant"),
        ({"missing": ["kidneyz"]}, "unknown universal class"),
        ({"tumors": ["liver"]}, "tumour"),
        ({"variant": "horseshoe", "missing": ["kidney_left"]}, "both kidneys"),
    ],
)
def test_bad_arguments(kwargs, message: str) -> None:
    with pytest.raises((ValueError, KeyError), match=message):
        make_phantom(0, **kwargs)
