"""3D Slicer and ITK-SNAP: a case exported for editing, with the colour tables both tools read.

The label map holds one value per voxel: the universal class index (1-based) of the class painted last
there, in :func:`harmonize.taxonomy.paint_order` (organs, then structures inside organs, then tumours), so
a liver tumour stays visible inside the liver. The colours are :func:`harmonize.taxonomy.class_color`'s,
the same as the app's. The edited file comes back through
:func:`workbench.review.corrections.import_correction`.

Example:
    >>> files = export_case_for_slicer(ws, "kits23:00001", ws.slicer / "kits23_00001")  # doctest: +SKIP
    >>> sorted(files)  # doctest: +SKIP
    ['ct.nii.gz', 'itksnap_labels.txt', 'labels.ctbl', 'labels.json', 'labels.nii.gz']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.readers import read_volume
from harmonize.taxonomy import class_by_name, class_color, paint_order
from storage.files import atomic_path, atomic_write_json, atomic_write_text
from storage.workspace import Workspace
from workbench.export import ct_array, save_nifti, scan_export_name
from workbench.review.validation import scan_row
from workbench.training_set import assemble_training_set


def slicer_color_table(names: Sequence[str]) -> str:
    """A 3D Slicer color table (``.ctbl``: ``value name R G B A``) for universal class indices.

    Args:
        names: the classes to list.

    Returns:
        The file's text (background first).
    """
    lines = [
        "# 3D Slicer color table: value name R G B A (value = universal class index)",
        "0 background 0 0 0 0",
    ]
    for n in names:
        r, g, b = class_color(n)
        lines.append(f"{class_by_name(n).index} {n} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def itksnap_label_description(names: Sequence[str]) -> str:
    """An ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``) for the same values.

    Args:
        names: the classes to list.

    Returns:
        The file's text ("Clear Label" first).
    """
    lines = ['    0     0    0    0        0  0  0    "Clear Label"']
    for n in names:
        r, g, b = class_color(n)
        lines.append(f'{class_by_name(n).index:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{n}"')
    return "\n".join(lines) + "\n"


def slicer_case_dir(ws: Workspace, scan_id: str) -> Path:
    """The folder a scan is exported to for editing: ``<ws>/slicer/<name>``, the name being the scan's
    name in every export (:func:`workbench.export.scan_export_name`: unique and stable per scan, so
    ``case 1`` and ``case_1`` get two folders); ``labels.json`` in it names the scan.

    Args:
        ws: the workspace.
        scan_id: catalog scan id.

    Returns:
        The folder (whether or not it exists).
    """
    return ws.slicer / scan_export_name(scan_id)


def export_case_for_slicer(ws: Workspace, scan_id: str, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write one scan for editing in 3D Slicer or ITK-SNAP (each file atomically).

    Files in ``out_dir`` (created): ``ct.nii.gz`` (the CT on its own grid), ``labels.nii.gz`` (uint8 label
    map of the scan's current labels per class, value = universal class index, overlaps resolved by
    :func:`harmonize.taxonomy.paint_order`), ``labels.ctbl`` (3D Slicer color table),
    ``itksnap_labels.txt`` (ITK-SNAP label descriptions) and ``labels.json`` (value -> class, and each
    class's label set and origin).

    Args:
        ws: the workspace.
        scan_id: catalog scan id.
        out_dir: the folder to write (default :func:`slicer_case_dir`).

    Returns:
        name -> path of every file written.

    Raises:
        HarmonizeError: unknown scan, or an unreadable CT.
    """
    scan = scan_row(ws, scan_id)
    image = read_volume(scan["image_path"], kind="image")
    out = slicer_case_dir(ws, scan_id) if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = assemble_training_set(ws, scan_ids=[scan_id])
    labels = np.zeros(image.shape, np.uint8)
    meta: dict[str, Any] = {"scan_id": scan_id, "values": {}, "label_sets": {}, "origins": {}}
    present = paint_order(entries[0].present) if entries else []
    if entries:
        e = entries[0]
        for n in present:
            labels[e.masks[n]] = class_by_name(n).index
        meta["label_sets"], meta["origins"] = e.label_sets, e.origins
    meta["values"] = {str(class_by_name(n).index): n for n in present}
    files = {
        "ct.nii.gz": out / "ct.nii.gz",
        "labels.nii.gz": out / "labels.nii.gz",
        "labels.ctbl": out / "labels.ctbl",
        "itksnap_labels.txt": out / "itksnap_labels.txt",
        "labels.json": out / "labels.json",
    }
    with atomic_path(files["ct.nii.gz"]) as tmp:
        save_nifti(ct_array(image.array), image.affine, tmp)
    with atomic_path(files["labels.nii.gz"]) as tmp:
        save_nifti(labels, image.affine, tmp)
    atomic_write_text(files["labels.ctbl"], slicer_color_table(present))
    atomic_write_text(files["itksnap_labels.txt"], itksnap_label_description(present))
    atomic_write_json(files["labels.json"], meta)
    return files
