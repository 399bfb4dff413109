"""The review queue, listed and ranked: what a reviewer should look at next.

Two views of the same ``uncertainty`` items, with ONE rule for what is decided: a decision stands on the
scan, class and label set VERSION it judged, unless an undo reversed it (the catalog's
``standing_review`` view). A decision on one version never hides the item of a newer version.

* :func:`queue` (the app): the stored scores, filtered by class, source, reason, status and reviewer, each
  item with its standing decision.
* :func:`rank` (the CLI, active-learning rounds): the scores recomputed from the stored signals with the
  run's own statistics and the catalog's long tail (``workbench.pseudolabel.scoring``), undecided items only
  unless asked; :func:`format_queue` prints it. An active-learning round orders it by ``order="gain"``
  (:func:`expected_gain`): what reviewing an item is expected to add to the training set's labels, from
  its score and the held-out Dice its model measured for the class in the round that made it.

Both hold back the items of classes the run's model never learnt (``workbench.review.learnt``) unless
``include_unlearnt``; :func:`learnt_notice` says so once per class.

Example:
    >>> for line in format_queue(rank(ws), top=3):  # doctest: +SKIP
    ...     print(line)
       1  0.849  kits23:00001  kidney_left: volume 3.1 sd above the catalog mean; 2 components
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pandas as pd

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench.pseudolabel.scoring import DEFAULT_LONG_TAIL_BOOST, score_items
from workbench.review.decisions import DECISIONS
from workbench.review.double_reading import upkeep
from workbench.review.learnt import learnt_classes
from workbench.review.validation import check_class, scan_row

#: Queue status filter values: ``pending`` (open: undecided, the newest item of its scan x class, not
#: settled by an earlier decision), ``decided`` (any verdict), ``all``, ``adjudication`` (double-read items
#: whose readers disagree), or one verdict.
QUEUE_STATUSES = ("pending", "decided", "all", "adjudication", *DECISIONS, "corrected")


def queue(
    ws: Workspace,
    *,
    classes: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    reasons: Sequence[str] | None = None,
    status: str = "pending",
    reviewer: str | None = None,
    reader: str | None = None,
    limit: int | None = None,
    include_unlearnt: bool = False,
) -> pd.DataFrame:
    """The ranked review queue: uncertainty items (highest score first) with their scan and verdict.

    Before listing, new items are planned for single or double reading, new pairs of corrections measured
    and items of decided scan x classes checked against the decision (``double_reading.upkeep``).

    Args:
        ws: the workspace.
        classes / sources: keep only these (None: all).
        reasons: keep items with at least one of these reasons.
        status: one of :data:`QUEUE_STATUSES`; ``pending`` (default): one row per scan x class (its
            newest item), undecided, and for a scan x class decided on an older version only when the new
            prediction's Dice against the decided label is below the stored threshold.
        reviewer: keep items whose verdict is by this reviewer.
        reader: this reviewer's blind queue: with ``pending``, items the reader already read are left out;
            another reader's decision on a double-read item never shows before both have read.
        limit: at most this many rows.
        include_unlearnt: also list items of classes the run's model never learnt (held back by default;
            :func:`learnt_notice`).

    Returns:
        The columns of ``Catalog.review_queue``: the item (``scan_id, source_id, case_id, class_name,
        run_id, label_set_id, origin, version, score, signals, reasons``), its verdict (``status``,
        ``decided_by``, ``decided_at``, ``review_id``), the prior decision and requeue check
        (``prior_decision, prior_reviewer, prior_review_id, prior_dice, requeue_dice, requeued``; see
        ``requeue.requeue_note``) and double reading (``double_read, readings, reading_state``).

    Raises:
        ValueError: ``status`` is not one of :data:`QUEUE_STATUSES`.
    """
    if status not in QUEUE_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(QUEUE_STATUSES)}")
    with ws.catalog.session():  # one connection for the upkeep's quick checks and the listing
        upkeep(ws)
        return ws.catalog.review_queue(
            classes=classes,
            sources=sources,
            reasons=reasons,
            status=status,
            reviewer=reviewer,
            reader=reader,
            limit=limit,
            held_back=None if include_unlearnt else learnt_classes(ws).held_back,
        )


def learnt_notice(
    ws: Workspace, *, include_unlearnt: bool = False, include_decided: bool = False
) -> list[str]:
    """The queue's lines about what its models learnt (``workbench.review.learnt``).

    Args:
        ws: the workspace.
        include_unlearnt: the held-back items are listed anyway (the lines say "shown anyway").
        include_decided: count every item of a held-back class, not only open ones.

    Returns:
        ``"<class>: the model never learnt this class (N items held back; ...)"`` once per class with items,
        and one line per model whose training record is unknown; empty when every model learnt its classes.
    """
    known = learnt_classes(ws)
    counts = ws.catalog.held_back_counts(known.held_back, include_decided=include_decided)
    return known.lines(counts, shown=include_unlearnt)


def item_label_set(ws: Workspace, scan_id: str, class_name: str) -> str:
    """The label set a decision on one scan x class judges when none is named (the CLI's ``review accept
    SCAN CLASS``): the label set of the scan x class's newest queue item, else its current label set.

    Args:
        ws: the workspace.
        scan_id / class_name: the scan x class.

    Returns:
        The label set id.

    Raises:
        HarmonizeError: unknown scan or class, or no label set of the scan knows the class.
    """
    scan_row(ws, scan_id)
    class_name = check_class(ws, class_name)
    q = queue(ws, classes=[class_name], status="all", include_unlearnt=True)  # held back or not
    q = q[(q["scan_id"] == scan_id) & q["newest"].astype(bool)]
    if not q.empty:
        return str(q["label_set_id"].iloc[0])
    current = ws.catalog.current_label_set(scan_id, class_name)
    if current is None:
        raise HarmonizeError(ws.catalog.path, f"no label set of {scan_id} knows {class_name}")
    return current


def queue_reasons(ws: Workspace) -> list[str]:
    """The reasons the queue can be filtered by.

    Args:
        ws: the workspace.

    Returns:
        Every distinct reason in the uncertainty table, sorted.
    """
    return ws.catalog.queue_reasons()


#: Orders of :func:`rank`: ``score`` (how likely an item is wrong: the review queue) or ``gain`` (what a
#: review is expected to add to the training set's labels: active-learning rounds, :func:`expected_gain`).
RANK_ORDERS = ("score", "gain")


def expected_gain(score: float, class_dice: float | None) -> float:
    """What reviewing one item is expected to add to its label's Dice against the truth (0..1).

    A correction lifts the label from its Dice to 1, so the gain is ``1 - E[Dice]``. An item's expected
    Dice is its class's held-out Dice ``D`` (what the model achieves on the class where the truth is
    known), lowered by the item's own signals: an item whose score says it is surely wrong (score >= 1)
    is expected at half of ``D``. So ``gain = 1 - D * (1 - min(score, 1) / 2)``: a class the model
    fails at everywhere (``D`` near 0) gains about 1 per item even where no signal fires (a tumour it never
    draws), a well-learnt class only where a signal says so. Without a measured ``D`` (a run outside the
    rounds) ``D`` counts as 1 and the order is the score's.

    Args:
        score: the item's queue score (``workbench.pseudolabel.scoring.assess``; >= 0).
        class_dice: the held-out mean Dice of the item's class for the model that made it (0..1), or None.

    Returns:
        The expected gain in Dice, in [0, 1].
    """
    d = 1.0 if class_dice is None else min(1.0, max(0.0, float(class_dice)))
    return 1.0 - d * (1.0 - min(1.0, max(0.0, float(score))) / 2.0)


def held_out_class_dice(ws: Workspace) -> dict[str, dict[str, float]]:
    """Per pseudo-label run of a recorded round: class -> the held-out mean Dice that round measured for
    its model (``workbench.learning.rounds``: the round evaluates, then pseudo-labels with the same model).

    Args:
        ws: the workspace.

    Returns:
        ``{pseudolabel_run_id: {class_name: dice}}``; rounds that were not evaluated and classes without a
        Dice are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for r in ws.catalog.rounds().to_dict("records"):
        metrics = json.loads(r["metrics"]) if isinstance(r["metrics"], str) else (r["metrics"] or {})
        by_class: Mapping[str, Mapping[str, object]] = metrics.get("by_class") or {}
        dice = {
            name: float(m["dice"])  # type: ignore[arg-type]
            for name, m in by_class.items()
            if isinstance(m, Mapping) and m.get("dice") is not None
        }
        if r["pseudolabel_run_id"] and dice:
            out[str(r["pseudolabel_run_id"])] = dice
    return out


def rank(
    ws: Workspace,
    run_id: str | None = None,
    *,
    long_tail_boost: float = DEFAULT_LONG_TAIL_BOOST,
    limit: int | None = None,
    include_decided: bool = False,
    include_unlearnt: bool = False,
    reader: str | None = None,
    order: str = "score",
) -> pd.DataFrame:
    """The review queue: uncertainty items scored from their stored signals, highest first.

    Args:
        ws: the workspace.
        run_id: only items of this pseudo-label run (default: every run).
        long_tail_boost: see ``workbench.pseudolabel.scoring.assess``.
        limit: at most this many items.
        include_decided: every item, decided or not (for audits); by default only open items, as
            :func:`queue` lists them as ``pending`` (upkept first the same way).
        include_unlearnt: also score items of classes the run's model never learnt (held back by default).
        reader: this reviewer's blind queue: items the reader already read are left out.
        order: one of :data:`RANK_ORDERS`: ``score`` (default) or ``gain`` (:func:`expected_gain`, with
            the held-out Dice of the round that made each item's run: :func:`held_out_class_dice`).

    Returns:
        DataFrame with ``scan_id, class_name, run_id, label_set_id, score, gain, reasons`` (list of str),
        ``summary`` (``"kidney_left: volume 3.1 sd above the catalog mean; 2 components"``) and ``signals``
        (dict), sorted by ``order`` (then scan, class).

    Raises:
        ValueError: ``order`` is not one of :data:`RANK_ORDERS`.
    """
    if order not in RANK_ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(RANK_ORDERS)}")
    with ws.catalog.session():
        upkeep(ws)
        held_back = None if include_unlearnt else learnt_classes(ws).held_back
        df = ws.catalog.ranking_items(
            run_id, include_decided=include_decided, held_back=held_back, reader=reader
        )
        class_dice = held_out_class_dice(ws) if order == "gain" else {}
    rows = score_items(df.to_dict("records"), ws.catalog.annotated_counts(), long_tail_boost)
    for r in rows:
        reasons = r["reasons"]
        r["summary"] = r["class_name"] + (": " + "; ".join(reasons) if reasons else ": no specific finding")
        r["gain"] = expected_gain(r["score"], class_dice.get(str(r["run_id"]), {}).get(r["class_name"]))
    cols = ["scan_id", "class_name", "run_id", "label_set_id", "score", "gain", "reasons", "summary"]
    cols.append("signals")
    out = pd.DataFrame(rows, columns=cols)
    keys = ["score"] if order == "score" else ["gain", "score"]  # ties of gain: the likelier error first
    out = out.sort_values(
        [*keys, "scan_id", "class_name"], ascending=[False] * len(keys) + [True, True], kind="stable"
    )
    out = out.reset_index(drop=True)
    return out.head(limit) if limit is not None else out


def format_queue(df: pd.DataFrame, top: int) -> list[str]:
    """Printable lines of a ranked queue.

    Args:
        df: :func:`rank`'s output.
        top: at most this many lines.

    Returns:
        One line per item: rank, score, scan and the item's summary (one line saying so when empty).
    """
    lines = []
    for i, r in enumerate(df.head(top).to_dict("records"), start=1):
        lines.append(f"{i:4d}  {r['score']:.3f}  {r['scan_id']}  {r['summary']}")
    return lines or ["the queue is empty (no undecided uncertainty items)"]
