"""Per-slice PNG masks on a DICOM series: the CHAOS CT ground-truth layout.

CHAOS CT ships each case as ``DICOM_anon/i0000,0000b.dcm, i0001,0000b.dcm, ...`` and its liver ground
truth as ``Ground/liver_GT_000.png, liver_GT_001.png, ...`` (8-bit, liver 255, background 0), one PNG per
DICOM file. The PNG names carry no slice reference, so the convention decides everything:

* **Which PNG belongs to which slice.** PNG number ``i`` (the i-th PNG in natural name order) belongs to
  the i-th DICOM file in natural *file name* order: not to the i-th slice sorted by position, and
  ``InstanceNumber`` is not consulted. This is what the challenge's own evaluation code does
  (github.com/emrekavur/CHAOS-evaluation, ``Python/CHAOSmetrics.py``: both folders are globbed and sorted
  by name, and a comment there says the slice order is set by the image names, not by the DICOM position
  tags). A third-party CHAOS adapter reports that in the real CT series the file index runs opposite to
  the slice position (z falls as the index rises) and that on the real data name pairing gives liver
  means of ~100-145 HU where position pairing gives nonsense, i.e. pairing PNG i with the i-th slice of
  a position-sorted volume flips masks head-to-foot. The real CHAOS files were not available here, so
  the decision rests on the official code; the fixture series used in the tests (file names ascending,
  z descending) has the same shape of problem. Because ``read_dicom_series`` sorts slices by position,
  it records for every slice ``k`` the name rank of its file in ``meta['filename_rank']``; this reader
  puts PNG ``i`` at the slice ``k`` whose file has rank ``i``. A reference volume without that record
  (e.g. a NIfTI) is refused rather than guessed.
* **Rows and columns.** A PNG is ``[row, column]`` exactly like the DICOM ``pixel_array`` it was drawn on:
  same height (Rows) and width (Columns), no flip or transpose (the official evaluation loads both
  row-major and never flips; the adapter's HU check above also pairs them unflipped).
  ``Volume.array`` of a DICOM series is ``[column, row, slice]``, so ``label.array[:, :, k] == png.T``:
  PNG row r / column c is DICOM row r / column c of the same file.

Label values are kept as drawn (CHAOS CT: 255 = liver); mapping them to classes is the source protocol's
job (``harmonize/protocols/sources``, layout ``dicom_png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harmonize.errors import HarmonizeError
from harmonize.readers._arrays import finish_array
from harmonize.readers._files import require_file, require_folder
from harmonize.readers.dicom import natural_key
from harmonize.volume import Volume


def png_files(folder: str | Path) -> list[Path]:
    """The ``*.png`` files of ``folder`` in natural name order (``liver_GT_2`` before ``liver_GT_10``)."""
    return sorted(
        (p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() == ".png"),
        key=lambda p: natural_key(p.name),
    )


def read_png_stack(folder: str | Path, *, reference: Volume) -> Volume:
    """Read one PNG mask per DICOM slice into a label Volume on the reference series' grid.

    Args:
        folder: the folder of PNGs (e.g. CHAOS ``Ground/``), one per DICOM file of the series.
        reference: the series read by ``read_dicom_series`` (its ``meta['filename_rank']`` pairs PNG i
            with the slice whose file is i-th by name; see the module docstring).

    Returns:
        Label Volume: (columns, rows, slices) integer array with the PNG values (uint8 for 8-bit PNGs),
        ``array[:, :, k] == png_of_slice_k.T``; the reference's affine; meta ``{'format': 'png_stack',
        'dtype', 'slice_count', 'series_uid_sha1'}`` (the last copied from the reference when present).

    Raises:
        HarmonizeError: missing folder, no PNGs, PNG count != slice count, a PNG whose height x width is
            not the series' Rows x Columns, a colour PNG, an unreadable PNG, a reference without
            ``filename_rank``.
    """
    folder = require_folder(folder)
    files = png_files(folder)
    if not files:
        raise HarmonizeError(folder, "no .png files in the folder")
    cols, rows, slices = reference.shape
    if len(files) != slices:
        raise HarmonizeError(
            folder, f"{len(files)} PNG masks but the reference series has {slices} slices (one PNG per slice)"
        )
    slice_of_rank = _slice_of_rank(folder, reference)

    first = _read_png(files[0])
    label = np.zeros((slices, rows, cols), dtype=first.dtype)
    for rank, file in enumerate(files):
        pixels = first if rank == 0 else _read_png(file)
        if pixels.shape != (rows, cols):
            raise HarmonizeError(
                file,
                f"PNG is {pixels.shape[0]} rows x {pixels.shape[1]} columns, the series' slices are "
                f"{rows} x {cols}",
            )
        label[slice_of_rank[rank]] = pixels
    array = finish_array(label.transpose(2, 1, 0), "label", folder)
    meta: dict[str, Any] = {"format": "png_stack", "dtype": str(array.dtype), "slice_count": slices}
    if "series_uid_sha1" in reference.meta:
        meta["series_uid_sha1"] = reference.meta["series_uid_sha1"]
    return Volume(array, reference.affine.copy(), meta)


def _slice_of_rank(folder: Path, reference: Volume) -> list[int]:
    """Inverse of the reference's ``filename_rank``: the slice index k of the file with name rank i."""
    ranks = reference.meta.get("filename_rank")
    slices = reference.shape[2]
    if ranks is None or sorted(int(r) for r in ranks) != list(range(slices)):
        raise HarmonizeError(
            folder,
            "the reference volume has no valid meta['filename_rank'] (read it with read_dicom_series): "
            "PNG masks pair with DICOM files by file name order",
        )
    slice_of_rank = [0] * slices
    for k, rank in enumerate(ranks):
        slice_of_rank[int(rank)] = k
    return slice_of_rank


def _read_png(file: Path) -> np.ndarray:
    """(rows, columns) values of a grey or palette PNG; a colour PNG must have equal channels."""
    require_file(file)
    try:
        with Image.open(file) as image:
            pixels = np.asarray(image)
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError for damaged files
        raise HarmonizeError(file, f"not a readable PNG ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim == 3:
        colour = pixels[..., : min(3, pixels.shape[2])]
        if not (colour == colour[..., :1]).all():
            raise HarmonizeError(file, "colour PNG with differing channels; expected a grey label mask")
        pixels = pixels[..., 0]
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    return pixels
