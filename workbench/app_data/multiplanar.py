"""The multiplanar viewer's data: what the browser component receives for one review item, the private
folder it is served from, the background preload of the next item, and the edits the browser sends back.

The browser (``workbench/app_data/viewer_component/``, plain JS + canvas) draws axial, coronal and sagittal
at full resolution from whole volumes it holds in memory, so a slice key never waits for the server. Per
item it fetches, over HTTP from the Streamlit server (the folder is registered as a second, data-only
component, so Streamlit serves it at ``/component/<name>/<file>`` on 127.0.0.1 like the app):

* ``<ct>.ct``: the CT as little-endian int16 HU in display (RAS) order, x fastest (``x + nx * (y + ny *
  z)``), clipped to [-1024, 3071]; raw, because loopback bandwidth is ample and a 2-core server has
  better use for its CPU than deflating 157 MB per item (``docs/decisions.md``);
* ``<masks>.lab``: gzip of one uint8 volume per item, same order: 0 = nothing, k = the k-th class of
  ``classes`` (painted in :func:`harmonize.taxonomy.paint_order`); the item's own class is left out;
* ``<masks>.item``: gzip of the item's class as uint8 0/1 (drawn apart, so an overlap never hides it);
* ``<masks>.heat``: gzip of the run's entropy map as uint8 (255 = 1 bit), or no file without a map;
* ``<masks>.mip``: gzip of three depth-shaded projections of the item's mask (front, side, top), each
  uint8 in the orientation of the coronal, sagittal and axial views: the 3D view;
* ``<masks>.json``: the item's description (:func:`component_item` with names relative to the folder),
  written last, so the browser that holds a prefetched next item can draw it the moment a decision key
  is pressed, before the page's rerun answers (:func:`prefetch_item`).

File names are a salted digest of what they hold (scan, image file, label set, class, run), so a
revised label set is a new name and the browser's cache is never stale. The folder is private
(``mkdtemp``, mode 0700), bounded (least recently used items are deleted beyond ``max_bytes``) and removed
when the process exits.

Edits arrive as small JSON actions (:func:`apply_edit`): a brush/eraser stroke is its display voxels, a
radius in mm and a slice depth; a component or hole is one clicked display voxel. They are turned into
file voxels here and applied with the pure edits of :mod:`workbench.review.corrections`, so the page
saves the result through :func:`workbench.review.correct` like every other correction.

Example:
    >>> store = PayloadStore()  # doctest: +SKIP
    >>> names = store.prepare(ItemSource(...))  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import json
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_color, paint_order
from workbench.app_data.overlays import most_uncertain_slice
from workbench.app_data.viewer import VIEW_AXIS, DisplayVolume
from workbench.review.corrections import brush, fill_hole, keep_component, remove_component

#: The component's static files (index.html, viewer.js, viewer.css), served by Streamlit from the package.
COMPONENT_DIR = Path(__file__).resolve().parent / "viewer_component"

#: HU range of the CT sent to the browser (int16; air and metal beyond it look the same in any window).
HU_RANGE = (-1024, 3071)
#: What each key of the review page does, one key each (listed on the page; the component binds them).
KEYS: dict[str, str] = {
    "accept": "a",
    "reject": "r",
    "needs_correction": "c",
    "skip": "s",
    "next_item": "n",
    "previous_item": "p",
    "next_slice": "ArrowUp",
    "previous_slice": "ArrowDown",
    "toggle_overlay": "o",
    "toggle_heat": "h",
    "undo": "u",
    "navigate": "v",
    "brush": "b",
    "eraser": "e",
    "keep_component": "k",
    "remove_component": "x",
    "fill_hole": "f",
    "smaller_brush": "[",
    "larger_brush": "]",
    "preset_abdomen": "1",
    "preset_liver": "2",
    "preset_bone": "3",
    "preset_lung": "4",
}
#: What each key means, in the page's list.
KEY_HELP: dict[str, str] = {
    "accept": "accept the item",
    "reject": "reject the item",
    "needs_correction": "needs correction",
    "skip": "skip",
    "next_item": "next item",
    "previous_item": "previous item",
    "next_slice": "next slice (or the mouse wheel) in the active plane",
    "previous_slice": "previous slice",
    "toggle_overlay": "class overlays on / off",
    "toggle_heat": "uncertainty heat map on / off",
    "undo": "undo the last decision or edit",
    "navigate": "tool: crosshair (click), W/L (right drag), pan (shift drag), zoom (ctrl wheel)",
    "brush": "tool: brush (drag; size in mm)",
    "eraser": "tool: eraser",
    "keep_component": "tool: keep the clicked connected component",
    "remove_component": "tool: remove the clicked connected component",
    "fill_hole": "tool: fill the clicked hole",
    "smaller_brush": "brush 1 mm smaller",
    "larger_brush": "brush 1 mm larger",
    "preset_abdomen": "window abdomen W400/L40",
    "preset_liver": "window liver W150/L30",
    "preset_bone": "window bone W1800/L400",
    "preset_lung": "window lung W1500/L-600",
}
#: The edit actions the component sends (``apply_edit``).
EDITS = ("brush", "eraser", "keep_component", "remove_component", "fill_hole")


@dataclass(frozen=True)
class ItemSource:
    """Everything needed to build one item's payload, read from the catalog beforehand (the preload
    thread touches files only).

    Args:
        root: the workspace root.
        scan_id: catalog scan id.
        image_path: the CT file.
        mask_key: the shown label set's mask key.
        present: the classes the shown label set holds.
        class_name: the item's class.
        run_id: the pseudo-labelling run whose map is shown, or None.
    """

    root: str
    scan_id: str
    image_path: str
    mask_key: str
    present: tuple[str, ...]
    class_name: str
    run_id: str | None


@dataclass(frozen=True)
class Payload:
    """The file names (in the store's folder) of one item and what the browser needs to read them.

    Args:
        ct / labels / item / heat / mip: file names; ``heat`` is None without a map.
        shape: (x, y, z) display shape.
        spacing: (x, y, z) mm.
        classes: the classes of ``labels``, in label-value order (value k = ``classes[k - 1]``).
        problems: ``(file, problem)`` per mask file that could not be read (left out of the overlays).
        start: the (x, y, z) display voxel the crosshair opens on (:func:`start_voxel`).
        meta: the file name of the item's description (JSON), written after the others.
    """

    ct: str
    labels: str
    item: str
    heat: str | None
    mip: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    classes: tuple[str, ...]
    problems: tuple[tuple[str, str], ...]
    start: tuple[int, int, int]
    meta: str = ""


# ----------------------------------------------------------------------------------- volume encodings


def flat(a: np.ndarray) -> np.ndarray:
    """An (x, y, z) array flattened x fastest (the browser's ``x + nx * (y + ny * z)``)."""
    return np.ravel(a, order="F")


def encode_ct(dv: DisplayVolume) -> bytes:
    """The display CT as little-endian int16 HU, clipped to :data:`HU_RANGE`, x fastest."""
    hu = np.clip(np.asarray(dv.array), *HU_RANGE).astype("<i2")
    return flat(hu).tobytes()


def label_volume(masks: Mapping[str, np.ndarray], shape: Sequence[int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Paint display masks into one uint8 volume in :func:`harmonize.taxonomy.paint_order`.

    Args:
        masks: class name -> (x, y, z) bool display mask.
        shape: (x, y, z).

    Returns:
        ``(volume, classes)``: value k marks ``classes[k - 1]`` (a later class in paint order wins where
        two overlap, e.g. a tumour over its organ); 0 marks none.
    """
    classes = tuple(paint_order(list(masks)))
    out = np.zeros(tuple(shape), np.uint8)
    for k, name in enumerate(classes, start=1):
        out[np.asarray(masks[name], bool)] = k
    return out, classes


def encode_heat(entropy: np.ndarray) -> np.ndarray:
    """(x, y, z) entropy in bits -> uint8, 255 = 1 bit (values clipped to [0, 1] bit)."""
    return np.rint(np.clip(np.asarray(entropy, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def depth_projections(mask: np.ndarray) -> dict[str, np.ndarray]:
    """The 3D view of a display mask: depth-shaded projections from the front, the side and the top.

    Each pixel is 0 where no voxel of the mask lies behind it, else 80 + 175 * (1 - depth / length):
    the nearest surface is brightest. The planes are oriented like the views (``view_plane``: coronal
    seen from the front, sagittal from the patient's left, axial from the feet).

    Args:
        mask: (x, y, z) bool display mask.

    Returns:
        ``{"coronal": (z, x), "sagittal": (z, y), "axial": (y, x)}`` uint8 planes in view orientation.
    """
    m = np.asarray(mask, bool)
    out: dict[str, np.ndarray] = {}
    # seen from the front (anterior: y high), the patient's left (x low in RAS) and the feet (z low)
    for view, axis, from_high in (("coronal", 1, True), ("sagittal", 0, False), ("axial", 2, False)):
        n = m.shape[axis]
        seen = m[(slice(None),) * axis + (slice(None, None, -1),)] if from_high else m
        hit = seen.any(axis=axis)
        depth = np.argmax(seen, axis=axis).astype(np.float32)
        shade = np.where(hit, 80.0 + 175.0 * (1.0 - depth / max(n - 1, 1)), 0.0).astype(np.uint8)
        out[view] = _projection_plane(shade, view)
    return out


def _projection_plane(proj: np.ndarray, view: str) -> np.ndarray:
    """A 2D projection (the two remaining display axes, in order) turned like :func:`view_plane`: axial
    (x, y) -> rows y, cols x; coronal (x, z) and sagittal (y, z) -> rows z; each axis reversed."""
    return np.ascontiguousarray(proj[::-1, ::-1].T)


def encode_projections(planes: Mapping[str, np.ndarray]) -> bytes:
    """The three projections concatenated, each row-major: coronal, sagittal, axial."""
    return b"".join(
        np.ascontiguousarray(planes[v], np.uint8).tobytes() for v in ("coronal", "sagittal", "axial")
    )


def gz(data: bytes) -> bytes:
    """gzip at level 1 (label volumes are mostly zeros: ~100x smaller, in tens of ms)."""
    return gzip.compress(data, compresslevel=1, mtime=0)


# ------------------------------------------------------------------------------------------- the store


def _release(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class PayloadStore:
    """The private folder the browser fetches item files from, with a one-thread preloader.

    ``prepare`` builds an item's files (or finds them), ``preload`` starts that for the next item in the
    background (one at a time; a newer request replaces a pending one). Beyond ``max_bytes`` the least
    recently used files are deleted (never those of the item just prepared).

    Args:
        max_bytes: bound of the folder's size (default 2 GiB: about six 512 x 512 x 300 items).
        folder: where to keep the files (default: a new private temporary folder, removed at exit).
    """

    def __init__(self, max_bytes: int = 2 << 30, folder: Path | None = None) -> None:
        self.folder = (
            Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="workbench-viewer-"))
        )
        if folder is None:
            atexit.register(_release, self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._salt = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._used: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, least recent first
        self._pending: dict[str, Future[Payload]] = {}
        self._built: dict[str, Payload] = {}
        self._hurry: dict[str, threading.Event] = {}
        #: Seconds a preload waits before it starts (the page's own render goes first).
        self.preload_delay_s = 1.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewer-preload")

    def name(self, *parts: object) -> str:
        """A salted digest of ``parts`` (a file name nobody can guess from the ids)."""
        return hashlib.sha256("\x00".join([self._salt, *map(str, parts)]).encode()).hexdigest()[:32]

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.folder / f".{name}.part"
        tmp.write_bytes(data)
        tmp.replace(self.folder / name)
        with self._lock:
            self._used[name] = len(data)
            self._used.move_to_end(name)

    def _has(self, name: str) -> bool:
        with self._lock:
            if name in self._used and (self.folder / name).exists():
                self._used.move_to_end(name)
                return True
        return False

    def _evict(self, keep: set[str]) -> None:
        with self._lock:
            total = sum(self._used.values())
            for name in list(self._used):
                if total <= self.max_bytes:
                    break
                if name in keep:
                    continue
                total -= self._used.pop(name)
                (self.folder / name).unlink(missing_ok=True)

    def size(self) -> int:
        """Bytes held in the folder."""
        with self._lock:
            return sum(self._used.values())

    def prepare(
        self,
        source: ItemSource,
        read_ct: Callable[[ItemSource], DisplayVolume],
        read_mask: Callable[[ItemSource, str], np.ndarray],
        read_entropy: Callable[[ItemSource, DisplayVolume], np.ndarray | None],
    ) -> Payload:
        """The item's payload files, built now unless they exist or a preload is building them.

        Args:
            source: the item.
            read_ct: the display volume of the item's CT.
            read_mask: ``(source, class) ->`` the (i, j, k) file-order mask of a class of the label set;
                raises :class:`~harmonize.errors.HarmonizeError` for an unreadable file.
            read_entropy: the (x, y, z) display entropy map, or None without one.

        Returns:
            The :class:`Payload`.
        """
        key = self.name("payload", *_fields(source))
        with self._lock:
            pending = self._pending.get(key)
            hurry = self._hurry.get(key)
        if pending is not None:
            if hurry is not None:
                hurry.set()  # wanted now: no more waiting for the page to finish first
            return pending.result()
        return self._build(key, source, read_ct, read_mask, read_entropy)

    def preload(
        self,
        source: ItemSource,
        read_ct: Callable[[ItemSource], DisplayVolume],
        read_mask: Callable[[ItemSource, str], np.ndarray],
        read_entropy: Callable[[ItemSource, DisplayVolume], np.ndarray | None],
    ) -> str:
        """Start building ``source``'s payload in the background thread (nothing when it exists or is
        under way); returns its key. Errors are kept for the later :meth:`prepare`, which rebuilds."""
        key = self.name("payload", *_fields(source))
        with self._lock:
            if key in self._pending or key in self._built:
                return key
            hurry = self._hurry[key] = threading.Event()
            self._pending[key] = self._pool.submit(
                self._build_later, hurry, key, source, read_ct, read_mask, read_entropy
            )
        return key

    def _build_later(
        self,
        hurry: threading.Event,
        key: str,
        source: ItemSource,
        read_ct: Callable[[ItemSource], DisplayVolume],
        read_mask: Callable[[ItemSource, str], np.ndarray],
        read_entropy: Callable[[ItemSource, DisplayVolume], np.ndarray | None],
    ) -> Payload:
        """:meth:`_build` after :attr:`preload_delay_s` (or at once when :meth:`prepare` asks for it), so the
        page that asked for the preload is drawn first: on a few cores the preload's CT read would
        otherwise compete with it."""
        hurry.wait(self.preload_delay_s)
        with self._lock:
            self._hurry.pop(key, None)
        return self._build(key, source, read_ct, read_mask, read_entropy)

    def _build(
        self,
        key: str,
        source: ItemSource,
        read_ct: Callable[[ItemSource], DisplayVolume],
        read_mask: Callable[[ItemSource, str], np.ndarray],
        read_entropy: Callable[[ItemSource, DisplayVolume], np.ndarray | None],
    ) -> Payload:
        try:
            with self._lock:
                done = self._built.get(key)
            if done is not None and all(self._has(n) for n in _names(done)):
                return done
            payload = self._make(source, read_ct, read_mask, read_entropy)
            with self._lock:
                self._built[key] = payload
            self._evict(set(_names(payload)))
            return payload
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _make(
        self,
        source: ItemSource,
        read_ct: Callable[[ItemSource], DisplayVolume],
        read_mask: Callable[[ItemSource, str], np.ndarray],
        read_entropy: Callable[[ItemSource, DisplayVolume], np.ndarray | None],
    ) -> Payload:
        dv = read_ct(source)
        ct, base = self.names_for(source)
        if not self._has(ct):
            self._write(ct, encode_ct(dv))
        problems: list[tuple[str, str]] = []
        others: dict[str, np.ndarray] = {}
        item = np.zeros(dv.array.shape, bool)
        for name in source.present:
            try:
                m = dv.mask(read_mask(source, name))
            except HarmonizeError as e:
                line = (str(e.path), str(e.problem))
                if line not in problems:
                    problems.append(line)
                continue
            if name == source.class_name:
                item = m
            else:
                others[name] = m
        labels, classes = label_volume(others, dv.array.shape)
        del others
        self._write(base + ".lab", gz(flat(labels).tobytes()))
        del labels
        self._write(base + ".item", gz(flat(item.astype(np.uint8)).tobytes()))
        self._write(base + ".mip", gz(encode_projections(depth_projections(item))))
        heat = None
        entropy = read_entropy(source, dv)
        hint = None
        if entropy is not None:
            heat = base + ".heat"
            self._write(heat, gz(flat(encode_heat(entropy)).tobytes()))
            hint = most_uncertain_slice(entropy, "axial", item if item.any() else None)
        start = start_voxel(dv.array.shape, hint, item)
        shape = tuple(int(s) for s in dv.array.shape)
        payload = Payload(
            ct=ct,
            labels=base + ".lab",
            item=base + ".item",
            heat=heat,
            mip=base + ".mip",
            shape=(shape[0], shape[1], shape[2]),
            spacing=(float(dv.spacing[0]), float(dv.spacing[1]), float(dv.spacing[2])),
            classes=classes,
            problems=tuple(problems),
            start=start,
            meta=base + ".json",
        )
        # last: its presence tells the browser that every file it names is there
        self._write(payload.meta, json.dumps(component_item(payload, "", source.class_name, "")).encode())
        return payload

    def names_for(self, source: ItemSource) -> tuple[str, str]:
        """``(ct file name, stem of the mask files)`` of an item (the CT's is shared by a scan's items)."""
        ct = self.name("ct", source.root, source.scan_id, source.image_path) + ".ct"
        return ct, self.name("masks", *_fields(source))

    def built(self, source: ItemSource) -> Payload | None:
        """The item's payload when its files are ready, else None."""
        with self._lock:
            return self._built.get(self.name("payload", *_fields(source)))


def _fields(source: ItemSource) -> tuple[object, ...]:
    return (
        source.root,
        source.scan_id,
        source.image_path,
        source.mask_key,
        ",".join(source.present),
        source.class_name,
        source.run_id or "",
    )


def _names(p: Payload) -> list[str]:
    return [n for n in (p.ct, p.labels, p.item, p.heat, p.mip, p.meta) if n]


# ------------------------------------------------------------------------------------ component args


def component_item(payload: Payload, base_url: str, class_name: str, title: str) -> dict[str, Any]:
    """The JSON the browser component gets for one item.

    Args:
        payload: the item's files.
        base_url: the URL folder they are served from (ends with ``/``).
        class_name: the item's class.
        title: the line shown above the planes (text only; the component never renders HTML from it).

    Returns:
        A JSON-ready dict (see ``viewer_component/viewer.js``: ``render``).
    """
    return {
        "id": payload.labels,
        "title": title,
        "shape": list(payload.shape),
        "spacing": list(payload.spacing),
        "urls": {
            "ct": base_url + payload.ct,
            "labels": base_url + payload.labels,
            "item": base_url + payload.item,
            "heat": base_url + payload.heat if payload.heat else None,
            "mip": base_url + payload.mip,
        },
        "classes": [{"name": n, "color": list(class_color(n))} for n in payload.classes],
        "item_class": {"name": class_name, "color": list(class_color(class_name))},
        "start": [int(v) for v in payload.start],
    }


def view_key(scan_id: str, class_name: str) -> str:
    """What the browser keeps its crosshair and zoom across (a revised label set of the same scan x class
    keeps them; another item opens on its own start voxel)."""
    return f"{scan_id}\x00{class_name}"


def prefetch_item(
    store: PayloadStore,
    source: ItemSource,
    base_url: str,
    title: str = "",
    target: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What the browser fetches ahead for an item (the queue's next item): its payload's URLs when the
    preload has built it, else the names they will have (the browser retries until they exist), and what
    it needs to draw the item on a decision key without waiting for the page: the description file
    (``meta``, whose other fields the browser takes from there), the title line, and the item the next
    action names (``target``).

    Args:
        store / source: the store that builds the item, and the item.
        base_url: the URL folder of the store's files (ends with ``/``).
        title: the title line of the item (text only).
        target: ``{"scan_id", "class_name", "label_set_id"}`` of the item.

    Returns:
        ``{"urls": {"ct", "labels", "item", "heat", "mip", "meta"}, "base": base_url, "title", "view_key",
        "target"}`` (``heat`` None without a map or before the preload has built the item).
    """
    done = store.built(source)
    ct, base = store.names_for(source)
    if done is not None:
        urls = dict(component_item(done, base_url, source.class_name, "")["urls"])
    else:
        urls = {
            "ct": base_url + ct,
            "labels": base_url + base + ".lab",
            "item": base_url + base + ".item",
            "heat": None,  # known once built: the browser reads it from the description file
            "mip": base_url + base + ".mip",
        }
    urls["meta"] = base_url + base + ".json"
    return {
        "urls": urls,
        "base": base_url,
        "title": title,
        "view_key": view_key(source.scan_id, source.class_name),
        "target": dict(target or {}),
    }


def start_voxel(
    shape: Sequence[int], slice_hint: int | None, item_mask: np.ndarray | None
) -> tuple[int, int, int]:
    """The crosshair an item opens on: the axial slice ``slice_hint`` (the most uncertain one) or else
    the mask's centre slice, at the mask's in-plane centre (the volume's centre without a mask).

    Args:
        shape: (x, y, z) display shape.
        slice_hint: an axial slice index, or None.
        item_mask: (x, y, z) bool display mask of the item's class, or None.

    Returns:
        (x, y, z) display voxel.
    """
    centre = [int(s) // 2 for s in shape]
    if item_mask is not None and item_mask.any():
        idx = np.argwhere(item_mask)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        centre = [int((a + b) // 2) for a, b in zip(lo, hi)]
    if slice_hint is not None:
        centre[2] = int(np.clip(slice_hint, 0, int(shape[2]) - 1))
    return centre[0], centre[1], centre[2]


# ------------------------------------------------------------------------------------------ the edits


def file_axis(dv: DisplayVolume, view: str) -> int:
    """The file axis (i, j or k) that display ``view`` slices through."""
    target = VIEW_AXIS[view]
    return int(next(a for a, (t, _) in enumerate(dv.ornt) if int(t) == target))


def file_spacing(dv: DisplayVolume) -> tuple[float, float, float]:
    """(i, j, k) voxel size in mm (the display spacing in file axis order)."""
    s = [dv.spacing[int(t)] for t, _ in dv.ornt]
    return float(s[0]), float(s[1]), float(s[2])


def apply_edit(dv: DisplayVolume, mask: np.ndarray, action: Mapping[str, Any]) -> np.ndarray:
    """Apply one edit the browser sent to a file-order mask.

    Args:
        dv: the display volume of the scan.
        mask: (i, j, k) bool mask of the item's class in the shown label set (zeros when it has none).
        action: ``{"action": one of EDITS, "view": "axial" | "coronal" | "sagittal", "depth": slices
            either side (>= 0)}`` plus, for ``brush`` / ``eraser``, ``"points"``: [[x, y, z], ...] display
            voxels of the stroke and ``"radius_mm"``; for the others ``"voxel"``: [x, y, z] display voxel.

    Returns:
        The edited (i, j, k) bool mask (a new array).

    Raises:
        ValueError: an unknown action or view, a voxel outside the volume, a click that misses (no
            component there, not a hole); the message says which.
    """
    kind = str(action.get("action"))
    if kind not in EDITS:
        raise ValueError(f"edit {kind!r} is not one of {', '.join(EDITS)}")
    view = str(action.get("view"))
    if view not in VIEW_AXIS:
        raise ValueError(f"view {view!r} is not one of {', '.join(VIEW_AXIS)}")
    depth = int(action.get("depth", 0))
    axis = file_axis(dv, view)
    if kind in ("brush", "eraser"):
        points = [_file_voxel(dv, p) for p in action.get("points") or []]
        return brush(
            mask,
            np.asarray(points, np.int64),
            float(action.get("radius_mm", 0)),
            file_spacing(dv),
            axis,
            erase=kind == "eraser",
            depth=depth,
        )
    voxel = _file_voxel(dv, action.get("voxel") or [])
    if kind == "keep_component":
        return keep_component(mask, voxel)
    if kind == "remove_component":
        return remove_component(mask, voxel)
    return fill_hole(mask, voxel, axis, depth=depth)


def _file_voxel(dv: DisplayVolume, xyz: Sequence[Any]) -> tuple[int, int, int]:
    v = [int(x) for x in xyz]
    if len(v) != 3 or any(not 0 <= a < s for a, s in zip(v, dv.array.shape)):
        raise ValueError(f"display voxel {v} lies outside the volume of shape {tuple(dv.array.shape)}")
    return dv.to_file_index(v)


def display_geometry(shape: Sequence[int], affine: np.ndarray) -> DisplayVolume:
    """A :class:`DisplayVolume` that holds only the geometry of a scan (no voxels: its array is a
    zero-byte broadcast of the display shape), for mapping edits between display and file voxels without
    reading the CT.

    Args:
        shape: (i, j, k) file shape.
        affine: (4, 4) voxel -> RAS+ mm affine.

    Returns:
        The display geometry (``array`` holds zeros and must not be written).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    zooms = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    disp_shape = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for a, (target, _) in enumerate(ornt):
        disp_shape[int(target)] = int(shape[a])
        spacing[int(target)] = float(zooms[a])
    array = np.broadcast_to(np.zeros((), np.int16), tuple(disp_shape))
    file_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    return DisplayVolume(array, (spacing[0], spacing[1], spacing[2]), ornt, file_shape)
