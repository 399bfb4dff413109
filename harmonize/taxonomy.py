"""The universal taxonomy: the 32 classes of the original Universal Model, in its order.

Index ``i`` (1-based) is the channel ``i - 1`` of the model's output and row ``i - 1`` of its text
embedding matrix. Names follow the original's ``ORGAN_NAME`` list, with two spellings corrected in the
prompt names ('Arota' -> 'Aorta', 'Celiac Truck' -> 'Celiac Trunk'); the imported original embedding
vocabulary keeps the original spellings (see ``ORIGINAL_PROMPT_NAMES``).

Example:
    >>> from harmonize.taxonomy import class_by_name
    >>> class_by_name("kidney_left").index, class_by_name("kidney_left").twin
    (3, 'kidney_right')
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Side = Literal["left", "right"]


@dataclass(frozen=True)
class UniversalClass:
    """One universal class.

    Args:
        index: 1-based position in the Universal Model's class order.
        name: canonical machine name (snake_case), used in files and the catalog.
        display_name: human name for tables and the app.
        prompt_name: the class name put into the CLIP prompt template.
        kind: ``organ``, ``tumor`` or ``lesion`` (kidney cyst), or ``vessel``.
        parents: classes this one lies inside (a tumour inside its organ); empty when none. Two
            parents mean "inside either" (a kidney tumour lies in the left or the right kidney).
        twin: the class of the other side for paired organs, else ``None``.
        side: ``left`` or ``right`` for paired organs, else ``None``.
        pair: name of the merged pair this class belongs to (``kidney``), else ``None``.
        single_component: whether anatomy says one connected component (used by post-processing).
    """

    index: int
    name: str
    display_name: str
    prompt_name: str
    kind: str
    parents: tuple[str, ...] = ()
    twin: str | None = None
    side: Side | None = None
    pair: str | None = None
    single_component: bool = False

    @property
    def channel(self) -> int:
        """0-based channel of this class in the model output."""
        return self.index - 1

    @property
    def is_tumor(self) -> bool:
        return self.kind in ("tumor", "lesion")


def _organ(index: int, name: str, display: str, *, single: bool = True, **kw: object) -> UniversalClass:
    return UniversalClass(index, name, display, display, "organ", single_component=single, **kw)  # type: ignore[arg-type]


_KIDNEYS = ("kidney_left", "kidney_right")
_LUNGS = ("lung_left", "lung_right")

CLASSES: tuple[UniversalClass, ...] = (
    _organ(1, "spleen", "Spleen"),
    _organ(2, "kidney_right", "Right Kidney", twin="kidney_left", side="right", pair="kidney"),
    _organ(3, "kidney_left", "Left Kidney", twin="kidney_right", side="left", pair="kidney"),
    _organ(4, "gall_bladder", "Gall Bladder"),
    _organ(5, "esophagus", "Esophagus"),
    _organ(6, "liver", "Liver"),
    _organ(7, "stomach", "Stomach"),
    UniversalClass(8, "aorta", "Aorta", "Aorta", "vessel", single_component=True),
    UniversalClass(9, "postcava", "Postcava", "Postcava", "vessel", single_component=True),
    UniversalClass(
        10,
        "portal_vein_and_splenic_vein",
        "Portal Vein and Splenic Vein",
        "Portal Vein and Splenic Vein",
        "vessel",
    ),
    _organ(11, "pancreas", "Pancreas"),
    _organ(
        12,
        "adrenal_gland_right",
        "Right Adrenal Gland",
        twin="adrenal_gland_left",
        side="right",
        pair="adrenal_gland",
    ),
    _organ(
        13,
        "adrenal_gland_left",
        "Left Adrenal Gland",
        twin="adrenal_gland_right",
        side="left",
        pair="adrenal_gland",
    ),
    _organ(14, "duodenum", "Duodenum"),
    UniversalClass(15, "hepatic_vessel", "Hepatic Vessel", "Hepatic Vessel", "vessel", parents=("liver",)),
    _organ(16, "lung_right", "Right Lung", twin="lung_left", side="right", pair="lung"),
    _organ(17, "lung_left", "Left Lung", twin="lung_right", side="left", pair="lung"),
    _organ(18, "colon", "Colon"),
    _organ(19, "intestine", "Intestine"),
    _organ(20, "rectum", "Rectum"),
    _organ(21, "bladder", "Bladder"),
    _organ(22, "prostate", "Prostate"),
    _organ(23, "femur_left", "Left Head of Femur", twin="femur_right", side="left", pair="femur"),
    _organ(24, "femur_right", "Right Head of Femur", twin="femur_left", side="right", pair="femur"),
    UniversalClass(25, "celiac_trunk", "Celiac Trunk", "Celiac Trunk", "vessel", single_component=True),
    UniversalClass(26, "kidney_tumor", "Kidney Tumor", "Kidney Tumor", "tumor", parents=_KIDNEYS),
    UniversalClass(27, "liver_tumor", "Liver Tumor", "Liver Tumor", "tumor", parents=("liver",)),
    UniversalClass(28, "pancreas_tumor", "Pancreas Tumor", "Pancreas Tumor", "tumor", parents=("pancreas",)),
    UniversalClass(
        29,
        "hepatic_vessel_tumor",
        "Hepatic Vessel Tumor",
        "Hepatic Vessel Tumor",
        "tumor",
        parents=("liver",),
    ),
    UniversalClass(30, "lung_tumor", "Lung Tumor", "Lung Tumor", "tumor", parents=_LUNGS),
    UniversalClass(31, "colon_tumor", "Colon Tumor", "Colon Tumor", "tumor", parents=("colon",)),
    UniversalClass(32, "kidney_cyst", "Kidney Cyst", "Kidney Cyst", "lesion", parents=_KIDNEYS),
)

#: The original release's prompt names, spelling mistakes included ('Arota', 'Celiac Truck'); the
#: released ``txt_encoding.pth`` was computed from these.
ORIGINAL_PROMPT_NAMES: tuple[str, ...] = tuple(
    {"aorta": "Arota", "celiac_trunk": "Celiac Truck"}.get(c.name, c.display_name) for c in CLASSES
)

#: Merged left/right pairs: pair name -> (left class, right class).
PAIRS: dict[str, tuple[str, str]] = {
    "kidney": ("kidney_left", "kidney_right"),
    "adrenal_gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "lung": ("lung_left", "lung_right"),
    "femur": ("femur_left", "femur_right"),
}

_BY_NAME = {c.name: c for c in CLASSES}


def class_names() -> list[str]:
    """The 32 machine names in model order."""
    return [c.name for c in CLASSES]


def class_by_name(name: str) -> UniversalClass:
    """Look a class up by machine name; raises ``KeyError`` naming the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown universal class {name!r}; known: {', '.join(_BY_NAME)}") from None


def expand_target(target: str) -> tuple[str, ...]:
    """A protocol target is a class name or a pair name; return the classes it covers."""
    if target in PAIRS:
        return PAIRS[target]
    return (class_by_name(target).name,)


def paint_order(names: Sequence[str]) -> list[str]:
    """Classes in the order they are painted into ONE label map, later wins where masks overlap: organs
    and vessels first, then structures inside an organ (hepatic vessel), then tumours and cysts; ties in
    universal index order. So a liver tumour stays visible inside the liver.

    Example:
        >>> paint_order(["liver_tumor", "hepatic_vessel", "liver"])
        ['liver', 'hepatic_vessel', 'liver_tumor']
    """

    def key(n: str) -> tuple[int, int]:
        c = class_by_name(n)
        depth = 2 if c.is_tumor else (1 if c.parents else 0)
        return depth, c.index

    return sorted(names, key=key)


def class_color(name: str) -> tuple[int, int, int]:
    """A fixed, distinct RGB colour (0-255) per universal class (golden-ratio hues; tumours darker), the
    same in the app, the Slicer and ITK-SNAP colour tables and every export."""
    c = class_by_name(name)
    hue = (c.index * 0.618033988749895) % 1.0
    value = 0.75 if c.is_tumor else 0.95
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return int(r * 255), int(g * 255), int(b * 255)
