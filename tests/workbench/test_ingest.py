"""Ingest every built-in source from phantoms written in its native conventions, and the bad inputs.

The expected masks come from the phantom's ground truth, restricted by the native writer to what the
source can express; the ingest must recover them exactly from the files on disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import all_protocols, get_protocol
from storage.workspace import Workspace
from workbench.ingest import ingest, scan_id_for

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(all_protocols())


def _write_cases(source: str, root: Path, seeds: tuple[int, ...] = (0, 1)) -> dict[str, object]:
    protocol = get_protocol(source)
    written = {}
    for seed in seeds:
        # seed 1 lost its left kidney (nephrectomy): the merged kidney label must still split right
        missing = ("kidney_left",) if seed == 1 else ()
        phantom = make_phantom(seed, shape=(72, 64, 48), missing=missing)
        case = _case_id(protocol.id, seed)
        written[case] = write_native(phantom, protocol, root, case)
    return written


def _case_id(source: str, seed: int) -> str:
    protocol = get_protocol(source)
    lo = (protocol.inclusion.get("case_number_range") or [1])[0] or 1
    return f"{lo + seed:04d}" if protocol.inclusion.get("case_number") else f"case{seed:02d}"


def _ingested_label_set(ws: Workspace, scan_id: str, origin: str) -> dict[str, object]:
    """The scan's one label set an ingest wrote, checked to carry ``origin`` (the protocol's default)."""
    rows = ws.catalog.label_sets(scan_id)
    assert list(rows["origin"]) == [origin]
    return rows.iloc[0].to_dict()


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_ingests_to_the_truth(source: str, tmp_path: Path) -> None:
    written = _write_cases(source, tmp_path / "data")
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, source, tmp_path / "data", progress=False)
    assert summary.skipped == [] and len(summary.added) == len(written)
    protocol = get_protocol(source)
    for case_id, native in written.items():
        scan_id = scan_id_for(source, case_id)
        ls = _ingested_label_set(ws, scan_id, protocol.default_origin)
        coverage = ws.catalog.coverage(ls["id"])
        stored = set(ws.masks.names(ls["mask_key"]))
        for name, truth in native.expected.items():  # type: ignore[attr-defined]
            assert name in protocol.annotated
            if truth.any():
                assert coverage[name] == "annotated_present", name
                mask = ws.masks.read(ls["mask_key"], name)
                np.testing.assert_array_equal(mask, truth, err_msg=f"{source} {case_id} {name}")
            else:
                assert coverage[name] == "annotated_absent", name
                assert name not in stored or not ws.masks.read(ls["mask_key"], name).any()
        not_annotated = {n for n, s in coverage.items() if s == "not_annotated"}
        assert not_annotated == set(coverage) - set(protocol.annotated)
    # re-ingesting the same files changes nothing
    before = ws.catalog.counts()
    again = ingest(ws, source, tmp_path / "data", progress=False)
    assert len(again.unchanged) == len(written) and not again.added and not again.updated
    assert ws.catalog.counts() == before


def test_nephrectomy_and_split_decisions_are_recorded(tmp_path: Path) -> None:
    _write_cases("kits23", tmp_path / "data")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "kits23", tmp_path / "data", progress=False)
    ls = ws.catalog.latest_original(scan_id_for("kits23", "case01"))
    cov = ws.catalog.coverage(ls["id"])
    assert cov["kidney_left"] == "annotated_absent" and cov["kidney_right"] == "annotated_present"
    splits = ws.catalog.query("SELECT side, method FROM split_decision WHERE label_set_id = ?", [ls["id"]])
    assert set(splits["side"]) == {"right"} and set(splits["method"]) == {"component"}


@pytest.mark.parametrize("variant", ["horseshoe", "fragmented_kidney"])
def test_kidney_variants_lose_no_voxel(variant: str, tmp_path: Path) -> None:
    phantom = make_phantom(3, shape=(72, 64, 48), variant=variant)
    native = write_native(phantom, get_protocol("abdomenct_1k"), tmp_path / "data", "00001")
    ws = Workspace.open(tmp_path / "ws")
    assert ingest(ws, "abdomenct_1k", tmp_path / "data", progress=False).skipped == []
    ls = ws.catalog.latest_original(scan_id_for("abdomenct_1k", "00001"))
    left = ws.masks.read(ls["mask_key"], "kidney_left")
    right = ws.masks.read(ls["mask_key"], "kidney_right")
    truth = native.expected["kidney_left"] | native.expected["kidney_right"]
    np.testing.assert_array_equal(left | right, truth)
    assert not (left & right).any()
    # the left part lies on the patient's left (smaller RAS x) of the right part
    aff = native.affine
    x_left = (np.argwhere(left) @ aff[0, :3]).mean()
    x_right = (np.argwhere(right) @ aff[0, :3]).mean()
    assert x_left < x_right
    if variant == "horseshoe":
        methods = set(ws.catalog.query("SELECT method FROM split_decision")["method"])
        assert methods & {"cores", "midline"}
        np.testing.assert_array_equal(left, native.expected["kidney_left"])


BAD_INPUTS = [
    ("truncate", "truncated|corrupt|cannot read|not a valid"),
    ("shape_mismatch", "label shape"),
    ("affine_mismatch", "label affine differs"),
    ("unknown_value", "not in the kits23 protocol"),
    ("nan", "NaN"),
    ("empty_label", "label map is empty"),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_INPUTS)
def test_bad_input_is_skipped_with_one_clear_message(corrupt: str, message: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0,))
    bad = write_native(
        make_phantom(5, shape=(72, 64, 48)), get_protocol("kits23"), data, "case05", corrupt=corrupt
    )
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", data, progress=False)
    assert summary.added == [scan_id_for("kits23", "case00")]  # the rest of the ingest goes on
    assert len(summary.skipped) == 1
    path, problem = summary.skipped[0]
    assert "case05" in path and path in (str(bad.image), str(bad.label))
    assert __import__("re").search(message, problem, flags=__import__("re").I), problem
    assert ws.catalog.scan_by_case("kits23", "case05") is None  # nothing half-written
    issues = ws.catalog.query("SELECT path, problem FROM ingest_issue")
    assert issues["path"].tolist() == [path]


def test_the_same_scan_twice_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0,))
    shutil.copytree(data / "case00", data / "case00_copy")
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", data, progress=False)
    assert len(summary.added) == 1
    assert (
        len(summary.skipped) == 1
        and "same image is already in the catalog as scan kits23:case00" in summary.skipped[0][1]
    )


def test_a_folder_that_is_not_the_source_is_refused(tmp_path: Path) -> None:
    _write_cases("kits23", tmp_path / "data", seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(HarmonizeError, match=r"does not look like .*\(amos22\)"):
        ingest(ws, "amos22", tmp_path / "data", progress=False)
    assert ws.catalog.counts()["scan"] == 0


def test_a_changed_label_file_becomes_a_new_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("lits", data, seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "lits", data, progress=False)
    label = next(p for p in data.rglob("*") if p.is_file() and "seg" in p.name)
    import nibabel as nib

    img = nib.load(label)
    arr = np.asanyarray(img.dataobj).copy()
    arr[arr == 2] = 1  # a reviewer of the dataset removed the tumour
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), label)
    summary = ingest(ws, "lits", data, progress=False)
    assert len(summary.updated) == 1
    versions = ws.catalog.label_sets(summary.updated[0])
    assert versions["version"].tolist() == [1, 2] and versions["parent_id"].tolist()[1] == versions["id"][0]
    assert ws.catalog.coverage(versions["id"][1])["liver_tumor"] == "annotated_absent"
    assert ws.catalog.coverage(versions["id"][0])["liver_tumor"] == "annotated_present"


def test_a_killed_ingest_leaves_no_half_scan_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1, 2, 3))
    ws_path = tmp_path / "ws"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from storage.workspace import Workspace
        from workbench.ingest import ingest
        import workbench.ingest as ing
        ws = Workspace.open({str(ws_path)!r})
        # die by SIGKILL in the middle of the third case: masks written, catalog not yet
        real_add = ws.catalog.add_label_set
        calls = []
        def add(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_add(*a, **k)
        ws.catalog.add_label_set = add
        ingest(ws, "kits23", {str(data)!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    ws = Workspace.open(ws_path)
    assert ws.catalog.counts()["scan"] == 2
    assert len(ws.masks.keys()) == 3  # one orphan mask file from the killed case
    summary = ingest(ws, "kits23", data, progress=False)
    assert len(summary.unchanged) == 2 and len(summary.added) == 2
    assert ws.catalog.counts()["scan"] == 4
    orphans = set(ws.masks.keys()) - ws.catalog.mask_keys()
    assert len(orphans) == 1  # an ingest never removes a published mask file
    assert ws.collect_garbage() == []  # younger than ORPHAN_MIN_AGE_S: a writer may be about to commit it
    assert ws.collect_garbage(min_age_s=0, dry_run=True) == [ws.masks.path(k) for k in orphans]
    assert ws.collect_garbage(min_age_s=0) == [ws.masks.path(k) for k in orphans]
    assert set(ws.masks.keys()) == ws.catalog.mask_keys()


def test_an_ingest_leaves_other_writers_mask_files_alone(tmp_path: Path) -> None:
    """A reviewer's correction or a pseudo-label job publishes its mask file before its catalog row; an
    ingest running meanwhile (or one after a catalog was moved aside) must not delete that file."""
    import numpy as np

    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")
    pending = "ls-" + "7" * 20
    ws.masks.write_label_set(pending, {"liver": np.ones((2, 2, 2), bool)}, (2, 2, 2))
    ingest(ws, "kits23", data, progress=False)
    ingest(ws, "kits23", data, progress=False)
    assert pending in set(ws.masks.keys())


def test_a_changed_label_file_after_pseudo_labels_gets_the_next_free_version(tmp_path: Path) -> None:
    import nibabel as nib

    from harmonize.taxonomy import class_names
    from storage.catalog import LabelSetRecord

    data = tmp_path / "data"
    _write_cases("lits", data, seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "lits", data, progress=False)
    scan = scan_id_for("lits", "case00")
    original = ws.catalog.latest_original(scan)
    ws.masks.write_label_set("ls-pseudo", {}, tuple(ws.catalog.scan_by_case("lits", "case00")["shape"]))
    ws.catalog.add_label_set(
        LabelSetRecord("ls-pseudo", scan, 2, "pseudo", "ls-pseudo"),
        dict.fromkeys(class_names(), "not_annotated"),
        [],
    )
    label = next(p for p in data.rglob("*") if p.is_file() and "seg" in p.name)
    img = nib.load(label)
    arr = np.asanyarray(img.dataobj).copy()
    arr[arr == 2] = 1
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), label)
    summary = ingest(ws, "lits", data, progress=False)
    assert summary.updated == [scan] and summary.skipped == []
    versions = ws.catalog.label_sets(scan)
    assert versions["version"].tolist() == [1, 2, 3]
    newest = versions.iloc[-1]
    assert newest["origin"] == "original" and newest["parent_id"] == original["id"]


# ------------------------------------------------------------------ cases a layout finds but cannot read


def _only_skip(summary: object) -> tuple[str, str]:
    skipped = summary.skipped  # type: ignore[attr-defined]
    assert len(skipped) == 1, skipped
    return skipped[0]


def test_a_broken_link_is_named_not_lost(tmp_path: Path) -> None:
    """A datalad / git-annex dataset not fetched yet: the image is a symlink to absent content."""
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    image = data / "case01" / "imaging.nii.gz"
    image.unlink()
    image.symlink_to(tmp_path / ".git" / "annex" / "objects" / "MD5E-s123--abc.nii.gz")
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", data, progress=False)
    assert summary.found == 2 and summary.added == [scan_id_for("kits23", "case00")]
    path, problem = _only_skip(summary)
    assert path == str(image) and "broken link" in problem and "datalad get" in problem
    assert ws.catalog.ingest_issues()["problem"].tolist() == [problem]


def test_a_label_without_image_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    (data / "case01" / "imaging.nii.gz").unlink()
    summary = ingest(Workspace.open(tmp_path / "ws"), "kits23", data, progress=False)
    assert summary.found == 2 and len(summary.added) == 1
    path, problem = _only_skip(summary)
    assert path == str(data / "case01" / "segmentation.nii.gz")
    assert problem.startswith("label without image") and "imaging.nii.gz" in problem


def test_an_unreadable_file_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file, so the refusal is simulated where the readers open the file."""
    import builtins

    import harmonize.readers._files as files

    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    locked = data / "case01" / "imaging.nii.gz"

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(files, "open", guarded_open, raising=False)
    summary = ingest(Workspace.open(tmp_path / "ws"), "kits23", data, progress=False)
    path, problem = _only_skip(summary)
    assert path == str(locked) and "permission denied" in problem


def test_a_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    fifo = data / "case01" / "imaging.nii.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    summary = ingest(Workspace.open(tmp_path / "ws"), "kits23", data, progress=False)
    path, problem = _only_skip(summary)
    assert path == str(fifo) and problem == "not a regular file (a FIFO)"


@pytest.mark.parametrize(("break_one", "code"), [(False, 0), (True, 1)])
def test_ingest_exits_non_zero_when_it_skipped_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], break_one: bool, code: int
) -> None:
    from workbench.cli import main

    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    if break_one:
        (data / "case01" / "imaging.nii.gz").write_bytes(b"not a nifti")
    argv = ["--workspace", str(tmp_path / "ws"), "ingest", "kits23", str(data), "--no-progress"]
    assert main(argv) == code
    out = capsys.readouterr().out
    assert "2 cases found" in out  # the summary is printed either way
    assert ("skipped " in out) == break_one


def _all_text(ws: Workspace) -> str:
    """Every value of every catalog table, as one string (VARCHAR columns, lists and JSON included)."""
    tables = ws.catalog.query(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
    )
    return "\n".join(
        ws.catalog.query(f"SELECT * FROM {t}").astype(str).to_csv() for t in tables["table_name"]
    )


def test_hashed_case_ids_keep_folder_names_out_of_ids_and_issues(tmp_path: Path) -> None:
    from workbench.ingest import hashed_case_id

    data = tmp_path / "data"
    _write_cases("kits23", data, seeds=(0, 1))
    (data / "case01" / "imaging.nii.gz").write_bytes(b"damaged")
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "kits23", data, progress=False, hash_case_ids=True)
    hashed = hashed_case_id("case00")
    assert summary.added == [scan_id_for("kits23", hashed)] and hashed.startswith("h") and len(hashed) == 17
    scan = ws.catalog.scan_by_case("kits23", hashed)
    assert scan is not None and scan["image_path"] == str(data / "case00" / "imaging.nii.gz")
    text = _all_text(ws).replace(str(data / "case00"), "")  # the file paths stay (the CT is read again)
    assert "case00" not in text and "case01" not in text
    assert hashed_case_id("case01") in ws.catalog.ingest_issues()["path"].iloc[0]
    again = ingest(ws, "kits23", data, progress=False, hash_case_ids=True)
    assert again.unchanged == summary.added  # resumable: the same name hashes to the same id


# ---------------------------------------------------------------------------------- DICOM, no UID kept


def _chaos_case(root: Path, case: str, slices: list[Path], extra: Path | None = None) -> Path:
    """A CHAOS CT case (``Train_Sets/CT/<case>/DICOM_anon`` + ``Ground`` PNGs) from real DICOM slices."""
    from PIL import Image

    dicom = root / "Train_Sets" / "CT" / case / "DICOM_anon"
    ground = dicom.parent / "Ground"
    dicom.mkdir(parents=True)
    ground.mkdir()
    for f in slices:
        shutil.copy(f, dicom / f.name)
    if extra is not None:
        shutil.copy(extra, dicom / "zz_other_series.dcm")
    for k in range(len(slices)):
        png = np.zeros((512, 512), np.uint8)
        png[200:300, 150:260] = 255
        Image.fromarray(png).save(ground / f"liver_GT_{k:03d}.png")
    return dicom


def test_no_dicom_uid_or_patient_value_reaches_the_catalog(
    tmp_path: Path, shared_fixtures: Path, ledger
) -> None:  # type: ignore[no-untyped-def]
    import pydicom
    from pydicom.uid import generate_uid

    real = sorted((shared_fixtures / "dicom_ct" / "ct-3slice").glob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in real]
    intruder = pydicom.dcmread(real[0])
    intruder.SeriesInstanceUID = generate_uid()
    intruder.ImagePositionPatient = [0.0, 0.0, 500.0]
    other = tmp_path / "other.dcm"
    intruder.save_as(other)
    data = tmp_path / "data"
    _chaos_case(data, "1", real)
    _chaos_case(data, "2", real[:1], extra=other)  # two series in one folder: skipped, with a message
    ws = Workspace.open(tmp_path / "ws")
    summary = ingest(ws, "chaos_ct", data, progress=False)
    assert summary.added == [scan_id_for("chaos_ct", "1")]
    _, problem = _only_skip(summary)
    assert "2 series in the folder" in problem
    text = _all_text(ws)
    secrets = {str(intruder.SeriesInstanceUID)}
    for h in headers:
        for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            secrets.add(str(h.get(keyword, "")))
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyDate", "PatientBirthDate"):
            secrets.add(str(h.get(keyword, "") or ""))
    leaked = sorted(s for s in secrets if len(s) >= 3 and s in text)
    ledger.record("identifiers (UIDs, patient fields) in the catalog", escaped=len(leaked))
    assert leaked == []
    from harmonize.readers import series_uid_sha1

    assert series_uid_sha1(str(intruder.SeriesInstanceUID))[:12] in problem  # named by its hash
    scan = ws.catalog.scan_by_case("chaos_ct", "1")
    assert scan is not None and scan["series_uid_sha1"] == series_uid_sha1(str(headers[0].SeriesInstanceUID))


# ------------------------------------------------------------------- tool outputs are pseudo-labels (#13)


@pytest.mark.parametrize("source", sorted(s for s in SOURCES if get_protocol(s).is_tool_output))
def test_a_tool_output_is_a_pseudo_label_set_of_the_tool_run(source: str, tmp_path: Path) -> None:
    written = _write_cases(source, tmp_path / "data", seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")
    assert ingest(ws, source, tmp_path / "data", progress=False).skipped == []
    (case,) = written
    sets = ws.catalog.label_sets(scan_id_for(source, case))
    assert list(sets["origin"]) == ["pseudo"] and list(sets["run_id"]) == [f"tool-{source}-p1"]
    assert ws.catalog.latest_original(scan_id_for(source, case)) is None
    annotated = get_protocol(source).annotated
    assert len(ws.catalog.uncertainty_items(f"tool-{source}-p1")) == len(annotated)
    assert ws.catalog.long_tail_table()["annotated"].sum() == 0  # nothing counts as annotated


def test_a_failed_tool_output_write_leaves_no_label_set_rows_or_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The label set and its uncertainty rows commit together: a failure inside the transaction leaves
    neither (nor an orphan mask file), and the next ingest writes both."""
    from storage.catalog import Catalog

    _write_cases("totalsegmentator_v2", tmp_path / "data", seeds=(0,))
    ws = Workspace.open(tmp_path / "ws")

    def boom(self: Catalog, con: object, rows: object) -> None:
        raise RuntimeError("killed while writing uncertainty rows")

    monkeypatch.setattr(Catalog, "_insert_uncertainty", boom)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(ws, "totalsegmentator_v2", tmp_path / "data", progress=False)
    assert ws.catalog.label_sets().empty and ws.catalog.uncertainty_items().empty
    assert ws.masks.keys() == []
    monkeypatch.undo()
    assert ingest(ws, "totalsegmentator_v2", tmp_path / "data", progress=False).added
    assert len(ws.catalog.label_sets()) == 1 and len(ws.catalog.uncertainty_items()) == 23
    assert len(ws.masks.keys()) == 1


def test_ingest_workers_write_the_tool_rows_of_one_process(tmp_path: Path) -> None:
    """A tool's uncertainty rows are computed in the workers from a context read once by the driver."""
    _write_cases("totalsegmentator_v2", tmp_path / "data", seeds=(0, 1))
    alone, pooled = Workspace.open(tmp_path / "one"), Workspace.open(tmp_path / "two")
    assert len(ingest(alone, "totalsegmentator_v2", tmp_path / "data", progress=False).added) == 2
    assert len(ingest(pooled, "totalsegmentator_v2", tmp_path / "data", progress=False, workers=2).added) == 2

    def rows(ws: Workspace) -> list[tuple]:
        df = ws.catalog.uncertainty_items("tool-totalsegmentator_v2-p1")
        return sorted(zip(df["scan_id"], df["class_name"], df["signals"], strict=True))

    assert rows(alone) == rows(pooled) and len(rows(alone)) == 46


def test_the_zlib_fallback_ingests_the_same_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without python-isal the readers inflate with zlib: the same hashes, statistics and mask bytes."""
    import zlib

    from harmonize.readers import _gzip

    _write_cases("kits23", tmp_path / "data", seeds=(0, 1))

    def stored(ws: Workspace) -> list:
        rows = ws.catalog.query(
            "SELECT s.id, s.image_sha256, s.hu_min, s.hu_max, l.label_sha256, l.mask_key, st.class_name, "
            "st.voxels, st.hu_mean FROM scan s JOIN label_set l ON l.scan_id = s.id "
            "JOIN class_stats st ON st.label_set_id = l.id ORDER BY s.id, st.class_name"
        ).to_dict("records")
        return [{**r, "mask_key": ws.masks.path(r["mask_key"]).read_bytes()} for r in rows]

    fast = Workspace.open(tmp_path / "isal")
    assert len(ingest(fast, "kits23", tmp_path / "data", progress=False).added) == 2
    monkeypatch.setattr(_gzip, "_engine", zlib)
    slow = Workspace.open(tmp_path / "zlib")
    assert len(ingest(slow, "kits23", tmp_path / "data", progress=False).added) == 2
    assert stored(fast) == stored(slow)
