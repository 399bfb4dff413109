"""The held-out split: which scans are held out for evaluation and never enter training.

The split (:func:`held_out_split`) is chosen ONCE per workspace and stored in the catalog's ``split``
table. The first call assigns every scan, stratified by source: within each source the scans are ordered
by a hash of (seed, scan id) and the first ``floor(fraction * n + 0.5)`` are held out (so a source with
one scan, or two at the default 0.2, keeps them all for training). Every later call returns the stored
split; a scan that arrives afterwards is held out when the hash of (seed, scan id), read as a number in
[0, 1), is below the fraction: deterministic, independent of arrival order, and stratified in expectation.
Held-out scans must stay out of training (:func:`training_scan_ids`).

Example:
    >>> choose_split({"a:1": "a", "a:2": "a", "a:3": "a", "b:1": "b"}, fraction=0.34)["b:1"]
    'train'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from storage.workspace import Workspace

DEFAULT_FRACTION = 0.2
HELD_OUT = "held_out"
TRAIN = "train"


def unit_hash(seed: int, scan_id: str) -> float:
    """A number in [0, 1) fixed by (seed, scan id).

    Args:
        seed: hash seed.
        scan_id: the scan.

    Returns:
        The first 8 bytes of SHA-256 over ``"seed:scan_id"`` as a fraction of 2^64.
    """
    digest = hashlib.sha256(f"{int(seed)}:{scan_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    return f


def choose_split(
    scans: Mapping[str, str], fraction: float = DEFAULT_FRACTION, seed: int = 0
) -> dict[str, str]:
    """The first, stratified split of a set of scans (pure; :func:`held_out_split` stores it).

    Args:
        scans: scan id -> source id.
        fraction: share of each source to hold out, in [0, 1).
        seed: hash seed.

    Returns:
        scan id -> :data:`HELD_OUT` or :data:`TRAIN`. Per source, the ``floor(fraction * n + 0.5)`` scans
        with the smallest :func:`unit_hash` are held out.
    """
    f = _check_fraction(fraction)
    by_source: dict[str, list[str]] = {}
    for scan_id, source in scans.items():
        by_source.setdefault(source, []).append(scan_id)
    out: dict[str, str] = {}
    for ids in by_source.values():
        ranked = sorted(ids, key=lambda s: (unit_hash(seed, s), s))
        k = math.floor(f * len(ranked) + 0.5)
        out.update({s: HELD_OUT if i < k else TRAIN for i, s in enumerate(ranked)})
    return out


def held_out_split(ws: Workspace, fraction: float = DEFAULT_FRACTION, seed: int = 0) -> set[str]:
    """The workspace's held-out scan ids; assigns (and stores) scans that have no split yet.

    Args:
        ws: the workspace.
        fraction: share of scans to hold out, in [0, 1); used only for scans not yet assigned.
        seed: hash seed; used only for scans not yet assigned.

    Returns:
        The held-out scan ids. Stable: once stored, a scan's split never changes, whatever ``fraction``
        and ``seed`` later calls pass (the ``split`` table records the ones that assigned it).
    """
    f = _check_fraction(fraction)
    stored = ws.catalog.split_assignments()
    pending = {s: source for s, source in ws.catalog.scan_sources().items() if s not in stored}
    if pending:
        if stored:
            method = "hash"
            chosen = {s: HELD_OUT if unit_hash(seed, s) < f else TRAIN for s in pending}
        else:
            method = "stratified"
            chosen = choose_split(pending, f, seed)
        # Two processes may assign at once: the catalog keeps the first row per scan, and we re-read.
        ws.catalog.add_split_assignments(
            [
                {"scan_id": s, "split": v, "method": method, "fraction": f, "seed": int(seed)}
                for s, v in chosen.items()
            ]
        )
        stored = ws.catalog.split_assignments()
    return {s for s, v in stored.items() if v == HELD_OUT}


def training_scan_ids(ws: Workspace, fraction: float = DEFAULT_FRACTION, seed: int = 0) -> set[str]:
    """Every scan id that is NOT held out (assigning new scans first, as :func:`held_out_split`).

    Args:
        ws: the workspace.
        fraction / seed: used only for scans not yet assigned.

    Returns:
        The training scan ids.
    """
    held = held_out_split(ws, fraction, seed)
    return set(ws.catalog.scan_sources()) - held
