"""Synthetic abdominal CT phantoms with ground-truth masks for all 32 universal classes.

A phantom is built in the canonical **RAS+** array order: array axis 0 grows towards the patient's
Right, axis 1 towards Anterior, axis 2 towards Superior, and the affine is ``diag(spacing)`` plus an
origin. So the patient's LEFT kidney has the SMALLER world x (and the smaller index i).

Anatomy is laid out in body-normalised coordinates ``(u, v, w)``: ``u = (x - cx) / A`` (+1 = right body
wall), ``v = (y - cy) / B`` (+1 = anterior wall), ``w = (z - z0) / H`` (0 = inferior end of the field of
view, 1 = superior end), where ``cx`` is the body midline, ``A``/``B`` the body's half-width/half-depth
and ``H`` the field of view's length. Organs are (lumpy) ellipsoids and capsule chains painted into an
owner map in priority order, first come first served, so organs never overlap; children (tumours, the
kidney cyst, hepatic vessels) are placed afterwards inside their parent and count for it too (a liver
tumour voxel is also liver). Whole-volume work is a handful of vectorised passes; every primitive is
evaluated only inside its bounding box, so the default 96 x 96 x 64 phantom takes well under a second.

Example:
    >>> p = make_phantom(0)
    >>> p.ct.axcodes, p.ct.array.dtype, sorted(p.masks)[:3]
    (('R', 'A', 'S'), dtype('int16'), ['adrenal_gland_left', 'adrenal_gland_right', 'aorta'])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from harmonize.geometry import bbox_slices
from harmonize.taxonomy import CLASSES, PAIRS, class_by_name
from harmonize.volume import Volume

VARIANTS = ("horseshoe", "fragmented_kidney")

#: Children placed inside a parent after the organs: class -> candidate parents.
CHILD_CLASSES: tuple[str, ...] = (
    "hepatic_vessel",
    "liver_tumor",
    "hepatic_vessel_tumor",
    "kidney_tumor",
    "kidney_cyst",
    "pancreas_tumor",
    "lung_tumor",
    "colon_tumor",
)
TUMOR_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASSES if c.is_tumor)

#: Mean HU per tissue (portal-venous phase). Tumours differ from their organ so they are visible.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "spine_cortex": 950.0,
    "spine_marrow": 450.0,
    "spleen": 110.0,
    "kidney_right": 150.0,
    "kidney_left": 150.0,
    "gall_bladder": 10.0,
    "esophagus": 40.0,
    "liver": 60.0,
    "stomach": 30.0,
    "aorta": 200.0,
    "postcava": 170.0,
    "portal_vein_and_splenic_vein": 180.0,
    "pancreas": 90.0,
    "adrenal_gland_right": 35.0,
    "adrenal_gland_left": 35.0,
    "duodenum": 35.0,
    "hepatic_vessel": 170.0,
    "lung_right": -850.0,
    "lung_left": -850.0,
    "colon": 25.0,
    "intestine": 40.0,
    "rectum": 25.0,
    "bladder": 8.0,
    "prostate": 35.0,
    "femur_left": 700.0,
    "femur_right": 700.0,
    "celiac_trunk": 200.0,
    "kidney_tumor": 80.0,
    "liver_tumor": 25.0,
    "pancreas_tumor": 40.0,
    "hepatic_vessel_tumor": 30.0,
    "lung_tumor": 35.0,
    "colon_tumor": 55.0,
    "kidney_cyst": 8.0,
}
NOISE_SD_HU = 12.0

# Owner-map codes for tissue that is not a universal class (universal classes use their index 1..32).
_SPINE = 40
_MUSCLE = 41


@dataclass
class Phantom:
    """A synthetic CT with its ground truth.

    Args:
        ct: int16 HU volume, array in RAS+ order (axcodes ('R', 'A', 'S')), affine diag(spacing) + origin.
        masks: universal class name -> bool array of ``ct.shape``, one entry per class present (absent
            classes have no entry). Children lie inside their parent mask (tumour in organ).
        midline_x_mm: world x (RAS, mm) of the body's midline; left organs lie at smaller x.
        seed: the seed that made it.
        variant: ``None``, ``"horseshoe"`` or ``"fragmented_kidney"``.
        missing: classes removed on request.
    """

    ct: Volume
    masks: dict[str, np.ndarray]
    midline_x_mm: float
    seed: int
    variant: str | None = None
    missing: tuple[str, ...] = field(default_factory=tuple)


class _Canvas:
    """The voxel grid, body frame and owner map that primitives are painted into."""

    def __init__(
        self, shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
    ) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        fov = self.spacing * np.asarray(shape)
        # World origin near the array centre; the body midline is jittered off it so that code which
        # assumes "midline = array centre" is caught by tests.
        self.origin = -(np.asarray(shape) - 1) / 2.0 * self.spacing
        self.cx = float(rng.uniform(-0.04, 0.04) * fov[0])
        self.cy = float(rng.uniform(-0.02, 0.04) * fov[1])
        self.a = float(rng.uniform(0.40, 0.44) * fov[0])
        self.b = float(rng.uniform(0.30, 0.34) * fov[1])
        self.z0 = float(self.origin[2])
        self.h = float(fov[2] - self.spacing[2])
        self.axes = [self.origin[d] + np.arange(shape[d]) * self.spacing[d] for d in range(3)]
        self.owner = np.zeros(shape, dtype=np.uint8)
        u = (self.axes[0] - self.cx) / self.a
        v = (self.axes[1] - self.cy) / self.b
        self.body_r2 = u[:, None] ** 2 + v[None, :] ** 2  # (nx, ny) normalised radius squared
        self.inner = self.body_r2 <= 0.86**2  # organs stay inside the abdominal wall

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def world(self, uvw: Sequence[float]) -> np.ndarray:
        u, v, w = uvw
        return np.array([self.cx + u * self.a, self.cy + v * self.b, self.z0 + w * self.h])

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering the world box [lo, hi]; None when it misses the grid."""
        lo = np.floor((lo_mm - self.origin) / self.spacing).astype(int)
        hi = np.ceil((hi_mm - self.origin) / self.spacing).astype(int) + 1
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        if np.any(hi <= lo):
            return None
        return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world x, y, z of the voxels in ``sl``."""
        x, y, z = (self.axes[d][sl[d]] for d in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


@dataclass
class _Ellipsoid:
    """Lumpy ellipsoid: centre (u, v, w), radii (ru, rv, rw) in normalised units."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    lumps: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # amplitude, freq, phase1, phase2

    def region(self, cv: _Canvas) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        c = cv.world(self.center)
        r = np.maximum(np.array(self.radii) * [cv.a, cv.b, cv.h], 0.75 * cv.spacing)
        amp = self.lumps[0]
        sl = cv.box(c - r * (1 + amp), c + r * (1 + amp))
        if sl is None:
            return None
        x, y, z = cv.coords(sl)
        dx, dy, dz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
        d2 = dx**2 + dy**2 + dz**2
        if amp:
            _, freq, p1, p2 = self.lumps
            bound = 1.0 + amp * np.sin(freq * dx + p1) * np.cos(freq * dz + p2) * np.cos(freq * dy)
            return sl, d2 <= bound**2
        return sl, d2 <= 1.0


@dataclass
class _Capsules:
    """A chain of round tubes through normalised points; radius as a fraction of the body half-width."""

    points: tuple[tuple[float, float, float], ...]
    radius: float

    def region(self, cv: _Canvas) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        pts = np.array([cv.world(p) for p in self.points])
        r = max(self.radius * cv.a, 0.75 * float(cv.spacing.max()))
        sl = cv.box(pts.min(0) - r, pts.max(0) + r)
        if sl is None:
            return None
        x, y, z = cv.coords(sl)
        shape = (x.shape[0], y.shape[1], z.shape[2])
        inside = np.zeros(shape, dtype=bool)
        for a, b in itertools.pairwise(pts):
            ab = b - a
            length2 = float(ab @ ab) or 1e-9
            px, py, pz = x - a[0], y - a[1], z - a[2]
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / length2, 0.0, 1.0)
            d2 = (px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2
            inside |= d2 <= r * r
        return sl, inside


_Primitive = _Ellipsoid | _Capsules


def _paint(cv: _Canvas, code: int, prims: Sequence[_Primitive], *, restrict_inner: bool = True) -> None:
    """Give unowned voxels inside any primitive to ``code`` (first come, first served)."""
    for prim in prims:
        got = prim.region(cv)
        if got is None:
            continue
        sl, inside = got
        if restrict_inner:
            inside = inside & cv.inner[sl[0], sl[1]][:, :, None]
        view = cv.owner[sl]
        view[inside & (view == 0)] = code


def _layout(rng: np.random.Generator, variant: str | None) -> list[tuple[str, list[_Primitive]]]:
    """Organs in painting priority order (earlier wins), positions jittered by ``rng``."""

    def j(x: float, s: float = 0.025) -> float:
        return float(x + rng.uniform(-s, s))

    def sc(x: float) -> float:
        return float(x * rng.uniform(0.88, 1.12))

    def lumpy() -> tuple[float, float, float, float]:
        return (
            float(rng.uniform(0.04, 0.10)),
            float(rng.uniform(2.0, 4.0)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
        )

    def ell(c: tuple[float, float, float], r: tuple[float, float, float], jit: float = 0.025) -> _Ellipsoid:
        return _Ellipsoid((j(c[0], jit), j(c[1], jit), j(c[2], jit)), (sc(r[0]), sc(r[1]), sc(r[2])), lumpy())

    horseshoe = variant == "horseshoe"
    # Horseshoe kidneys sit lower and closer to the midline than normal ones.
    kx, kz_r, kz_l = (0.30, 0.45, 0.47) if horseshoe else (0.38, 0.52, 0.55)
    kid_r = ell((kx, -0.45, kz_r), (0.12, 0.15, 0.12), 0.02)
    kid_l = ell((-kx, -0.45, kz_l), (0.12, 0.15, 0.12), 0.02)
    kidneys_r: list[_Primitive] = [kid_r]
    kidneys_l: list[_Primitive] = [kid_l]
    if horseshoe:
        # Isthmus joining the lower poles in front of the great vessels; each half is drawn from
        # inside its kidney to the midline so the fused organ is one connected component.
        for kid, bucket, sign in ((kid_r, kidneys_r, 1.0), (kid_l, kidneys_l, -1.0)):
            cu, _, cw = kid.center
            ru, _, rw = kid.radii
            pole = (cu - sign * 0.45 * ru, -0.42, cw - 0.45 * rw)
            bucket.append(
                _Capsules((pole, (sign * 0.12, -0.24, cw - 0.6 * rw), (0.0, -0.22, cw - 0.6 * rw)), 0.055)
            )

    ao_u, ao_v = j(-0.08, 0.015), j(-0.45, 0.015)
    celiac_w = j(0.66, 0.02)
    conf = (j(0.08, 0.02), -0.2, j(0.64, 0.01))  # portal confluence
    return [
        ("aorta", [_Capsules(((ao_u, ao_v, 0.33), (ao_u, ao_v, 1.02)), sc(0.06))]),
        ("postcava", [_Capsules(((j(0.13, 0.015), j(-0.40, 0.015), 0.33), (0.13, -0.38, 0.86)), sc(0.065))]),
        ("celiac_trunk", [_Capsules(((ao_u, ao_v, celiac_w), (ao_u + 0.02, -0.22, celiac_w + 0.02)), 0.035)]),
        (
            "portal_vein_and_splenic_vein",
            [
                _Capsules(
                    ((j(-0.45), -0.26, j(0.67, 0.01)), conf, (j(0.30), j(-0.05), j(0.72, 0.01))), sc(0.045)
                )
            ],
        ),
        (
            "esophagus",
            [_Capsules(((j(-0.04, 0.01), -0.28, 1.02), (-0.05, -0.28, 0.80), (-0.2, 0.15, 0.76)), 0.045)],
        ),
        ("adrenal_gland_right", [ell((0.27, -0.36, 0.68), (0.05, 0.08, 0.05), 0.015)]),
        ("adrenal_gland_left", [ell((-0.27, -0.36, 0.70), (0.05, 0.08, 0.05), 0.015)]),
        ("femur_right", [ell((0.55, 0.0, 0.1), (0.12, 0.16, 0.075), 0.02)]),
        ("femur_left", [ell((-0.55, 0.0, 0.1), (0.12, 0.16, 0.075), 0.02)]),
        ("kidney_right", kidneys_r),
        ("kidney_left", kidneys_l),
        ("gall_bladder", [ell((0.30, 0.40, 0.62), (0.08, 0.11, 0.06), 0.02)]),
        ("pancreas", [ell((-0.10, -0.04, 0.59), (0.33, 0.08, 0.05), 0.015)]),
        (
            "duodenum",
            [
                _Capsules(
                    (
                        (-0.05, 0.25, 0.69),
                        (0.22, 0.08, 0.66),
                        (0.31, -0.04, 0.58),
                        (0.24, -0.12, 0.50),
                        (0.0, -0.14, 0.48),
                        (-0.15, -0.12, 0.50),
                    ),
                    sc(0.05),
                )
            ],
        ),
        ("spleen", [ell((-0.55, -0.33, 0.76), (0.15, 0.22, 0.09))]),
        ("stomach", [ell((-0.30, 0.33, 0.72), (0.22, 0.25, 0.09))]),
        ("liver", [ell((0.40, 0.08, 0.75), (0.40, 0.50, 0.13), 0.02)]),
        ("lung_right", [ell((0.45, -0.05, 0.96), (0.36, 0.55, 0.16), 0.02)]),
        ("lung_left", [ell((-0.45, -0.05, 0.96), (0.36, 0.55, 0.16), 0.02)]),
        ("prostate", [ell((0.0, 0.10, 0.05), (0.07, 0.08, 0.04), 0.01)]),
        ("bladder", [ell((0.0, 0.30, 0.15), (0.18, 0.20, 0.08), 0.02)]),
        ("rectum", [_Capsules(((0.0, -0.36, 0.03), (0.0, -0.33, 0.22)), sc(0.08))]),
        (
            "colon",
            [
                _Capsules(
                    (
                        (-0.05, -0.30, 0.22),
                        (-0.32, 0.10, 0.18),
                        (-0.60, 0.0, 0.27),
                        (-0.60, 0.0, 0.50),
                        (-0.50, 0.25, 0.57),
                        (0.0, 0.45, 0.52),
                        (0.50, 0.25, 0.55),
                        (0.55, 0.0, 0.48),
                        (0.55, 0.0, 0.25),
                    ),
                    sc(0.08),
                )
            ],
        ),
        ("intestine", [ell((0.0, 0.15, 0.36), (0.36, 0.30, 0.10), 0.02)]),
    ]


def _spine(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Vertebral column: (cortex, marrow) bool masks; a cylinder behind the aorta from pelvis to top."""
    outer = _Capsules(((0.0, -0.64, 0.10), (0.0, -0.64, 1.02)), 0.11).region(cv)
    inner = _Capsules(((0.0, -0.64, 0.10), (0.0, -0.64, 1.02)), 0.075).region(cv)
    cortex = np.zeros(cv.shape, dtype=bool)
    marrow = np.zeros(cv.shape, dtype=bool)
    if outer is not None:
        cortex[outer[0]] = outer[1]
    if inner is not None:
        marrow[inner[0]] |= inner[1]
    return cortex & ~marrow, marrow


def _place_blob(
    cv: _Canvas, room: np.ndarray, rng: np.random.Generator, max_radius_mm: float, min_fraction: float = 0.45
) -> np.ndarray | None:
    """A round blob inside ``room`` (bool, full grid): centred on a deep voxel, clipped to ``room``."""
    sl = bbox_slices(room)
    if sl is None:
        return None
    crop = room[sl]
    depth = ndimage.distance_transform_edt(crop, sampling=cv.spacing)
    deepest = float(depth.max())
    if deepest < 0.5 * float(cv.spacing.min()):
        return None
    candidates = np.argwhere(depth >= min_fraction * deepest)
    ci = candidates[int(rng.integers(len(candidates)))]
    radius = min(float(rng.uniform(0.55, 0.9)) * float(depth[tuple(ci)]), max_radius_mm)
    radius = max(radius, 0.75 * float(cv.spacing.max()))
    idx = np.indices(crop.shape, dtype=np.float32)
    d2 = sum(((idx[d] - ci[d]) * float(cv.spacing[d])) ** 2 for d in range(3))
    amp, freq = rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.35)
    wobble = 1.0 + amp * np.sin(freq * idx[0] * cv.spacing[0] + rng.uniform(0, 6)) * np.cos(
        freq * idx[2] * cv.spacing[2]
    )
    blob = np.zeros(cv.shape, dtype=bool)
    blob[sl] = (d2 <= (radius * wobble) ** 2) & crop
    return blob


def _hepatic_vessels(cv: _Canvas, liver: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A small tree of thin tubes from the liver hilum to random deep liver points, clipped to the liver."""
    sl = bbox_slices(liver)
    if sl is None:
        return None
    depth = ndimage.distance_transform_edt(liver[sl], sampling=cv.spacing)
    deep = np.argwhere(depth >= 0.4 * float(depth.max()))
    if len(deep) < 2:
        return None
    # Hilum: the deep voxel closest to the midline (smallest x); branches fan out from it.
    hilum_i = deep[np.argmin(deep[:, 0])]
    ends = deep[rng.choice(len(deep), size=min(len(deep), int(rng.integers(3, 6))), replace=False)]
    offset = np.array([s.start for s in sl])
    vessels = np.zeros(cv.shape, dtype=bool)
    for end in ends:
        a = cv.origin + (hilum_i + offset) * cv.spacing
        b = cv.origin + (end + offset) * cv.spacing
        uvw = [((p[0] - cv.cx) / cv.a, (p[1] - cv.cy) / cv.b, (p[2] - cv.z0) / cv.h) for p in (a, b)]
        got = _Capsules(tuple(uvw), float(rng.uniform(0.015, 0.025))).region(cv)  # type: ignore[arg-type]
        if got is not None:
            vessels[got[0]] |= got[1]
    vessels &= liver
    return vessels if vessels.any() else None


def _fragment(cv: _Canvas, code: int, rng: np.random.Generator) -> None:
    """Cut the organ ``code`` across z into 2-3 pieces separated by empty slices (26-disconnected)."""
    ks = np.flatnonzero((cv.owner == code).any(axis=(0, 1)))
    if ks.size == 0:
        return
    gap = max(1, int(np.ceil(4.0 / cv.spacing[2])))
    pieces = int(rng.integers(2, 4))
    while pieces > 1 and ks.size < pieces * 2 + (pieces - 1) * gap:
        pieces -= 1
    lo, n = int(ks[0]), int(ks.size)
    for p in range(1, pieces):
        start = lo + round(p * n / pieces - gap / 2)
        view = cv.owner[:, :, start : start + gap]
        view[view == code] = 0


def _resolve_missing(missing: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for name in missing:
        out.update(PAIRS[name] if name in PAIRS else (class_by_name(name).name,))
    return out


def _resolve_tumors(tumors: bool | Sequence[str]) -> set[str]:
    if tumors is True:
        return set(TUMOR_CLASSES)
    if tumors is False:
        return set()
    wanted = {class_by_name(t).name for t in tumors}  # type: ignore[union-attr]
    bad = wanted - set(TUMOR_CLASSES)
    if bad:
        raise ValueError(f"tumors= takes tumour/lesion classes {TUMOR_CLASSES}, got {sorted(bad)}")
    return wanted


def make_phantom(
    seed: int,
    *,
    shape: tuple[int, int, int] = (96, 96, 64),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    missing: Sequence[str] = (),
    tumors: bool | Sequence[str] = True,
    variant: str | None = None,
) -> Phantom:
    """Build a seeded synthetic abdominal CT with ground-truth masks.

    Args:
        seed: random seed; the same arguments give the same phantom.
        shape: (nx, ny, nz) voxels in RAS+ order (x right, y anterior, z superior).
        spacing: voxel size in mm along x, y, z. The anatomy scales with the field of view, so any shape
            and spacing (e.g. 512 x 512 x 200 at 0.8 x 0.8 x 2 mm) gives a whole abdomen.
        missing: classes (or pair names, ``"kidney"``) to leave out, e.g. ``("kidney_left",)`` for a
            nephrectomy. Children of a missing organ move to its twin or are left out.
        tumors: ``True`` for all six tumour types and the kidney cyst, ``False`` for none, or a list of
            tumour/lesion class names.
        variant: ``None``; ``"horseshoe"`` (both kidneys fused by an isthmus across the midline: one
            26-connected component, split into left/right truth at the midline voxel by voxel); or
            ``"fragmented_kidney"`` (one kidney cut into 2-3 26-disconnected fragments).

    Returns:
        A :class:`Phantom`: int16 HU CT in RAS+ order and bool masks of the same shape for every class
        present.

    Raises:
        ValueError: unknown variant, unknown class names, or a kidney variant without both kidneys.
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape}")
    gone = _resolve_missing(missing)
    want_tumors = _resolve_tumors(tumors)
    if variant == "horseshoe" and gone & {"kidney_left", "kidney_right"}:
        raise ValueError("a horseshoe kidney needs both kidneys; do not combine it with a missing kidney")
    rng = np.random.default_rng(seed)
    cv = _Canvas(tuple(int(s) for s in shape), tuple(float(s) for s in spacing), rng)  # type: ignore[arg-type]

    cortex, marrow = _spine(cv)
    cv.owner[cortex | marrow] = _SPINE
    for name, prims in _layout(rng, variant):
        # Draw every organ even when missing (and erase it afterwards) so the random stream, hence
        # the rest of the anatomy, is the same with and without the organ.
        _paint(cv, class_by_name(name).index, prims)
    for name in gone:
        cv.owner[cv.owner == class_by_name(name).index] = 0
    if variant == "fragmented_kidney":
        side = "kidney_left" if rng.random() < 0.5 and "kidney_left" not in gone else "kidney_right"
        if side in gone:
            side = "kidney_left"
        if side in gone:
            raise ValueError("fragmented_kidney needs at least one kidney")
        _fragment(cv, class_by_name(side).index, rng)

    present = set(np.unique(cv.owner).tolist())
    masks: dict[str, np.ndarray] = {
        c.name: cv.owner == c.index for c in CLASSES if c.index in present and c.name not in CHILD_CLASSES
    }
    if variant == "horseshoe":
        # The isthmus halves were painted from each kidney to the midline; reassign by side so the
        # left/right truth is exactly "which side of the midline".
        both = masks["kidney_left"] | masks["kidney_right"]
        right_half = (cv.axes[0] >= cv.cx)[:, None, None]
        masks["kidney_right"] = both & right_half
        masks["kidney_left"] = both & ~right_half

    children = _place_children(cv, masks, gone, want_tumors, rng)
    masks.update(children)
    ct = _render_ct(cv, masks, cortex, marrow, rng)
    return Phantom(
        Volume(ct, cv.affine, {"format": "phantom", "seed": seed}),
        masks,
        midline_x_mm=cv.cx,
        seed=seed,
        variant=variant,
        missing=tuple(sorted(gone)),
    )


def _place_children(
    cv: _Canvas, masks: dict[str, np.ndarray], gone: set[str], want: set[str], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Hepatic vessels and tumours inside their parents; children never overlap each other."""
    out: dict[str, np.ndarray] = {}
    taken = np.zeros(cv.shape, dtype=bool)
    size_mm = float(min(cv.a, cv.b))

    def parent_of(name: str) -> np.ndarray | None:
        options = [p for p in class_by_name(name).parents if p in masks]
        if not options:
            return None
        return masks[options[int(rng.integers(len(options)))]]

    if "hepatic_vessel" not in gone and "liver" in masks:
        vessels = _hepatic_vessels(cv, masks["liver"], rng)
        if vessels is not None:
            out["hepatic_vessel"] = vessels
    for name in (
        "liver_tumor",
        "hepatic_vessel_tumor",
        "kidney_tumor",
        "kidney_cyst",
        "pancreas_tumor",
        "lung_tumor",
        "colon_tumor",
    ):
        if name not in want or name in gone:
            continue
        parent = parent_of(name)
        if parent is None:
            continue
        room = parent & ~taken
        blob = _place_blob(cv, room, rng, max_radius_mm=0.18 * size_mm)
        if blob is None or not blob.any():
            continue
        out[name] = blob
        taken |= blob
    if "hepatic_vessel" in out:
        # Tumours displace vessels: a voxel is vessel or tumour, never both.
        out["hepatic_vessel"] &= ~taken
        if not out["hepatic_vessel"].any():
            del out["hepatic_vessel"]
    return out


def _render_ct(
    cv: _Canvas,
    masks: dict[str, np.ndarray],
    cortex: np.ndarray,
    marrow: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """HU image: air, fat body, muscle wall, bone, organs, children on top, Gaussian noise; int16."""
    hu = np.full(cv.shape, TISSUE_HU["air"], dtype=np.float32)
    body = (cv.body_r2 <= 1.0)[:, :, None]
    wall = ((cv.body_r2 > 0.86**2) & (cv.body_r2 <= 0.94**2))[:, :, None]
    hu[np.broadcast_to(body, cv.shape)] = TISSUE_HU["fat"]
    hu[np.broadcast_to(wall, cv.shape) & (cv.owner == 0)] = TISSUE_HU["muscle"]
    hu[cortex] = TISSUE_HU["spine_cortex"]
    hu[marrow] = TISSUE_HU["spine_marrow"]
    lut = np.full(256, np.nan, dtype=np.float32)
    for c in CLASSES:
        lut[c.index] = TISSUE_HU[c.name] + rng.uniform(-5, 5)
    organ = (cv.owner > 0) & (cv.owner < _SPINE)
    hu[organ] = lut[cv.owner[organ]]
    for name in CHILD_CLASSES:
        if name in masks:
            hu[masks[name]] = TISSUE_HU[name] + rng.uniform(-5, 5)
    for femur in ("femur_left", "femur_right"):
        if femur in masks:
            # Cortical rim brighter than the cancellous head.
            sl = bbox_slices(masks[femur])
            if sl is not None:
                head = masks[femur][sl]
                hu[sl][head & ~ndimage.binary_erosion(head)] = TISSUE_HU["spine_cortex"]
    hu += rng.standard_normal(cv.shape, dtype=np.float32) * np.float32(NOISE_SD_HU)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
