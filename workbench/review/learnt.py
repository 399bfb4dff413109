"""What each run's model learnt: the queue holds back the classes it never saw an annotated example of.

A pseudo-label of a class its model was never trained on with an annotated example is noise, not a review
item: ranking it would put "celiac_trunk: 99 % overlaps colon" on top of the queue. Every checkpoint carries
its training record (``trained_on``: class -> ``{"sources": [...], "scans": n}``, from
``workbench.training_set.learnt_counts``; a release model: the paper's sources per class, ``scans`` None)
and every pseudo-label run records its model's in its config. :func:`learnt_classes` resolves the record
ONCE PER RUN (the run's config; an older run: the registered model of its checkpoint sha256), never per
item, so the queue's speed at a million items does not change: the held-back run x classes become one
``NOT (...)`` condition of the queue's query.

* a class is LEARNT when its record has at least one annotated scan (``scans`` > 0), or, for a release
  model (``scans`` None), at least one source;
* a run whose record is unknown (None: a checkpoint older than the record) is served as before, with one
  line per model saying so;
* a ``tool`` run (a segmentation tool's outputs, #13) is trained by the tool's authors: served as is.

Example:
    >>> known = learnt_classes(ws)  # doctest: +SKIP
    >>> ws.catalog.review_queue(held_back=known.held_back)  # doctest: +SKIP
    >>> known.lines(ws.catalog.held_back_counts(known.held_back))  # doctest: +SKIP
    ['celiac_trunk: the model never learnt this class (27 items held back; --include-unlearnt shows them)']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.workspace import Workspace

#: The flag that serves held-back items anyway (``workbench queue`` and ``review list``).
INCLUDE_FLAG = "--include-unlearnt"


def learnt(record: Mapping[str, Any] | None, class_name: str) -> bool:
    """Whether a model with training record ``record`` saw an annotated example of ``class_name``.

    Args:
        record: class -> ``{"sources": [...], "scans": n or None}`` (None: unknown, counts as learnt).
        class_name: a universal class.

    Returns:
        True when the record is unknown, or it counts annotated scans of the class (``scans`` > 0), or, with
        ``scans`` None (a release model), names a source for it.

    Example:
        >>> learnt({"liver": {"sources": ["btcv"], "scans": 3}}, "liver"), learnt({"liver": {}}, "spleen")
        (True, False)
    """
    if record is None:
        return True
    entry = record.get(class_name)
    if not isinstance(entry, Mapping):
        return False
    scans = entry.get("scans")
    return bool(entry.get("sources")) if scans is None else int(scans) > 0


@dataclass(frozen=True)
class LearntClasses:
    """The queue's view of what each run's model learnt.

    Args:
        held_back: run id -> classes of its items that are held back (the model never learnt them).
        unknown: model label (registered name, else checkpoint sha256[:12]) -> its runs with queue items
            whose training record is unknown (served as before).
    """

    held_back: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unknown: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def lines(self, counts: Mapping[str, int], *, shown: bool = False) -> list[str]:
        """The queue's notices: one line per held-back class with items, one per model of unknown record.

        Args:
            counts: class -> held-back items (``Catalog.held_back_counts``).
            shown: the items are listed anyway (``--include-unlearnt`` / the app's checkbox).

        Returns:
            ``"<class>: the model never learnt this class (N items held back)"`` per class (``... N items
            shown anyway`` when ``shown``), then ``"model <m>: its training record is unknown (an older
            checkpoint); its items are served as before"`` per model.
        """
        tail = "shown anyway" if shown else f"held back; {INCLUDE_FLAG} shows them"
        out = [
            f"{name}: the model never learnt this class ({n} item{'s' * (n != 1)} {tail})"
            for name, n in sorted(counts.items())
            if n
        ]
        out += [
            f"model {m}: its training record is unknown (an older checkpoint); its items are served as before"
            for m in sorted(self.unknown)
        ]
        return out


def _record(raw: Any) -> dict[str, Any] | None:
    """A stored training record (JSON text or dict) as a dict; None for unknown (NULL, JSON null)."""
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    value = json.loads(raw) if isinstance(raw, str) else raw
    return dict(value) if isinstance(value, Mapping) else None


def run_record(row: Mapping[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """A run's training record from a ``Catalog.run_training_records`` row.

    Args:
        row: the run's row.

    Returns:
        ``(resolved, record)``: from the run's config when it recorded one (``resolved`` True even when the
        record is None: the model's was unknown), else from the registered model of the same sha256, else
        ``(False, None)``.
    """
    if bool(row["has_config_record"]):
        return True, _record(row["config_trained_on"])
    model = _record(row["model_trained_on"])
    return model is not None, model


def learnt_classes(ws: Workspace) -> LearntClasses:
    """Resolve, once per run, the classes each run's model never learnt (one catalog query).

    Args:
        ws: the workspace.

    Returns:
        The :class:`LearntClasses` of every pseudo-label run: its held-back classes are those of its
        config's ``classes`` (the channels it predicted) the record does not count; a run whose record is
        unknown and that wrote queue items is listed under ``unknown``.
    """
    held: dict[str, tuple[str, ...]] = {}
    unknown: dict[str, list[str]] = {}
    for row in ws.catalog.run_training_records().to_dict("records"):
        if row["kind"] != "pseudolabel":
            continue
        _, record = run_record(row)
        run_id = str(row["run_id"])
        if record is None:
            if bool(row["queues_items"]):
                unknown.setdefault(_model_label(row), []).append(run_id)
            continue
        predicted = json.loads(row["config_classes"]) if isinstance(row["config_classes"], str) else []
        missing = tuple(sorted(c for c in predicted if not learnt(record, str(c))))
        if missing:
            held[run_id] = missing
    return LearntClasses(held, {m: tuple(r) for m, r in unknown.items()})


def _model_label(row: Mapping[str, Any]) -> str:
    name = row.get("model_name")
    if isinstance(name, str) and name:
        return name
    sha = row.get("checkpoint_sha256")
    return str(sha)[:12] if isinstance(sha, str) and sha else f"of run {row['run_id']}"
