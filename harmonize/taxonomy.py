"""The universal taxonomy: the 32 classes of the original Universal Model, in its order.

Index ``i`` (1-based) is the channel ``i - 1`` of the model's output and row ``i - 1`` of its text
embedding matrix. Names follow the original's ``ORGAN_NAME`` list, with two spellings corrected in the
prompt names ('Arota' -> 'Aorta', 'Celiac Truck' -> 'Celiac Trunk'); the imported original embedding
vocabulary keeps the original spellings (see ``ORIGINAL_PROMPT_NAMES``).

A workspace may add classes as data (name, prompt name, kind, parents; :func:`define_class`), with label
values 33, 34, ...: the catalog stores them and installs them on open (:func:`set_added_classes`), and
``class_names`` / ``class_by_name`` then know them; ``CLASSES`` stays the 32 of the original model.

Example:
    >>> from harmonize.taxonomy import class_by_name
    >>> class_by_name("kidney_left").index, class_by_name("kidney_left").twin
    (3, 'kidney_right')
"""

from __future__ import annotations

import colorsys
import re
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

#: The kinds a class may be (an added class names one).
KINDS: tuple[str, ...] = ("organ", "vessel", "tumor", "lesion")
_NAME_RULE = re.compile(r"[a-z][a-z0-9_]{1,62}")
#: Classes added to the taxonomy as data (the paper's incremental learning): the workspace's catalog
#: installs its own on open (``storage.catalog.Catalog``, table ``added_class``), in index order.
_ADDED: dict[str, UniversalClass] = {}


def define_class(
    name: str, prompt_name: str, kind: str, parents: Sequence[str] = (), *, index: int
) -> UniversalClass:
    """A new class as data: validated, not yet installed (:func:`set_added_classes` does that).

    Args:
        name: snake_case machine name, not a universal class or pair name (e.g. ``renal_vein``).
        prompt_name: the name its text prompt uses (e.g. ``Renal Vein``); also its display name.
        kind: one of :data:`KINDS`.
        parents: classes it lies inside (universal or added ones).
        index: its label value, above the 32 universal indices (33, 34, ...).

    Returns:
        The class.

    Raises:
        ValueError: a bad name, kind, parent or index (one line naming it).
    """
    if not _NAME_RULE.fullmatch(name):
        raise ValueError(f"class name {name!r}: use 2-63 lower-case letters, digits and '_', a letter first")
    if name in _BY_NAME or name in PAIRS:
        raise ValueError(f"class name {name!r} is a universal class already")
    if kind not in KINDS:
        raise ValueError(f"class {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    unknown = [p for p in parents if p not in _BY_NAME and p not in _ADDED]
    if unknown:
        raise ValueError(f"class {name!r}: unknown parent classes {unknown}")
    if index <= len(CLASSES):
        raise ValueError(f"class {name!r}: index {index} is a universal index (1-{len(CLASSES)})")
    if not prompt_name.strip():
        raise ValueError(f"class {name!r}: empty prompt name")
    return UniversalClass(index, name, prompt_name, prompt_name, kind, parents=tuple(parents))


def set_added_classes(classes: Sequence[UniversalClass]) -> None:
    """Install the added classes of the workspace in use (replacing any installed before).

    Args:
        classes: :func:`define_class` results, in index order.
    """
    _ADDED.clear()
    _ADDED.update({c.name: c for c in sorted(classes, key=lambda c: c.index)})


def added_classes() -> tuple[UniversalClass, ...]:
    """The installed added classes, in index order (empty unless a workspace added some)."""
    return tuple(_ADDED.values())


def class_names() -> list[str]:
    """The 32 machine names in model order, then the installed added classes (:func:`added_classes`)."""
    return [c.name for c in CLASSES] + list(_ADDED)


def universal_class_names() -> list[str]:
    """The 32 machine names of the original Universal Model, in its order (never an added class)."""
    return [c.name for c in CLASSES]


def class_by_name(name: str) -> UniversalClass:
    """Look a class up by machine name (universal or added); raises ``KeyError`` naming the valid names."""
    found = _BY_NAME.get(name) or _ADDED.get(name)
    if found is None:
        known = ", ".join([*_BY_NAME, *_ADDED])
        raise KeyError(f"unknown universal class {name!r}; known: {known}") from None
    return found


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
