"""Damaged cases: every export skips them with one line, lists them in the manifest and writes the rest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harmonize.errors import HarmonizeError
from storage.workspace import Workspace
from workbench import review
from workbench.export import scan_export_name, verify_manifest
from workbench.export.skipped import skip_line, skipped_case

FORMATS = ("abdomenatlas", "monai", "nnunet")
DAMAGED = "kits23:case 1"


def _truncate_mask(ws: Workspace, scan_id: str) -> Path:
    path = ws.masks.path(ws.catalog.latest_original(scan_id)["id"])  # type: ignore[index]
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _delete_ct(ws: Workspace, scan_id: str) -> Path:
    path = Path(review.scan_row(ws, scan_id)["image_path"])
    path.unlink()
    return path


def _damage_ct(ws: Workspace, scan_id: str) -> Path:
    path = Path(review.scan_row(ws, scan_id)["image_path"])
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _unreadable_ct(ws: Workspace, scan_id: str) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    path = Path(review.scan_row(ws, scan_id)["image_path"])
    path.chmod(0)
    return path


DAMAGES: dict[str, tuple[Callable[[Workspace, str], Path], str]] = {
    "truncated mask": (_truncate_mask, "truncated or corrupt"),
    "deleted CT": (_delete_ct, "no longer there"),
    "truncated CT": (_damage_ct, ""),
    "unreadable CT": (_unreadable_ct, "ermission denied"),
}


def _written(out: Path, fmt: str) -> list[str]:
    if fmt == "abdomenatlas":
        return sorted(p.name for p in out.iterdir() if p.is_dir())
    return sorted(p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir())


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_damaged_case_is_skipped_and_the_rest_written(
    fmt: str, damage: str, hostile_ws: Workspace, exporters: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / fmt
    first = exporters[fmt](hostile_ws, out)  # an earlier, complete export into the same folder
    assert len(first["cases"]) == 3 and first["skipped"] == []
    damage_fn, problem = DAMAGES[damage]
    path = damage_fn(hostile_ws, DAMAGED)
    manifest = exporters[fmt](hostile_ws, out)
    (skipped,) = manifest["skipped"]
    assert skipped["scan_id"] == DAMAGED and skipped["case"] == scan_export_name(DAMAGED)
    assert skipped["file"] == str(path) and problem in skipped["problem"] and skipped["problem"]
    assert len(manifest["cases"]) == 2 and DAMAGED not in {c["scan_id"] for c in manifest["cases"]}
    assert json.loads((out / "manifest.json").read_text())["skipped"] == [skipped]
    # the folder matches its manifest: the old files of the skipped case went, nothing half-written
    assert _written(out, fmt) == sorted(c["case"] for c in manifest["cases"])
    assert not list(out.rglob(".partial-*"))
    if fmt != "abdomenatlas":
        assert verify_manifest(out) == []


def test_the_skip_line_names_the_scan_the_file_and_the_problem() -> None:
    entry = skipped_case(DAMAGED, "kits23_case_1-x", HarmonizeError("/ws/masks/ls-1.masks", "truncated"))
    assert skip_line(entry) == "skipped kits23:case 1 (kits23_case_1-x): /ws/masks/ls-1.masks: truncated"
    denied = skipped_case(DAMAGED, "c", PermissionError(13, "Permission denied", "/data/ct.nii.gz"))
    assert denied["file"] == "/data/ct.nii.gz" and denied["problem"] == "Permission denied"
