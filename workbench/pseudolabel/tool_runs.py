"""A segmentation tool's outputs as pseudo-labels: the tool's ``run`` row and its plausibility signals.

A protocol with ``default_origin = "pseudo"`` (``harmonize.protocols``; the TotalSegmentator v1 and v2
tool outputs) describes a tool's model predictions. An ingest of such a source writes each case's labels
as a ``pseudo`` label set whose ``run_id`` is the tool's run (:func:`tool_run_id`: one ``run`` row of
kind ``tool`` per protocol version, naming the tool and its version), never as ``original``: they are no
ground truth for ``evaluate`` and not annotated in the statistics. So that a reviewer can accept, reject
or correct them like the workbench's own pseudo-labels, every class the tool labels gets an
``uncertainty`` row (:func:`tool_output_rows`) with the signals that need no probabilities (volume,
component count, side of the midline, overlap, tumour outside its organ, presence where the class is
expected), computed and scored by ``workbench.pseudolabel.uncertainty`` and ``scoring`` exactly as for
the workbench's runs; entropy and test-time-augmentation disagreement stay None (the tool gives no
probabilities). What the rows need from the catalog is read once per ingest (:func:`tool_context`).

Example:
    >>> proto = get_protocol("totalsegmentator_v2")  # doctest: +SKIP
    >>> tool_run_id(proto)  # doctest: +SKIP
    'tool-totalsegmentator_v2-p1'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harmonize.harmonizer import ANNOTATED_PRESENT, NOT_ANNOTATED, HarmonizedCase
from harmonize.laterality import estimate_midline_x
from harmonize.masks import CroppedMask
from harmonize.protocols import Protocol
from harmonize.volume import Volume
from storage.workspace import Workspace
from workbench.pseudolabel.uncertainty import (
    ReferenceStats,
    ScanContext,
    reference_stats,
    scan_signals,
    uncertainty_rows,
)

#: The ``run.kind`` of a tool's outputs.
TOOL_RUN_KIND = "tool"


def ingest_origin(protocol: Protocol) -> str:
    """The origin of the label sets an ingest of ``protocol`` writes: ``pseudo`` for a tool's output,
    else ``original``.

    Args:
        protocol: the source's protocol.

    Returns:
        ``original`` or ``pseudo``.
    """
    return protocol.default_origin


def tool_run_id(protocol: Protocol) -> str | None:
    """The id of the ``run`` row that a tool's outputs belong to: ``tool-<source>-p<protocol version>``
    (stable, so a re-ingest finds its run); None for expert labels.

    Args:
        protocol: the source's protocol.

    Returns:
        The run id, or None when ``protocol`` is not a tool's output.
    """
    if not protocol.is_tool_output:
        return None
    return f"tool-{protocol.id}-p{protocol.protocol_version}"


def tool_run_config(protocol: Protocol) -> dict[str, Any]:
    """What the tool run is, as stored in ``run.config``: ``tool`` (name and version), ``source``,
    ``protocol_version``, ``reference``.

    Args:
        protocol: a tool output's protocol.

    Returns:
        The config dict.
    """
    return {
        "tool": protocol.tool,
        "source": protocol.id,
        "protocol_version": protocol.protocol_version,
        "reference": protocol.reference,
    }


def record_tool_run(ws: Workspace, protocol: Protocol) -> str:
    """Make sure the tool's ``run`` row exists (written once; later calls change nothing).

    Args:
        ws: the workspace.
        protocol: a tool output's protocol.

    Returns:
        The run id.

    Raises:
        ValueError: ``protocol`` describes expert labels, not a tool's output.
    """
    run_id = tool_run_id(protocol)
    if run_id is None:
        raise ValueError(f"source {protocol.id} holds expert labels (default_origin original), not a tool's")
    ws.catalog.add_tool_run(run_id, tool_run_config(protocol))
    return run_id


def case_masks(hc: HarmonizedCase) -> dict[str, CroppedMask]:
    """Every class the tool labels in one case: its mask, empty for a class it found absent.

    Args:
        hc: the harmonized case.

    Returns:
        Class name -> :class:`CroppedMask` on the case's grid, for every class that is not
        ``not_annotated``.
    """
    out: dict[str, CroppedMask] = {}
    for name, state in hc.coverage.items():
        if state == NOT_ANNOTATED:
            continue
        out[name] = hc.masks[name] if state == ANNOTATED_PRESENT else CroppedMask.empty(hc.shape)
    return out


@dataclass(frozen=True)
class ToolContext:
    """What every case of one ingest of a tool's outputs shares (picklable: it travels to ingest workers).

    Args:
        run_id: the tool's ``run`` row (written by :func:`tool_context`).
        reference: the reference ranges of the catalog's expert labels (``reference_stats``).
        n_annotated: class -> annotated scans (``Catalog.annotated_counts``), for the long-tail boost.
    """

    run_id: str
    reference: ReferenceStats
    n_annotated: dict[str, int]


def tool_context(ws: Workspace, protocol: Protocol) -> ToolContext | None:
    """Read once per ingest what the uncertainty rows of a tool's outputs need, and make sure the tool's
    ``run`` row exists; None for a source of expert labels.

    A tool's outputs never join the expert labels, so the reference ranges and counts read at the start
    of the ingest hold for all of its cases.

    Args:
        ws: the workspace.
        protocol: the source's protocol.

    Returns:
        The :class:`ToolContext`, or None.
    """
    if not protocol.is_tool_output:
        return None
    return ToolContext(record_tool_run(ws, protocol), reference_stats(ws), ws.catalog.annotated_counts())


def tool_output_rows(
    context: ToolContext | None,
    scan_id: str,
    label_set_id: str,
    hc: HarmonizedCase,
    image: Volume,
) -> list[dict[str, Any]]:
    """The uncertainty rows of one case of a tool's output; [] without a context (expert labels). Pure:
    the rows are meant for the label set's own transaction (``Catalog.add_label_set(...,
    uncertainty=rows)``), and the function runs in ingest workers.

    Args:
        context: :func:`tool_context` of the ingest (None: a source of expert labels).
        scan_id / label_set_id: the item's keys (the label set about to be written).
        hc: the harmonized case.
        image: the CT (HU), for the body midline when the case split no merged pair.

    Returns:
        Dicts ``scan_id, class_name, run_id, label_set_id, score, signals, reasons`` (one per class the
        tool labels).
    """
    if context is None:
        return []
    midline = hc.midline_x_mm if hc.midline_x_mm is not None else estimate_midline_x(image)
    ctx = ScanContext(affine=hc.affine, shape=hc.shape, midline_x_mm=float(midline))
    signals, _ = scan_signals(case_masks(hc), ctx, context.reference)
    return uncertainty_rows(scan_id, context.run_id, label_set_id, signals, context.n_annotated)
