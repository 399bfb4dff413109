"""The lines an export prints: what it left out, where its labels came from, how much is ``ignore``.

Example:
    >>> export_lines({"held_out": {"left_out": True, "scans": 2}, "cases": []})
    ['held-out scans left out: 2 (pass --include-held-out to keep them)', 'labels by basis: none']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any


def basis_counts(manifest: Mapping[str, Any]) -> dict[str, int]:
    """Scan x class items of an export per basis (``revised``, ``original``, ``accepted``, ``pseudo``).

    Args:
        manifest: an export's manifest.

    Returns:
        basis -> items, in the order of the assembly rule's priority (bases without items left out).
    """
    counts = Counter(b for c in manifest["cases"] for b in c.get("bases", {}).values())
    return {b: counts[b] for b in ("revised", "original", "accepted", "pseudo") if counts[b]}


def export_lines(manifest: Mapping[str, Any]) -> list[str]:
    """The human summary of an export (the CLI prints it; the manifest holds the same numbers).

    Args:
        manifest: an export's manifest.

    Returns:
        Lines: held-out scans, items per basis, and for label-map exports the ignore voxels of every case
        that has any and overall, and the annotated-voxel CT statistics.
    """
    held = manifest.get("held_out", {})
    lines = []
    if held.get("left_out"):
        n = held.get("scans", 0)
        lines.append(f"held-out scans left out: {n} (pass --include-held-out to keep them)")
    else:
        lines.append("held-out scans kept (--include-held-out): do not evaluate on them")
    counts = basis_counts(manifest)
    lines.append("labels by basis: " + (", ".join(f"{b} {n}" for b, n in counts.items()) or "none"))
    ignore = manifest.get("ignore")
    if ignore is None:
        return lines
    for c in manifest["cases"]:
        if c["ignore_voxels"]:
            lines.append(
                f"  {c['case']}: ignore {c['ignore_voxels']} of {c['voxels']} voxels "
                f"({c['ignore_share']:.1%}), background {c['background_voxels']}"
            )
    lines.append(
        f"ignore: {ignore['ignore_voxels']} of {ignore['voxels']} voxels ({ignore['ignore_share']:.1%}) in "
        f"{ignore['cases_with_ignore']} case(s); background {ignore['background_voxels']} "
        f"({ignore['background_share']:.1%})"
    )
    for key, what in (
        (
            "foreground_intensity_properties_per_channel",
            "CT over annotated voxels (use these, docs/exports.md)",
        ),
        ("nnunet_default_intensity_properties", "CT over label > 0 incl. ignore (nnU-Net's own)"),
    ):
        props = manifest.get(key, {}).get("0")
        if props:
            lines.append(f"{what}: {_percentiles(props)}")
    return lines


def _percentiles(props: Mapping[str, float]) -> str:
    """``0.5/50/99.5th percentile a/b/c HU, mean m, std s`` of nnU-Net's intensity properties."""
    return (
        f"0.5/50/99.5th percentile {props['percentile_00_5']:.0f}/{props['median']:.0f}/"
        f"{props['percentile_99_5']:.0f} HU, mean {props['mean']:.1f}, std {props['std']:.1f}"
    )
