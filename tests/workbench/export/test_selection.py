"""Every export on the assembly rule: accepted pseudo-labels fill partial labels by default (basis in the
manifest), a rejected one never ships, ``--pseudo all|none``, held-out scans left out unless asked, and
the partial label maps voxel for voxel (ignore only near an unknown class, background elsewhere).
(``mixed_ws`` and its constants are in this folder's conftest.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main
from workbench.export import export_abdomenatlas, export_monai, export_nnunet, label_values

MIXED_CLASSES = ["spleen", "kidney_right", "kidney_left", "liver"]
#: The conftest's ``MixedWorkspace`` (ws, held_out, pseudo, accepted, rejected, classes, organs, body,
#: spacing_mm); conftest modules are not importable.
MixedWorkspace = Any

EXPORTS = {
    "abdomenatlas": lambda ws, out, **kw: export_abdomenatlas(
        ws, out, classes=MIXED_CLASSES, progress=False, **kw
    ),
    "nnunet": lambda ws, out, **kw: export_nnunet(ws, out, classes=MIXED_CLASSES, progress=False, **kw),
    "monai": lambda ws, out, **kw: export_monai(
        ws, out, classes=MIXED_CLASSES, n_folds=2, progress=False, **kw
    ),
}


def _cases(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["scan_id"]: c for c in manifest["cases"]}


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_accepted_ships_with_its_basis_rejected_never_and_held_out_stays_out(
    fmt: str, mixed_ws: MixedWorkspace, tmp_path: Path
) -> None:
    m = mixed_ws
    manifest = EXPORTS[fmt](m.ws, tmp_path / fmt)
    cases = _cases(manifest)
    # 6 scans, one held out per source: 4 exported, the manifest says 2 were left out
    assert len(cases) == 4 and not set(cases) & m.held_out
    assert manifest["held_out"] == {"left_out": True, "scans": 2}
    scan = m.accepted[0]
    assert cases[scan]["bases"] == {
        "kidney_right": "original",
        "kidney_left": "original",
        "liver": "accepted",
    }
    assert cases[scan]["label_sets"]["liver"] == m.pseudo[scan]
    rejected_scan, _ = m.rejected
    assert cases[rejected_scan]["bases"] == {"kidney_right": "original", "kidney_left": "original"}
    for scan_id, case in cases.items():  # plain pseudo-labels are not used by default
        assert "pseudo" not in case["bases"].values()
        if scan_id.startswith("lits:"):
            assert case["bases"] == {"liver": "original"}
    if fmt == "abdomenatlas":
        liver = nib.load(tmp_path / fmt / cases[scan]["case"] / "segmentations" / "liver.nii.gz")
        np.testing.assert_array_equal(np.asarray(liver.dataobj).astype(bool), m.organs["liver"])
        assert not (tmp_path / fmt / cases[rejected_scan]["case"] / "segmentations" / "liver.nii.gz").exists()


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_pseudo_all_adds_plain_ones_but_never_the_rejected_and_none_adds_none(
    fmt: str, mixed_ws: MixedWorkspace, tmp_path: Path
) -> None:
    m = mixed_ws
    every = _cases(EXPORTS[fmt](m.ws, tmp_path / "all", pseudo="all"))
    rejected_scan, _ = m.rejected
    assert every[rejected_scan]["bases"] == {
        "spleen": "pseudo",
        "kidney_right": "original",
        "kidney_left": "original",
    }
    assert every[m.accepted[0]]["bases"]["liver"] == "accepted"
    lits = [c for s, c in every.items() if s.startswith("lits:")]
    assert len(lits) == 2
    for c in lits:
        assert c["bases"] == {
            "spleen": "pseudo",
            "kidney_right": "pseudo",
            "kidney_left": "pseudo",
            "liver": "original",
        }
    none = _cases(EXPORTS[fmt](m.ws, tmp_path / "none", pseudo="none"))
    assert {b for c in none.values() for b in c["bases"].values()} == {"original"}


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_include_held_out_keeps_them_and_says_so(fmt: str, mixed_ws: MixedWorkspace, tmp_path: Path) -> None:
    manifest = EXPORTS[fmt](mixed_ws.ws, tmp_path / fmt, include_held_out=True)
    assert len(manifest["cases"]) == 6 and mixed_ws.held_out <= set(_cases(manifest))
    assert manifest["held_out"] == {"left_out": False, "scans": 0}


def _distance_mm(box: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of every voxel centre to an axis-aligned box mask, by the box's bounds."""
    idx = np.argwhere(box)
    lo, hi = idx.min(0), idx.max(0)
    grids = np.meshgrid(*[np.arange(n) for n in box.shape], indexing="ij")
    gaps = [np.maximum(np.maximum(lo[a] - g, 0), g - hi[a]) * spacing for a, g in enumerate(grids)]
    return np.sqrt(sum(g.astype(float) ** 2 for g in gaps))


def _expected_map(
    m: MixedWorkspace, known: tuple[str, ...], hinted: tuple[str, ...], body_for: bool, margin: float
) -> np.ndarray:
    """The label map the rule gives, computed from the boxes: ignore within ``margin`` mm of each hinted
    class (and the body when an unknown class has no hint), then the known classes painted over it."""
    values = label_values(m.classes)
    out = np.zeros(m.body.shape, np.uint8)
    region = m.body.copy() if body_for else np.zeros(m.body.shape, bool)
    for name in hinted:
        region |= _distance_mm(m.organs[name], m.spacing_mm) <= margin
    out[region] = values["ignore"]
    for name in known:
        out[m.organs[name]] = values[name]
    return out


@pytest.mark.parametrize("margin", [10.0, 4.0])
def test_partial_label_maps_voxel_for_voxel(mixed_ws: MixedWorkspace, tmp_path: Path, margin: float) -> None:
    m = mixed_ws
    out = tmp_path / "d"
    manifest = export_nnunet(m.ws, out, classes=MIXED_CLASSES, ignore_margin_mm=margin, progress=False)
    kidneys = ("kidney_right", "kidney_left")
    expected = {
        # kidneys known, liver accepted, spleen unknown with a plain pseudo-label: ignore near the spleen
        m.accepted[0]: _expected_map(m, (*kidneys, "liver"), ("spleen",), False, margin),
        # liver rejected: it may be anywhere in the body; the spleen near its pseudo-label
        m.rejected[0]: _expected_map(m, kidneys, ("spleen",), True, margin),
    }
    for scan in (s for s in _cases(manifest) if s.startswith("lits:")):
        expected[scan] = _expected_map(m, ("liver",), ("spleen", *kidneys), False, margin)
    total_ignore = total_background = 0
    for scan, case in _cases(manifest).items():
        label = np.asarray(nib.load(out / case["label"]).dataobj)
        np.testing.assert_array_equal(label, expected[scan])
        n_ignore, n_bg = int((label == 5).sum()), int((label == 0).sum())
        assert case["ignore_voxels"] == n_ignore and case["background_voxels"] == n_bg > 0
        assert case["ignore_share"] == pytest.approx(n_ignore / label.size)
        assert case["ignore_classes"].get("liver") == ("body" if scan == m.rejected[0] else None)
        total_ignore, total_background = total_ignore + n_ignore, total_background + n_bg
    ignore = manifest["ignore"]
    assert ignore["ignore_voxels"] == total_ignore and ignore["background_voxels"] == total_background
    assert ignore["voxels"] == 4 * label.size and ignore["margin_mm"] == margin
    assert ignore["ignore_share"] == pytest.approx(total_ignore / (4 * label.size))
    assert ignore["cases_with_ignore"] == 4


def test_manifest_intensities_are_over_annotated_voxels_only(
    mixed_ws: MixedWorkspace, tmp_path: Path
) -> None:
    manifest = export_nnunet(mixed_ws.ws, tmp_path / "d", classes=MIXED_CLASSES, progress=False)
    props = manifest["foreground_intensity_properties_per_channel"]["0"]
    # the CT: kidney_right 60, kidney_left 80, liver 100, spleen 120 HU, body 40, air -1000. Annotated are
    # kidneys and liver; the ignore voxels (body, air, the unknown spleen) would widen both ends
    assert props["min"] == props["percentile_00_5"] == 60
    assert props["max"] == props["percentile_99_5"] == 100
    assert props["median"] in (80.0, 100.0) and 60 < props["mean"] < 100
    known = sum(int(c["foreground_voxels"]) for c in manifest["cases"])
    # kits: 64 + 64 (+ 288 accepted liver on one scan); lits: 288 each
    assert known == 2 * 128 + 288 + 2 * 288


def test_cli_export_pseudo_and_held_out_flags_print_the_ignore_share(
    mixed_ws: MixedWorkspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "n"
    argv = ["--workspace", str(mixed_ws.ws.root), "export", "nnunet", str(out), "--no-progress"]
    for name in MIXED_CLASSES:
        argv += ["--class", name]
    assert main([*argv, "--pseudo", "all", "--include-held-out"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["pseudo"] == "all" and len(manifest["cases"]) == 6
    assert "held-out scans kept" in printed and "exported 6 cases" in printed
    ig = manifest["ignore"]
    assert f"ignore: {ig['ignore_voxels']} of {ig['voxels']} voxels ({ig['ignore_share']:.1%})" in printed
    with pytest.raises(SystemExit):  # argparse: one line naming the allowed choices
        main([*argv, "--pseudo", "gold"])
