"""Review actions: decisions, corrections, quick fixes, undo, the queue, the 3D Slicer round trip."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_by_name, class_names
from storage.catalog import LabelSetRecord
from storage.workspace import Workspace
from workbench import review
from workbench.training_set import assemble_training_set

SCAN = "btcv:demo000"
KITS = "kits23:demo000"


@pytest.fixture
def ws(demo_ws: Workspace) -> Workspace:
    return demo_ws


def add_pseudo(ws: Workspace, scan_id: str, masks: dict[str, np.ndarray], run_id: str = "run-1") -> str:
    """A pseudo label set holding ``masks`` (other classes not annotated), as issue 4's jobs write them."""
    shape = tuple(int(s) for s in review.scan_row(ws, scan_id)["shape"])
    version = int(ws.catalog.label_sets(scan_id)["version"].max()) + 1
    ls_id = f"ls-pseudo-{run_id}-{scan_id.replace(':', '-')}-{version}"
    ws.masks.write_label_set(ls_id, masks, shape)  # type: ignore[arg-type]
    cov = {n: "not_annotated" for n in class_names()}
    cov.update({n: "annotated_present" if m.any() else "annotated_absent" for n, m in masks.items()})
    ws.catalog.add_label_set(
        LabelSetRecord(
            id=ls_id, scan_id=scan_id, version=version, origin="pseudo", mask_key=ls_id, run_id=run_id
        ),
        cov,
        [],
    )
    return ls_id


def add_uncertainty(ws: Workspace, rows: list[tuple[str, str, str, str, float, list[str]]]) -> None:
    with ws.catalog.transaction() as con:
        for scan_id, cls, run, ls, score, reasons in rows:
            con.execute(
                "INSERT INTO uncertainty VALUES (?, ?, ?, ?, ?, ?, ?)",
                [scan_id, cls, run, ls, score, json.dumps({"entropy": score}), reasons],
            )


def original_mask(ws: Workspace, scan_id: str, cls: str) -> np.ndarray:
    ls = ws.catalog.latest_original(scan_id)
    assert ls is not None
    return ws.masks.read(ls["mask_key"], cls)


def blob(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", ["Dr Ada Lovelace", "ana.o'neil", "reviewer_2", "Zoë Müller", "a@b-c"])
def test_good_reviewer_names_pass(ws: Workspace, name: str) -> None:
    assert review.validate_reviewer(ws, f"  {name} ") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "<b>x</b>",
        "<script>alert(1)</script>",
        "a/b",
        "..\\x",
        'Bob "x"',
        "Ann\x00",
        "x" * 65,
        "tab\there",
        "&amp;",
    ],
)
def test_bad_reviewer_names_are_refused_and_nothing_is_stored(ws: Workspace, name: str) -> None:
    ls = review.current_label_set(ws, SCAN, "kidney_left")
    assert ls is not None
    with pytest.raises(HarmonizeError, match="reviewer name"):
        review.record_decision(ws, SCAN, "kidney_left", ls, "accept", name)
    assert ws.catalog.counts()["review"] == 0


def test_escape_neutralises_markup() -> None:
    assert review.escape("<b>x</b> & 'y'") == "&lt;b&gt;x&lt;/b&gt; &amp; &#x27;y&#x27;"


# ------------------------------------------------------------------------------------------- decisions


@pytest.mark.parametrize("decision", review.DECISIONS)
def test_record_decision_stores_who_what_and_which_version(ws: Workspace, decision: str) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    rid = review.record_decision(ws, SCAN, "liver", ls, decision, "Dr Ada", "<i>looks fine</i>")
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [rid]).iloc[0]
    assert (row["scan_id"], row["class_name"], row["label_set_id"], row["decision"], row["reviewer"]) == (
        SCAN,
        "liver",
        ls,
        decision,
        "Dr Ada",
    )
    assert row["comment"] == "<i>looks fine</i>"  # stored as typed; displays escape it


@pytest.mark.parametrize(
    ("decision", "cls", "other_scan", "match"),
    [
        ("approve", "liver", False, "decision"),
        ("accept", "not_a_class", False, "unknown universal class"),
        ("accept", "liver", True, "belongs to scan"),
    ],
)
def test_bad_decisions_are_refused(
    ws: Workspace, decision: str, cls: str, other_scan: bool, match: str
) -> None:
    scan = KITS if other_scan else SCAN
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    with pytest.raises(HarmonizeError, match=match):
        review.record_decision(ws, scan, cls, ls, decision, "Dr Ada")
    assert ws.catalog.counts()["review"] == 0


def test_comment_with_control_characters_is_refused(ws: Workspace) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    with pytest.raises(HarmonizeError, match="comment"):
        review.record_decision(ws, SCAN, "liver", ls, "accept", "Dr Ada", "bell\x07")


# ----------------------------------------------------------------------------------------------- queue


def test_queue_ranks_filters_and_drops_decided_items_until_undone(ws: Workspace) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    p1 = add_pseudo(
        ws, SCAN, {"liver": blob(shape, (10, 10, 10), 8), "stomach": blob(shape, (30, 30, 30), 5)}
    )
    kits_shape = tuple(int(s) for s in review.scan_row(ws, KITS)["shape"])
    p2 = add_pseudo(ws, KITS, {"colon": blob(kits_shape, (5, 5, 5), 4)})
    add_uncertainty(
        ws,
        [
            (SCAN, "liver", "run-1", p1, 0.9, ["high_entropy"]),
            (SCAN, "stomach", "run-1", p1, 0.2, ["volume_outlier"]),
            (KITS, "colon", "run-1", p2, 0.5, ["high_entropy", "fragments"]),
        ],
    )
    q = review.queue(ws)
    assert q["score"].tolist() == [0.9, 0.5, 0.2]
    assert q["status"].unique().tolist() == ["pending"]
    assert q.iloc[0][["source_id", "case_id", "origin"]].tolist() == ["btcv", "demo000", "pseudo"]
    assert review.queue(ws, classes=["colon"])["scan_id"].tolist() == [KITS]
    assert review.queue(ws, sources=["btcv"])["class_name"].tolist() == ["liver", "stomach"]
    assert review.queue(ws, reasons=["fragments", "volume_outlier"])["score"].tolist() == [0.5, 0.2]
    assert sorted(review.queue_reasons(ws)) == ["fragments", "high_entropy", "volume_outlier"]

    rid = review.record_decision(ws, SCAN, "liver", p1, "accept", "Dr Ada")
    assert review.queue(ws)["score"].tolist() == [0.5, 0.2]
    accepted = review.queue(ws, status="accept")
    assert (accepted["scan_id"].tolist(), accepted["decided_by"].tolist()) == ([SCAN], ["Dr Ada"])
    assert review.queue(ws, status="decided", reviewer="Dr Ada")["review_id"].tolist() == [rid]
    assert review.queue(ws, status="all")["score"].tolist() == [0.9, 0.5, 0.2]

    review.undo(ws, rid, "Dr Ada")
    assert review.queue(ws)["score"].tolist() == [0.9, 0.5, 0.2]

    # A decision on one version does not hide the item of a newer pseudo label set version.
    review.record_decision(ws, SCAN, "liver", p1, "reject", "Dr Ada")
    p3 = add_pseudo(ws, SCAN, {"liver": blob(shape, (12, 12, 12), 8)}, run_id="run-2")
    add_uncertainty(ws, [(SCAN, "liver", "run-2", p3, 0.7, [])])
    pending = review.queue(ws)
    assert pending[pending["class_name"] == "liver"]["label_set_id"].tolist() == [p3]
    with pytest.raises(ValueError, match="status"):
        review.queue(ws, status="maybe")


def test_empty_queue_is_an_empty_frame(ws: Workspace) -> None:
    q = review.queue(ws)
    assert q.empty and "status" in q.columns


# ----------------------------------------------------------------------------------------- corrections


def test_correcting_a_pseudo_label_makes_a_revised_set_without_promoting_other_guesses(ws: Workspace) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    pseudo = add_pseudo(
        ws, SCAN, {"liver": blob(shape, (10, 10, 10), 8), "colon": blob(shape, (30, 30, 30), 5)}
    )
    fixed = blob(shape, (11, 11, 11), 6)
    corr = review.correct(ws, SCAN, "liver", fixed, "Dr Ada", "trimmed", pseudo)
    ls = ws.catalog.label_sets(SCAN).set_index("id").loc[corr.label_set_id]
    assert (ls["origin"], ls["parent_id"], ls["author"]) == ("revised", pseudo, "Dr Ada")
    cov = ws.catalog.coverage(corr.label_set_id)
    assert cov["liver"] == "annotated_present"
    assert cov["colon"] == "not_annotated"  # the unreviewed pseudo colon is not promoted
    assert np.array_equal(ws.masks.read(corr.label_set_id, "liver"), fixed)
    stats = ws.catalog.query("SELECT * FROM class_stats WHERE label_set_id = ?", [corr.label_set_id])
    assert stats.set_index("class_name").loc["liver", "voxels"] == 6**3
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [corr.review_id]).iloc[0]
    assert (row["decision"], row["label_set_id"], row["result_label_set_id"]) == (
        "corrected",
        pseudo,
        corr.label_set_id,
    )
    entry = assemble_training_set(ws, scan_ids=[SCAN])[0]
    assert entry.origins["liver"] == "revised" and entry.origins["colon"] == "pseudo"
    assert entry.origins["kidney_left"] == "original"


def test_correcting_an_original_label_copies_the_other_classes(ws: Workspace) -> None:
    orig = ws.catalog.latest_original(SCAN)
    assert orig is not None
    kidney = original_mask(ws, SCAN, "kidney_left")
    fixed = review.keep_largest(kidney) & ~np.roll(kidney, 2, axis=0)
    corr = review.correct(ws, SCAN, "kidney_left", fixed, "Dr Ada")  # base defaults to the current label
    assert ws.catalog.label_sets(SCAN).set_index("id").loc[corr.label_set_id, "parent_id"] == orig["id"]
    old_cov, new_cov = ws.catalog.coverage(orig["id"]), ws.catalog.coverage(corr.label_set_id)
    assert {n: s for n, s in new_cov.items() if n != "kidney_left"} == {
        n: s for n, s in old_cov.items() if n != "kidney_left"
    }
    for cls in ws.masks.names(orig["mask_key"]):
        if cls != "kidney_left" and old_cov[cls] == "annotated_present":
            assert np.array_equal(ws.masks.read(corr.label_set_id, cls), original_mask(ws, SCAN, cls))
    assert review.current_label_set(ws, SCAN, "kidney_left") == corr.label_set_id


def test_an_empty_correction_records_the_class_as_absent(ws: Workspace) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    corr = review.correct(ws, SCAN, "kidney_tumor", np.zeros(shape, np.uint8), "Dr Ada")
    assert ws.catalog.coverage(corr.label_set_id)["kidney_tumor"] == "annotated_absent"


@pytest.mark.parametrize("bad", ["shape", "values"])
def test_bad_corrected_masks_are_refused(ws: Workspace, bad: str) -> None:
    shape = tuple(int(s) for s in review.scan_row(ws, SCAN)["shape"])
    mask = np.zeros((4, 4, 4), bool) if bad == "shape" else np.full(shape, 2, np.uint8)
    before = ws.catalog.counts()["label_set"], len(ws.masks.keys())
    with pytest.raises(HarmonizeError, match="mask"):
        review.correct(ws, SCAN, "liver", mask, "Dr Ada")
    assert (ws.catalog.counts()["label_set"], len(ws.masks.keys())) == before


def test_undo_of_a_correction_restores_the_previous_mask_without_deleting(ws: Workspace) -> None:
    before = original_mask(ws, SCAN, "kidney_left")
    corr = review.correct(ws, SCAN, "kidney_left", review.keep_largest(before)[::-1].copy(), "Dr Ada")
    n_sets = ws.catalog.counts()["label_set"]
    uid = review.undo(ws, corr.review_id, "Dr Bo", "wrong case")
    current = review.current_label_set(ws, SCAN, "kidney_left")
    assert current not in (corr.label_set_id, None)
    assert np.array_equal(ws.masks.read(str(current), "kidney_left"), before)
    assert ws.catalog.counts()["label_set"] == n_sets + 1  # nothing deleted, one version added
    assert ws.catalog.label_sets(SCAN).set_index("id").loc[str(current), "parent_id"] == corr.label_set_id
    row = ws.catalog.query("SELECT * FROM review WHERE id = ?", [uid]).iloc[0]
    assert (row["decision"], row["undo_of"], row["reviewer"]) == ("undo", corr.review_id, "Dr Bo")
    with pytest.raises(HarmonizeError, match="already undone"):
        review.undo(ws, corr.review_id, "Dr Bo")
    with pytest.raises(HarmonizeError, match="itself an undo"):
        review.undo(ws, uid, "Dr Bo")
    with pytest.raises(HarmonizeError, match="no review"):
        review.undo(ws, "rv-missing", "Dr Bo")


def test_only_the_newest_correction_can_be_undone(ws: Workspace) -> None:
    m = original_mask(ws, SCAN, "kidney_left")
    first = review.correct(ws, SCAN, "kidney_left", np.roll(m, 1, axis=0), "Dr Ada")
    review.correct(ws, SCAN, "kidney_left", np.roll(m, 2, axis=0), "Dr Ada")
    with pytest.raises(HarmonizeError, match="undo the later correction first"):
        review.undo(ws, first.review_id, "Dr Ada")


# ------------------------------------------------------------------------------------------ quick fixes


@pytest.mark.parametrize(
    ("sizes", "remove_at", "expected"),
    [
        ((3, 2), (1, 1, 1), 2**3),  # remove the 27-voxel cube, keep the 8-voxel one
        ((3, 2), (12, 12, 12), 3**3),
        ((4, 1), (12, 12, 12), 4**3),
    ],
)
def test_remove_component(sizes: tuple[int, int], remove_at: tuple[int, int, int], expected: int) -> None:
    m = blob((16, 16, 16), (0, 0, 0), sizes[0]) | blob((16, 16, 16), (12, 12, 12), sizes[1])
    out = review.remove_component(m, remove_at)
    assert int(out.sum()) == expected and m.sum() == sizes[0] ** 3 + sizes[1] ** 3  # input untouched


@pytest.mark.parametrize("voxel", [(15, 15, 15), (99, 0, 0), (-1, 0, 0)])
def test_remove_component_needs_a_voxel_of_the_mask(voxel: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="voxel"):
        review.remove_component(blob((16, 16, 16), (0, 0, 0), 3), voxel)


@pytest.mark.parametrize(("a", "b", "expected"), [(3, 2, 27), (2, 4, 64), (1, 1, 1), (0, 0, 0)])
def test_keep_largest(a: int, b: int, expected: int) -> None:
    m = blob((16, 16, 16), (0, 0, 0), a) | blob((16, 16, 16), (10, 10, 10), b)
    assert int(review.keep_largest(m).sum()) == expected


def test_diagonal_voxels_are_one_component() -> None:
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # 26-connected
    assert int(review.keep_largest(m).sum()) == 2


# ---------------------------------------------------------------------------------- Slicer / ITK-SNAP


def test_slicer_export_writes_a_label_map_with_tumours_on_top(ws: Workspace, tmp_path: Path) -> None:
    files = review.export_case_for_slicer(ws, KITS, tmp_path / "case")
    assert set(files) == {"ct.nii.gz", "labels.nii.gz", "labels.ctbl", "itksnap_labels.txt", "labels.json"}
    ct, lab = nib.load(files["ct.nii.gz"]), nib.load(files["labels.nii.gz"])
    scan = review.scan_row(ws, KITS)
    assert ct.shape == lab.shape == tuple(scan["shape"])
    assert np.allclose(lab.affine, review.scan_affine(scan), atol=1e-4)
    data = np.asarray(lab.dataobj)
    present = [
        n
        for n, s in ws.catalog.coverage(ws.catalog.latest_original(KITS)["id"]).items()  # type: ignore[index]
        if s == "annotated_present"
    ]
    assert set(np.unique(data)) - {0} == {class_by_name(n).index for n in present}
    tumour = original_mask(ws, KITS, "kidney_tumor")
    assert (data[tumour] == class_by_name("kidney_tumor").index).all()  # painted over the kidney
    ctbl = files["labels.ctbl"].read_text().splitlines()
    assert f"{class_by_name('kidney_tumor').index} kidney_tumor" in "\n".join(ctbl)
    assert json.loads(files["labels.json"].read_text())["values"][
        str(class_by_name("kidney_left").index)
    ] == ("kidney_left")


def test_slicer_round_trip_imports_the_edited_class(ws: Workspace, tmp_path: Path) -> None:
    files = review.export_case_for_slicer(ws, SCAN, tmp_path / "case")
    img = nib.load(files["labels.nii.gz"])
    data = np.asarray(img.dataobj).copy()
    liver = class_by_name("liver").index
    data[data == liver] = 0
    data[5:9, 5:9, 5:9] = liver  # the "edited" liver
    edited = tmp_path / "edited.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), edited)
    corr = review.import_correction(ws, SCAN, "liver", edited, "Dr Ada", "redrawn in Slicer")
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 4**3
    # the other classes of the original came along unchanged
    assert np.array_equal(ws.masks.read(corr.label_set_id, "spleen"), original_mask(ws, SCAN, "spleen"))


def _write_label(
    tmp_path: Path,
    ws: Workspace,
    *,
    shape_delta: int = 0,
    shift_mm: float = 0.0,
    values: tuple[int, ...] = (0, 1),
    name: str = "fix.nii.gz",
) -> Path:
    scan = review.scan_row(ws, SCAN)
    shape = tuple(int(s) for s in scan["shape"])
    shape = (shape[0] + shape_delta, shape[1], shape[2])
    data = np.zeros(shape, np.uint8)
    for n, v in enumerate(values):
        data[n, 0, 0] = v
    affine = review.scan_affine(scan).copy()
    affine[0, 3] += shift_mm
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape_delta": 1}, "shape"),
        ({"shift_mm": 0.5}, "affine differs"),
        ({"values": (0, 1, 40)}, "label values"),
    ],
)
def test_import_refuses_wrong_geometry_and_values(
    ws: Workspace, tmp_path: Path, kwargs: dict, match: str
) -> None:
    path = _write_label(tmp_path, ws, **kwargs)
    n = ws.catalog.counts()["label_set"]
    with pytest.raises(HarmonizeError, match=match) as err:
        review.import_correction(ws, SCAN, "liver", path, "Dr Ada")
    assert err.value.path == str(path)
    assert ws.catalog.counts()["label_set"] == n


def test_import_accepts_a_shift_within_tolerance_and_a_value_map(ws: Workspace, tmp_path: Path) -> None:
    path = _write_label(tmp_path, ws, shift_mm=0.005, values=(0, 7, 9))
    corr = review.import_correction(ws, SCAN, "liver", path, "Dr Ada", value_map={0: 0, 7: 1, 9: 0})
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 1


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("../../etc/evil.nii.gz", None),
        ("sub/dir.nii.gz", None),
        ("C:\\x\\y.nii", None),
        (".hidden.nii.gz", None),
        ("notes.txt", None),
        ("fake.nii.gz", b"this is not a NIfTI file at all" * 20),
        ("fake.nii", b"\x00" * 400),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_written(
    ws: Workspace, tmp_path: Path, name: str, data: bytes | None
) -> None:
    payload = data if data is not None else _write_label(tmp_path, ws).read_bytes()
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    n = ws.catalog.counts()["label_set"]
    with pytest.raises(HarmonizeError) as err:
        review.import_correction_upload(ws, SCAN, "liver", name, payload, "Dr Ada")
    assert "NIfTI" in err.value.problem
    after = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*") if p.name != "imports")
    assert after == [p for p in before if p.name != "imports"]
    assert ws.catalog.counts()["label_set"] == n
    assert not (tmp_path.parent / "etc").exists()


def test_a_good_upload_is_imported(ws: Workspace, tmp_path: Path) -> None:
    payload = _write_label(tmp_path, ws, values=(0, 1, 1)).read_bytes()
    corr = review.import_correction_upload(ws, SCAN, "liver", "liver_fixed.nii.gz", payload, "Dr Ada")
    assert int(ws.masks.read(corr.label_set_id, "liver").sum()) == 2
    assert list((ws.root / "imports").iterdir()) == []


# ----------------------------------------------------------------------------------------- concurrency


def _decide_many(root: str, ls: str, who: str, n: int) -> None:
    w = Workspace.open(root)
    for _ in range(n):
        review.record_decision(w, SCAN, "liver", ls, "skip", who)


def test_two_reviewer_processes_lose_no_decision(ws: Workspace) -> None:
    ls = review.current_label_set(ws, SCAN, "liver")
    assert ls is not None
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_decide_many, args=(str(ws.root), ls, who, 8)) for who in ("Ann", "Bob")]
    for p in procs:
        p.start()
    _decide_many(str(ws.root), ls, "Cy", 8)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    counts = ws.catalog.query("SELECT reviewer, count(*) AS n FROM review GROUP BY 1 ORDER BY 1")
    assert counts.values.tolist() == [["Ann", 8], ["Bob", 8], ["Cy", 8]]
