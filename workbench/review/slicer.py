"""3D Slicer and ITK-SNAP: a case exported for editing, with the colour tables both tools read.

A label map holds one value per voxel: the universal class index (1-based), painted in
:func:`harmonize.taxonomy.paint_order` (organs, then structures inside organs, then tumours), so a liver
tumour stays visible inside the liver. Nesting comes back on import by the rule of
:mod:`workbench.review.nesting`: a tumour, cyst or vessel painted over its organ (touching it) is part of
the organ. Classes that one label map cannot hold that way (two organs that overlap, a tumour reaching
outside its organ) go to further layers, ``labels_layer2.nii.gz``, ``labels_layer3.nii.gz`` ...: each an
ordinary label map on the CT's grid that 3D Slicer (Add data -> LabelMap, or a segmentation) and ITK-SNAP
(Segmentation -> Open) open and edit with the same colour table. ``labels.json`` lists which classes each
layer holds; :func:`workbench.review.corrections.import_correction` reads it when it lies beside the
edited file. An unchanged export imported back gives every class bit for bit (the encoder checks its own
output). The colours are :func:`harmonize.taxonomy.class_color`'s, the same as the app's.

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
from workbench.review.nesting import LABEL_DTYPE, encode_layers
from workbench.review.validation import scan_row
from workbench.training_set import assemble_training_set

#: The file of the first label map layer; layer n > 1 is ``labels_layer<n>.nii.gz``.
FIRST_LAYER = "labels.nii.gz"
#: The export's description: value -> class, layer file -> classes, class -> label set and origin.
MANIFEST = "labels.json"


def layer_file_name(n: int) -> str:
    """The file name of label map layer ``n`` (1-based) of a case export.

    Args:
        n: the layer number.

    Returns:
        ``labels.nii.gz`` for 1, else ``labels_layer<n>.nii.gz``.
    """
    return FIRST_LAYER if n == 1 else f"labels_layer{n}.nii.gz"


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

    Files in ``out_dir`` (created): ``ct.nii.gz`` (the CT on its own grid, in its own voxel order and
    affine: LPS, LAS and RAS scans alike), ``labels.nii.gz`` (uint8 label map of the scan's current labels
    per class, value = universal class index, nested classes painted over their organ) and, only when
    some classes overlap in a way one label map cannot hold, ``labels_layer2.nii.gz`` ... (module
    docstring; older layer files of the folder are removed), ``labels.ctbl`` (3D Slicer color table),
    ``itksnap_labels.txt`` (ITK-SNAP label descriptions) and ``labels.json`` (``values``: value -> class;
    ``layers``: file -> classes; ``label_sets``, ``origins``: class -> its label set and origin).

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
    meta: dict[str, Any] = {"scan_id": scan_id, "values": {}, "layers": {}, "label_sets": {}, "origins": {}}
    masks: dict[str, np.ndarray] = {}
    if entries:
        e = entries[0]
        masks = {n: np.asarray(e.masks[n], bool) for n in e.present}
        meta["label_sets"], meta["origins"] = e.label_sets, e.origins
    layers = encode_layers(masks, image.shape)
    present = paint_order(list(masks))
    meta["values"] = {str(class_by_name(n).index): n for n in present}
    layer_maps = [layer.labels for layer in layers] or [np.zeros(image.shape, LABEL_DTYPE)]
    meta["layers"] = {layer_file_name(i + 1): list(layer.classes) for i, layer in enumerate(layers)}
    meta["layers"].setdefault(FIRST_LAYER, [])
    files = {"ct.nii.gz": out / "ct.nii.gz"}
    files.update({layer_file_name(i + 1): out / layer_file_name(i + 1) for i in range(len(layer_maps))})
    files.update(
        {
            "labels.ctbl": out / "labels.ctbl",
            "itksnap_labels.txt": out / "itksnap_labels.txt",
            MANIFEST: out / MANIFEST,
        }
    )
    with atomic_path(files["ct.nii.gz"]) as tmp:
        save_nifti(ct_array(image.array), image.affine, tmp)
    for i, labels in enumerate(layer_maps):
        with atomic_path(files[layer_file_name(i + 1)]) as tmp:
            save_nifti(labels, image.affine, tmp)
    atomic_write_text(files["labels.ctbl"], slicer_color_table(present))
    atomic_write_text(files["itksnap_labels.txt"], itksnap_label_description(present))
    atomic_write_json(files[MANIFEST], meta)
    for stale in out.glob("labels_layer*.nii.gz"):  # layers of an earlier export, not in the manifest
        if stale.name not in files:
            stale.unlink()
    return files
