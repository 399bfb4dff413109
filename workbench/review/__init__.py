"""Review of labels: decisions, corrections, quick fixes, undo, the ranked queue, 3D Slicer round trips.

Every write keeps history; nothing is overwritten or deleted. A decision is one ``review`` row on one
label set version; a correction is a new ``revised`` label set plus a ``corrected`` review row; an undo is
one more review row (and, for a correction, one more ``revised`` set restoring the earlier state).

Modules:

* :mod:`workbench.review.validation`: reviewer, comment, class and upload-name checks, ``escape``, and the
  scan / label set lookups that refuse unknown ids.
* :mod:`workbench.review.decisions`: ``record_decision``, ``reviews``, ``current_label_set``, ``undo``.
* :mod:`workbench.review.corrections`: ``correct``, the edits ``keep_largest`` /
  ``remove_component`` / ``keep_component`` / ``brush`` / ``fill_hole``, and the import of an edited
  NIfTI (file or upload).
* :mod:`workbench.review.ranking`: the app's filtered ``queue`` (one row per scan x class, blind per
  reader), the CLI's ``rank`` and ``format_queue``, ``item_label_set``.
* :mod:`workbench.review.learnt`: what each run's model learnt; the queue holds back the classes it never
  saw an annotated example of (``learnt_classes``, ``learnt_notice``).
* :mod:`workbench.review.requeue`: the queue never re-serves a decision: a later item of a decided scan x
  class comes back only when its Dice against the decided label is below the threshold.
* :mod:`workbench.review.double_reading`: a share of items read by two blind reviewers, their agreement
  per class, the adjudication list and ``adjudicate``.
* :mod:`workbench.review.slicer`: a case exported for 3D Slicer / ITK-SNAP with their colour tables.

Each write is one short catalog transaction (the catalog retries while another process holds the DuckDB
lock), so two reviewers and a background pseudo-labelling job never lose a decision.

Example:
    >>> rid = record_decision(ws, "kits23:00001", "liver", "ls-abc", "accept", "Dr Ada", "")  # doctest: +SKIP
    >>> undo(ws, rid, "Dr Ada")  # doctest: +SKIP
"""

from workbench.review.corrections import (
    Correction,
    brush,
    correct,
    fill_hole,
    import_correction,
    import_correction_upload,
    keep_component,
    keep_largest,
    label_values_to_mask,
    remove_component,
)
from workbench.review.decisions import (
    ALL_DECISIONS,
    DECISIONS,
    current_label_set,
    record_decision,
    reviews,
    undo,
)
from workbench.review.double_reading import (
    DEFAULT_AGREEMENT_DICE,
    DEFAULT_SHARE,
    adjudicate,
    adjudication_list,
    agreement,
    agreement_line,
    set_share,
)
from workbench.review.learnt import INCLUDE_FLAG, LearntClasses, learnt, learnt_classes
from workbench.review.ranking import (
    QUEUE_STATUSES,
    format_queue,
    item_label_set,
    learnt_notice,
    queue,
    queue_reasons,
    rank,
)
from workbench.review.requeue import DEFAULT_REQUEUE_DICE, check_requeue, requeue_note
from workbench.review.slicer import export_case_for_slicer, itksnap_label_description, slicer_color_table
from workbench.review.validation import (
    MAX_COMMENT_LEN,
    MAX_REVIEWER_LEN,
    WORD_JOINER,
    escape,
    scan_affine,
    scan_row,
    validate_comment,
    validate_reviewer,
)

__all__ = [
    "ALL_DECISIONS",
    "DECISIONS",
    "DEFAULT_AGREEMENT_DICE",
    "DEFAULT_REQUEUE_DICE",
    "DEFAULT_SHARE",
    "INCLUDE_FLAG",
    "MAX_COMMENT_LEN",
    "MAX_REVIEWER_LEN",
    "QUEUE_STATUSES",
    "WORD_JOINER",
    "Correction",
    "LearntClasses",
    "adjudicate",
    "adjudication_list",
    "agreement",
    "agreement_line",
    "brush",
    "check_requeue",
    "correct",
    "current_label_set",
    "escape",
    "export_case_for_slicer",
    "fill_hole",
    "format_queue",
    "import_correction",
    "import_correction_upload",
    "item_label_set",
    "itksnap_label_description",
    "keep_component",
    "keep_largest",
    "label_values_to_mask",
    "learnt",
    "learnt_classes",
    "learnt_notice",
    "queue",
    "queue_reasons",
    "rank",
    "record_decision",
    "remove_component",
    "requeue_note",
    "reviews",
    "scan_affine",
    "scan_row",
    "set_share",
    "slicer_color_table",
    "undo",
    "validate_comment",
    "validate_reviewer",
]
