"""A simulated expert reviewer for benchmarks and the demo: corrects queued items with the ground truth.

For each queued item (scan id, class, label set id) the expert looks up the truth mask from a provider
``(scan_id, class_name) -> bool mask on the scan's grid`` and:

* ACCEPTS the item (``review.record_decision(..., "accept")``) when the label set's mask of the class is
  already within ``accept_dice`` (default 0.95) Dice of the truth (both empty counts as Dice 1);
* otherwise CORRECTS it (``review.correct``) with the truth mask: a new ``revised`` label set whose parent
  is the judged label set, and a ``corrected`` review row. An item whose label set does not annotate the
  class is always corrected.

Every action is an ordinary, versioned review by the reviewer name (default ``simulated expert``), so the
training set, the queue and the app see it exactly as a human's.

Two experts of different skill play a double-reading team (``workbench.review.double_reading``):
``error_rate`` is the chance that the expert makes the wrong call on an item (it REJECTS a label it should
accept, or ACCEPTS one it should correct; ``ReviewOutcome.injected_error`` says so), and
``boundary_noise`` moves the boundary of each correction by that many voxels (dilated or eroded, at random),
so two readers' corrections differ as two radiologists' do. Both draws are seeded per reviewer x scan x
class (``seed``), so a run is repeatable. Each reviewed item costs the same fixed
``cost_per_item`` (accepting costs as much as correcting: the expert has to look either way); the expert
stops when the next item would exceed ``budget`` and skips, without charging, an item whose scan x class
it already reviewed in this session.

:class:`ReadingTeam` plays double reading: two experts read, a third adjudicates their disagreements.

Truth providers:

* :class:`PhantomTruth` regenerates a synthetic phantom from its :class:`PhantomSpec` (seed, shape, ...)
  and moves its RAS-ordered masks onto the scan's voxel grid (any orientation the source wrote);
* :class:`StoredTruth` reads truth masks written to a separate mask store (:meth:`StoredTruth.write`).

Example:
    >>> truth = PhantomTruth(ws, {"btcv:demo000": PhantomSpec(1000)})  # doctest: +SKIP
    >>> expert = SimulatedExpert(ws, truth, budget=20)  # doctest: +SKIP
    >>> expert.review_items(workbench.review.queue(ws))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from nibabel import orientations as nio

from harmonize.errors import HarmonizeError
from harmonize.geometry import GRID_TOLERANCE_MM, grid_difference_mm
from harmonize.harmonizer import ANNOTATED_ABSENT, ANNOTATED_PRESENT, NOT_ANNOTATED
from harmonize.phantoms import Phantom, make_phantom
from harmonize.taxonomy import class_names
from storage.files import safe_name
from storage.masks import MaskStore
from storage.workspace import Workspace
from workbench import review
from workbench.learning.metrics import ScanTruth, dice

#: (scan id, class name) -> (i, j, k) bool truth mask on the scan's grid (all False when absent).
TruthProvider = Callable[[str, str], np.ndarray]

DEFAULT_REVIEWER = "simulated expert"
DEFAULT_ACCEPT_DICE = 0.95


class BudgetExhausted(RuntimeError):
    """The next item would cost more than the budget that is left."""


# ----------------------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class PhantomSpec:
    """The arguments of ``harmonize.phantoms.make_phantom`` that rebuild one scan's phantom exactly.

    Args:
        seed: phantom seed.
        shape: (nx, ny, nz) voxels in RAS order.
        spacing: mm along x, y, z.
        missing: classes or pair names left out.
        tumors: True, False or tumour class names.
        variant: None, ``"horseshoe"`` or ``"fragmented_kidney"``.
    """

    seed: int
    shape: tuple[int, int, int] = (96, 96, 64)
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    missing: tuple[str, ...] = ()
    tumors: bool | tuple[str, ...] = True
    variant: str | None = None

    def make(self) -> Phantom:
        """The phantom (same arguments, same voxels)."""
        return make_phantom(
            self.seed,
            shape=self.shape,
            spacing=self.spacing,
            missing=self.missing,
            tumors=self.tumors,
            variant=self.variant,
        )


def to_scan_grid(
    array: np.ndarray,
    affine: np.ndarray,
    scan_affine: np.ndarray,
    scan_shape: Sequence[int],
    *,
    where: str | Path = "scan",
    tolerance_mm: float = GRID_TOLERANCE_MM,
) -> np.ndarray:
    """Move a volume onto a scan's voxel grid that differs from its own only by axis flips/permutations.

    Args:
        array: (i, j, k) array on the grid of ``affine``.
        affine: (4, 4) voxel -> RAS+ mm of ``array``.
        scan_affine / scan_shape: the target grid.
        where: names the scan in errors.
        tolerance_mm: largest allowed difference between the moved affine and ``scan_affine`` (default
            the one grid tolerance of :mod:`harmonize.geometry`).

    Returns:
        The array reoriented to ``scan_shape`` (a view where possible).

    Raises:
        HarmonizeError: the grids are not the same voxels (shape, spacing or origin differ).
    """
    src = np.asarray(affine, dtype=np.float64)
    dst = np.asarray(scan_affine, dtype=np.float64)
    ornt = nio.ornt_transform(nio.io_orientation(src), nio.io_orientation(dst))
    moved = nio.apply_orientation(array, ornt)
    moved_affine = src @ nio.inv_ornt_aff(ornt, array.shape)
    shape = tuple(int(s) for s in scan_shape)
    if moved.shape != shape:
        raise HarmonizeError(where, f"truth grid {moved.shape} does not match the scan's shape {shape}")
    diff = grid_difference_mm(moved_affine, dst)
    if diff > tolerance_mm:
        raise HarmonizeError(
            where, f"truth grid is {diff:.3g} mm off the scan's affine (tolerance {tolerance_mm} mm)"
        )
    return moved


def _scan_grid(ws: Workspace, scan_id: str) -> dict[str, Any]:
    """One scan's grid from the catalog.

    Args:
        ws: the workspace.
        scan_id: the scan.

    Returns:
        The row of :meth:`storage.catalog.Catalog.scan_geometry`: ``id, source_id, image_path, shape,
        spacing, affine`` (16 floats, row-major).

    Raises:
        HarmonizeError: the catalog has no such scan.
    """
    df = ws.catalog.scan_geometry([scan_id])
    if df.empty:
        raise HarmonizeError(ws.catalog.path, f"no scan {scan_id!r} in the catalog")
    return df.iloc[0].to_dict()


class PhantomTruth:
    """Truth by regenerating each scan's phantom (a few hundred ms per 96 x 96 x 64 phantom; the last
    ``cache_size`` phantoms are kept, moved to their scan's grid).

    Args:
        ws: the workspace (for each scan's grid).
        specs: scan id -> its :class:`PhantomSpec`.
        cache_size: phantoms kept in memory.
    """

    def __init__(self, ws: Workspace, specs: Mapping[str, PhantomSpec], cache_size: int = 4) -> None:
        self.ws = ws
        self.specs = dict(specs)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[str, tuple[dict[str, np.ndarray], np.ndarray]] = OrderedDict()

    def _load(self, scan_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if scan_id in self._cache:
            self._cache.move_to_end(scan_id)
            return self._cache[scan_id]
        if scan_id not in self.specs:
            raise HarmonizeError(self.ws.catalog.path, f"no phantom spec for scan {scan_id!r}")
        row = _scan_grid(self.ws, scan_id)
        shape = tuple(int(s) for s in row["shape"])
        aff = np.asarray(list(row["affine"]), dtype=np.float64).reshape(4, 4)
        phantom = self.specs[scan_id].make()
        where = str(row["image_path"])
        masks = {
            n: to_scan_grid(m, phantom.ct.affine, aff, shape, where=where) for n, m in phantom.masks.items()
        }
        ct = to_scan_grid(phantom.ct.array, phantom.ct.affine, aff, shape, where=where)
        self._cache[scan_id] = (masks, ct)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return masks, ct

    def __call__(self, scan_id: str, class_name: str) -> np.ndarray:
        """The truth mask of one class on the scan's grid (all False when the phantom lacks it)."""
        masks, ct = self._load(scan_id)
        m = masks.get(class_name)
        return np.zeros(ct.shape, dtype=bool) if m is None else np.asarray(m, dtype=bool)

    def masks(self, scan_id: str) -> dict[str, np.ndarray]:
        """Every present class's truth mask on the scan's grid."""
        return dict(self._load(scan_id)[0])

    def image(self, scan_id: str) -> np.ndarray:
        """The phantom's CT (HU) on the scan's grid, for the HU statistics of corrections."""
        return self._load(scan_id)[1]

    def scan_truth(self, scan_id: str) -> ScanTruth:
        """The phantom's complete truth as an evaluation truth: all 32 classes annotated (present where the
        phantom has them), on the scan's grid, with the scan's source and spacing."""
        masks, ct = self._load(scan_id)
        row = _scan_grid(self.ws, scan_id)
        return ScanTruth(
            scan_id=scan_id,
            source_id=str(row["source_id"]),
            spacing=tuple(float(s) for s in row["spacing"]),  # type: ignore[arg-type]
            states={n: ANNOTATED_PRESENT if n in masks else ANNOTATED_ABSENT for n in class_names()},
            masks=dict(masks),
            shape=tuple(int(s) for s in ct.shape),  # type: ignore[arg-type]
        )


class StoredTruth:
    """Truth read from a mask store kept apart from the workspace's (e.g. ``<ws>/truth``), one label set
    per scan holding its present classes.

    Args:
        root: the truth mask store's folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.store = MaskStore(root)

    @staticmethod
    def key(scan_id: str) -> str:
        """The store key of a scan: readable prefix plus a hash (scan ids hold ':' and may collide once
        sanitised)."""
        digest = hashlib.sha1(scan_id.encode()).hexdigest()[:12]
        return f"truth-{safe_name(scan_id)[:120]}-{digest}"

    def write(self, scan_id: str, masks: Mapping[str, np.ndarray], shape: Sequence[int]) -> None:
        """Store a scan's truth (present classes -> (i, j, k) bool masks of ``shape``); replaces it."""
        self.store.write_label_set(
            self.key(scan_id),
            {n: np.asarray(m, dtype=bool) for n, m in masks.items() if np.any(m)},
            tuple(int(s) for s in shape),  # type: ignore[arg-type]
            overwrite=True,
        )

    def __call__(self, scan_id: str, class_name: str) -> np.ndarray:
        key = self.key(scan_id)
        if not self.store.exists(key):
            raise HarmonizeError(self.store.root, f"no stored truth for scan {scan_id!r}")
        if class_name in self.store.names(key):
            return np.asarray(self.store.read(key, class_name), dtype=bool)
        return np.zeros(self.store.index(key).shape, dtype=bool)


# ---------------------------------------------------------------------------------------- expert


def noisy_boundary(mask: np.ndarray, voxels: int, rng: np.random.Generator) -> np.ndarray:
    """A mask whose boundary moved by ``voxels`` (6-connected dilation or erosion, chosen by ``rng``): how
    one reader's outline differs from another's.

    Args:
        mask: (i, j, k) bool mask.
        voxels: how far the boundary moves (0: the mask itself).
        rng: draws dilation or erosion.

    Returns:
        The (i, j, k) bool mask; an erosion that would empty a non-empty mask dilates instead.
    """
    mask = np.asarray(mask, dtype=bool)
    if voxels <= 0 or not mask.any():
        return mask.copy()
    from scipy import ndimage

    if rng.random() < 0.5:
        eroded = ndimage.binary_erosion(mask, iterations=voxels)
        if eroded.any():
            return np.asarray(eroded, dtype=bool)
    return np.asarray(ndimage.binary_dilation(mask, iterations=voxels), dtype=bool)


def judged_mask(
    ws: Workspace, label_set_id: str, class_name: str, shape: tuple[int, ...]
) -> np.ndarray | None:
    """A label set's mask of one class, as a reviewer judges it.

    Args:
        ws: the workspace.
        label_set_id / class_name: the item.
        shape: the scan's grid (an annotated-absent class is all False of this shape).

    Returns:
        Boolean mask of ``shape``; None when the label set does not annotate the class.

    Raises:
        HarmonizeError: no such label set.
    """
    mask_key = ws.catalog.label_set_mask_key(label_set_id)
    if mask_key is None:
        raise HarmonizeError(ws.catalog.path, f"no label set {label_set_id!r} in the catalog")
    state = ws.catalog.coverage(label_set_id).get(class_name, NOT_ANNOTATED)
    if state == NOT_ANNOTATED:
        return None
    if state == ANNOTATED_PRESENT:
        return np.asarray(ws.masks.read(mask_key, class_name), dtype=bool)
    return np.zeros(shape, dtype=bool)


#: A queue item is a REAL error of its pseudo-label when the label's Dice against the truth is below this
#: (a missed structure or an extra one scores 0; ``docs/decisions.md``, learnt classes).
REAL_ERROR_DICE = 0.8


@dataclass(frozen=True)
class QueuePrecision:
    """How many of a ranked queue's first items are real errors of their pseudo-labels.

    Args:
        dice: Dice of each of the first k items' label against the truth, in rank order.
        error_dice: an item is a real error below this Dice.
    """

    dice: tuple[float, ...]
    error_dice: float = REAL_ERROR_DICE

    @property
    def errors(self) -> int:
        """Items whose Dice is below ``error_dice``."""
        return sum(d < self.error_dice for d in self.dice)

    @property
    def precision(self) -> float:
        """``errors / k`` (NaN for an empty queue)."""
        return self.errors / len(self.dice) if self.dice else float("nan")

    def line(self) -> str:
        """``queue top-10 precision 0.90: 9 of its 10 items are real errors (Dice vs truth < 0.8)``."""
        k = len(self.dice)
        return (
            f"queue top-{k} precision {self.precision:.2f}: {self.errors} of its {k} items (classes the "
            f"model learnt) are real errors of their pseudo-labels (Dice vs the phantom truth < "
            f"{self.error_dice:g})"
        )


def queue_precision(
    ws: Workspace,
    truth: TruthProvider,
    ranked: pd.DataFrame,
    k: int = 10,
    error_dice: float = REAL_ERROR_DICE,
) -> QueuePrecision:
    """The share of a ranked queue's top ``k`` items whose pseudo-label is a real error against the truth.

    Args:
        ws: the workspace.
        truth: the truth provider (``PhantomTruth``): (scan, class) -> mask on the scan's grid.
        ranked: the queue in rank order (``workbench.review.rank``: ``scan_id, class_name, label_set_id``).
        k: items counted from the top.
        error_dice: Dice below which an item is a real error.

    Returns:
        The :class:`QueuePrecision` of the first ``k`` rows (fewer when the queue is shorter).
    """
    scores = []
    for r in ranked.head(k).to_dict("records"):
        scan_id, name = str(r["scan_id"]), str(r["class_name"])
        t = np.asarray(truth(scan_id, name), dtype=bool)
        judged = judged_mask(ws, str(r["label_set_id"]), name, t.shape)
        scores.append(dice(judged, t) if judged is not None else (0.0 if t.any() else 1.0))
    return QueuePrecision(tuple(float(x) for x in scores), error_dice)


@dataclass(frozen=True)
class ReviewOutcome:
    """What the expert did with one item.

    Args:
        scan_id / class_name / label_set_id: the item (the label set version that was judged).
        action: ``"accept"``, ``"corrected"`` or ``"reject"`` (only as an injected error).
        dice_before: Dice of the judged mask against the truth (0 when the label set does not annotate
            the class and the truth has it; 1 when both are empty).
        review_id: the review row written.
        result_label_set_id: the ``revised`` label set a correction wrote (None for an accept).
        cost: what the item cost.
        injected_error: True when ``error_rate`` made the expert take the wrong call (``action`` differs
            from what the truth asks for).
    """

    scan_id: str
    class_name: str
    label_set_id: str
    action: str
    dice_before: float
    review_id: str
    result_label_set_id: str | None
    cost: float
    injected_error: bool = False


@dataclass
class SimulatedExpert:
    """A reviewer that accepts or corrects queued items from the truth, within a budget.

    Args:
        ws: the workspace.
        truth: the truth provider.
        budget: total cost the expert may spend (in the unit of ``cost_per_item``; items by default).
        cost_per_item: fixed cost of one reviewed item (> 0).
        accept_dice: accept when the judged mask's Dice against the truth is at least this.
        reviewer: the reviewer name on every review row.
        image: optional scan id -> (i, j, k) CT in HU, for the HU statistics of corrected classes
            (``PhantomTruth.image``); without it they are NaN.
        error_rate: chance (0..1) of the wrong call on an item (reject instead of accept, accept instead
            of correct).
        boundary_noise: voxels by which each correction's boundary moves (dilated or eroded at random;
            0: the truth itself).
        seed: seeds the error and noise draws (with the reviewer, scan and class).
    """

    ws: Workspace
    truth: TruthProvider
    budget: float
    cost_per_item: float = 1.0
    accept_dice: float = DEFAULT_ACCEPT_DICE
    reviewer: str = DEFAULT_REVIEWER
    image: Callable[[str], np.ndarray] | None = None
    error_rate: float = 0.0
    boundary_noise: int = 0
    seed: int = 0
    spent: float = 0.0
    outcomes: list[ReviewOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cost_per_item > 0:
            raise ValueError(f"cost_per_item must be > 0, got {self.cost_per_item}")
        if not self.budget >= 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if not 0.0 <= self.accept_dice <= 1.0:
            raise ValueError(f"accept_dice must be in [0, 1], got {self.accept_dice}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if self.boundary_noise < 0:
            raise ValueError(f"boundary_noise must be >= 0 voxels, got {self.boundary_noise}")
        self.reviewer = review.validate_reviewer(self.ws, self.reviewer)

    @property
    def remaining(self) -> float:
        """Budget left."""
        return self.budget - self.spent

    def can_afford(self) -> bool:
        """True when one more item fits in the budget."""
        return self.spent + self.cost_per_item <= self.budget + 1e-9

    def _judged_mask(self, label_set_id: str, class_name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The label set's mask of the class; None when the label set does not annotate it."""
        return judged_mask(self.ws, label_set_id, class_name, shape)

    def review(self, scan_id: str, class_name: str, label_set_id: str) -> ReviewOutcome:
        """Accept or correct one item and charge its cost.

        Raises:
            BudgetExhausted: the item does not fit in the remaining budget (nothing is written).
            HarmonizeError: unknown scan, class or label set; a truth mask of the wrong shape.
        """
        if not self.can_afford():
            raise BudgetExhausted(
                f"{self.reviewer}: {self.spent:g} of the budget {self.budget:g} spent; "
                f"an item costs {self.cost_per_item:g}"
            )
        truth = np.asarray(self.truth(scan_id, class_name), dtype=bool)
        shape = tuple(int(s) for s in _scan_grid(self.ws, scan_id)["shape"])
        if truth.shape != shape:
            raise HarmonizeError(
                self.ws.catalog.path, f"truth of {scan_id} {class_name} has shape {truth.shape}, scan {shape}"
            )
        judged = self._judged_mask(label_set_id, class_name, shape)
        score = dice(judged, truth) if judged is not None else (0.0 if truth.any() else 1.0)
        rng = self._rng(scan_id, class_name)
        right = "accept" if judged is not None and score >= self.accept_dice else "corrected"
        erred = bool(rng.random() < self.error_rate)
        action = {"accept": "reject", "corrected": "accept"}[right] if erred else right
        result = None
        if action == "corrected":
            corr = review.correct(
                self.ws,
                scan_id,
                class_name,
                noisy_boundary(truth, self.boundary_noise, rng),
                self.reviewer,
                f"simulated: Dice {score:.3f} vs truth < {self.accept_dice:g}, replaced by the truth",
                base_label_set_id=label_set_id,
                image=None if self.image is None else self.image(scan_id),
            )
            review_id, result = corr.review_id, corr.label_set_id
        else:
            note = "an injected error" if erred else f">= {self.accept_dice:g}"
            review_id = review.record_decision(
                self.ws,
                scan_id,
                class_name,
                label_set_id,
                action,
                self.reviewer,
                f"simulated: Dice {score:.3f} vs truth, {note}",
            )
        self.spent += self.cost_per_item
        outcome = ReviewOutcome(
            scan_id, class_name, label_set_id, action, score, review_id, result, self.cost_per_item, erred
        )
        self.outcomes.append(outcome)
        return outcome

    def _rng(self, scan_id: str, class_name: str) -> np.random.Generator:
        """The draws of one item: seeded by ``seed``, the reviewer, the scan and the class."""
        digest = hashlib.sha256(f"{self.seed}|{self.reviewer}|{scan_id}|{class_name}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "big"))

    def review_items(
        self, items: pd.DataFrame | Iterable[Mapping[str, Any]], limit: int | None = None
    ) -> list[ReviewOutcome]:
        """Review items in order until the budget (or ``limit`` items) is used up.

        Args:
            items: rows with ``scan_id``, ``class_name``, ``label_set_id`` (``review.queue`` or
                ``workbench.review.rank`` output, or plain dicts), highest priority first.
            limit: review at most this many items in this call.

        Returns:
            The outcomes of this call. Items whose scan x class this expert already reviewed are skipped
            at no cost (a correction made the judged version stale).
        """
        rows = items.to_dict("records") if isinstance(items, pd.DataFrame) else list(items)
        seen = {(o.scan_id, o.class_name) for o in self.outcomes}
        done: list[ReviewOutcome] = []
        for r in rows:
            if (limit is not None and len(done) >= limit) or not self.can_afford():
                break
            key = (str(r["scan_id"]), str(r["class_name"]))
            if key in seen:
                continue
            done.append(self.review(key[0], key[1], str(r["label_set_id"])))
            seen.add(key)
        return done

    def counts(self) -> dict[str, float]:
        """Items accepted and corrected, and the budget spent and left (:meth:`error_counts`: rejects and
        injected errors)."""
        return {
            "accepted": sum(o.action == "accept" for o in self.outcomes),
            "corrected": sum(o.action == "corrected" for o in self.outcomes),
            "spent": self.spent,
            "remaining": self.remaining,
        }

    def error_counts(self) -> dict[str, int]:
        """Items rejected, and the injected errors (wrong calls drawn by ``error_rate``) among all items."""
        return {
            "rejected": sum(o.action == "reject" for o in self.outcomes),
            "injected_errors": sum(o.injected_error for o in self.outcomes),
        }


# ------------------------------------------------------------------------------------ double reading


@dataclass
class ReadingTeam:
    """Double reading played out from the truth: ``first`` reviews the queue, ``second`` reads the
    double-read items ``first`` read (from its own blind queue), ``adjudicator`` settles the disagreements.
    A :class:`~workbench.learning.rounds.Reviewer`, so an active-learning round can use it.

    Args:
        first / second: the two readers (e.g. of different ``error_rate`` / ``boundary_noise``).
        adjudicator: the third reviewer (usually without errors).
    """

    first: SimulatedExpert
    second: SimulatedExpert
    adjudicator: SimulatedExpert
    second_outcomes: list[ReviewOutcome] = field(default_factory=list)
    adjudications: list[ReviewOutcome] = field(default_factory=list)

    def review_items(
        self, items: pd.DataFrame | Iterable[Mapping[str, Any]], limit: int | None = None
    ) -> list[ReviewOutcome]:
        """``first`` reviews ``items`` (at most ``limit``); then ``second`` and ``adjudicator`` do their part.

        Returns:
            ``first``'s outcomes of this call (the round's budget counts the first readings).
        """
        done = self.first.review_items(items, limit)
        read = {(o.label_set_id, o.class_name) for o in done}
        blind = review.queue(self.first.ws, reader=self.second.reviewer)
        blind = blind[blind["double_read"].astype(bool) & (blind["readings"] == 1)]
        mine = [r for r in blind.to_dict("records") if (r["label_set_id"], r["class_name"]) in read]
        self.second_outcomes += self.second.review_items(mine)
        disputed = review.adjudication_list(self.first.ws)
        self.adjudications += self.adjudicator.review_items(disputed)
        return done

    def error_summary(self) -> dict[str, int]:
        """The readers' injected errors and what became of them.

        Returns:
            ``injected`` (wrong calls of either reader), ``double_read`` (of those, on double-read items),
            ``caught`` (double-read ones whose verdict is now the right call: accept where the judged
            label was within ``accept_dice`` of the truth, corrected otherwise), ``missed`` (double-read,
            verdict still wrong or none), ``single_read`` (never seen by a second reader).
        """
        second_read = {(o.label_set_id, o.class_name) for o in self.second_outcomes}
        out = {"injected": 0, "double_read": 0, "caught": 0, "missed": 0, "single_read": 0}
        for o in [*self.first.outcomes, *self.second_outcomes]:
            if not o.injected_error:
                continue
            out["injected"] += 1
            if (o.label_set_id, o.class_name) not in second_read:
                out["single_read"] += 1
                continue
            out["double_read"] += 1
            right = "accept" if o.dice_before >= self.first.accept_dice else "corrected"
            verdict = self.first.ws.catalog.verdict_of(o.label_set_id, o.class_name)
            out["caught" if verdict is not None and verdict["decision"] == right else "missed"] += 1
        return out
