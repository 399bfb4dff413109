"""The fault suite: kill -9 at many moments of ingest, pseudo-labelling, review and export; concurrent
writers. After every fault the workspace must hold everything that was committed before it (same mask
bytes), nothing half-written, and a re-run must finish the job.

Each killed run is a subprocess that installs a trap on one function (``module:Class.method``) and
SIGKILLs itself at the k-th call, so the fault lands at a precise point: before a mask file is
published, between the mask file and its catalog row, inside a catalog transaction, before an export
file is moved into place. The ledger (``conftest.py``) prints what was tried.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonize.phantoms import make_phantom, write_native
from harmonize.protocols import get_protocol
from storage.files import PARTIAL_PREFIX, file_sha256
from storage.workspace import Workspace
from workbench.ingest import ingest

REPO = Path(__file__).resolve().parents[3]
SHAPE = (48, 40, 32)
KITS_CASES = 4

pytestmark = pytest.mark.slow

#: Installed first in every killed subprocess: ``kill_on_call("storage.catalog:Catalog.add_label_set", 3)``
#: SIGKILLs the process when that function is called the third time, before the call runs.
KILLER = """
import importlib, os, signal, sys

def kill_on_call(target, k):
    module, attr = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = [0]

    def trap(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, trap)
"""


def _run(body: str, trap: tuple[str, int] | None = None) -> subprocess.CompletedProcess[str]:
    script = KILLER + (f"kill_on_call({trap[0]!r}, {trap[1]})\n" if trap else "") + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )


def _killed(body: str, trap: tuple[str, int]) -> None:
    proc = _run(body, trap)
    assert proc.returncode == -signal.SIGKILL, f"the trap {trap} never fired:\n{proc.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------- audit


@dataclass
class Snapshot:
    """What was committed at one moment: label set -> SHA-256 of its mask file, and the review ids."""

    masks: dict[str, str] = field(default_factory=dict)
    reviews: set[str] = field(default_factory=set)


def snapshot(ws: Workspace) -> Snapshot:
    sets = ws.catalog.label_sets()
    return Snapshot(
        {str(r.id): file_sha256(ws.masks.path(str(r.mask_key))) for r in sets.itertuples()},
        set(ws.catalog.reviews()["id"].astype(str)),
    )


@dataclass
class Audit:
    lost: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)


def audit(ws: Workspace, before: Snapshot) -> Audit:
    """Everything committed in ``before`` is still there, byte for byte; every label set row has its
    coverage and a mask file that decodes every present class; every correction has its review row and
    every correction row its label set; no scan is without labels."""
    out = Audit()
    sets = ws.catalog.label_sets()
    ids = set(sets["id"].astype(str))
    for r in sets.itertuples():
        coverage = ws.catalog.coverage(str(r.id))
        if not coverage:
            out.half_written.append(f"label set {r.id} has no coverage rows")
        present = [n for n, s in coverage.items() if s == "annotated_present"]
        path = ws.masks.path(str(r.mask_key))
        if not path.is_file():
            out.lost.append(f"label set {r.id}: mask file {path.name} is missing")
            continue
        try:
            stored = set(ws.masks.names(str(r.mask_key)))
            ws.masks.read_many(str(r.mask_key), [n for n in present if n in stored])
        except Exception as e:  # any failure to decode is a loss
            out.lost.append(f"label set {r.id}: {e}")
            continue
        if set(present) - stored:
            out.lost.append(f"label set {r.id}: no mask of {sorted(set(present) - stored)}")
    for ls_id, digest in before.masks.items():
        if ls_id not in ids:
            out.lost.append(f"committed label set {ls_id} is gone")
        elif file_sha256(ws.masks.path(str(sets.set_index("id").loc[ls_id, "mask_key"]))) != digest:
            out.lost.append(f"the mask file of committed label set {ls_id} changed")
    reviews = ws.catalog.reviews()
    out.lost += [f"committed review {rid} is gone" for rid in sorted(before.reviews - set(reviews["id"]))]
    produced = reviews["result_label_set_id"].dropna().astype(str)
    out.half_written += [f"review points to missing label set {p}" for p in sorted(set(produced) - ids)]
    revised = set(sets.loc[sets["origin"] == "revised", "id"].astype(str))
    out.half_written += [f"revised label set {r} has no review row" for r in sorted(revised - set(produced))]
    if ws.catalog.unlabeled_scan_count():
        out.half_written.append(f"{ws.catalog.unlabeled_scan_count()} scans without a label set")
    return out


def _assert_clean(result: Audit) -> None:
    assert result.lost == [] and result.half_written == []


# ---------------------------------------------------------------------------------------- fixtures


def _write_source(root: Path, source: str, n: int, first_seed: int = 0) -> Path:
    protocol = get_protocol(source)
    folder = root / source
    for seed in range(first_seed, first_seed + n):
        write_native(make_phantom(seed, shape=SHAPE), protocol, folder, f"case{seed:02d}")
    return folder


@pytest.fixture(scope="module")
def kits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_source(tmp_path_factory.mktemp("data"), "kits23", KITS_CASES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, random_checkpoint) -> Path:  # type: ignore[no-untyped-def]
    """A small random Universal Model over liver and spleen (classes kits23 does not annotate)."""
    return random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", ("liver", "spleen"))


@pytest.fixture()
def kits_ws(tmp_path: Path, kits_data: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    assert not ingest(ws, "kits23", kits_data, progress=False).skipped
    return ws


# --------------------------------------------------------------------------------------- the faults


@pytest.mark.parametrize(
    "trap",
    [
        ("storage.masks:MaskStore.write_label_set", 3),  # before the third case's masks
        ("storage.masks:_publish", 3),  # the third mask file written, not yet published
        ("storage.catalog:Catalog.add_label_set", 3),  # masks published, catalog row not written
        ("storage.catalog:_finite_or_none", 1),  # inside the first case's catalog transaction
    ],
)
def test_kill_during_ingest(tmp_path: Path, kits_data: Path, ledger, trap: tuple[str, int]) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "ws"
    body = f"""
        from storage.workspace import Workspace
        from workbench.ingest import ingest
        ingest(Workspace.open({str(root)!r}), "kits23", {str(kits_data)!r}, progress=False)
    """
    _killed(body, trap)
    ws = Workspace.open(root)
    after_kill = audit(ws, Snapshot())
    summary = ingest(ws, "kits23", kits_data, progress=False)  # the re-run finishes the job
    resumed = audit(ws, Snapshot())
    ledger.record(
        "kill -9 during ingest",
        lost=len(after_kill.lost + resumed.lost),
        half_written=len(after_kill.half_written + resumed.half_written),
    )
    _assert_clean(after_kill)
    _assert_clean(resumed)
    assert not summary.skipped and ws.catalog.counts()["scan"] == KITS_CASES


@pytest.mark.parametrize(
    "trap",
    [
        ("workbench.pseudolabel.run:write_scan_result", 2),  # between two scans
        ("storage.catalog:Catalog.add_label_set", 2),  # the second scan's masks published, no row
        ("storage.catalog:Catalog.add_uncertainty", 1),  # a label set without its uncertainty rows
        ("workbench.pseudolabel.run:write_uncertainty_map", 2),  # before the second map
    ],
)
def test_kill_during_pseudolabel(kits_ws: Workspace, checkpoint: Path, ledger, trap: tuple[str, int]) -> None:  # type: ignore[no-untyped-def]
    from workbench.pseudolabel import pseudolabel

    before = snapshot(kits_ws)
    body = f"""
        from storage.workspace import Workspace
        from workbench.pseudolabel import pseudolabel
        ws = Workspace.open({str(kits_ws.root)!r})
        pseudolabel(ws, {str(checkpoint)!r}, low_res_mm=6.0, progress=False)
    """
    _killed(body, trap)
    ws = Workspace.open(kits_ws.root)
    after_kill = audit(ws, before)
    summary = pseudolabel(ws, checkpoint, low_res_mm=6.0, progress=False)
    resumed = audit(ws, before)
    # The killed run's row is closed as interrupted by the next job, not left "running" forever.
    resumed.half_written += [
        f"run {r['id']} left unfinished" for r in ws.catalog.unfinished_runs("pseudolabel")
    ]
    ledger.record(
        "kill -9 during pseudolabel",
        lost=len(after_kill.lost + resumed.lost),
        half_written=len(after_kill.half_written + resumed.half_written),
    )
    _assert_clean(after_kill)
    _assert_clean(resumed)
    assert not summary.failed
    sets = ws.catalog.label_sets()
    pseudo = sets[sets["origin"] == "pseudo"]
    assert sorted(pseudo["scan_id"]) == sorted(set(sets["scan_id"]))  # every scan, exactly once
    items = ws.catalog.queue_size()
    assert items >= len(pseudo)  # the uncertainty of every pseudo label set is in


def _correction_body(root: Path, scan_id: str) -> str:
    return f"""
        import numpy as np
        from storage.workspace import Workspace
        from workbench.review import correct
        ws = Workspace.open({str(root)!r})
        ls = ws.catalog.current_label_set({scan_id!r}, "kidney_right")
        mask = ws.masks.read(ws.catalog.label_set_row(ls)["mask_key"], "kidney_right")
        mask[mask.shape[0] // 2 :] = False  # the reviewer removes half of it
        correct(ws, {scan_id!r}, "kidney_right", mask, "dr fault", "half")
    """


@pytest.mark.parametrize(
    "trap",
    [
        ("storage.masks:MaskStore.write_label_set", 1),  # before the revised masks
        ("storage.catalog:Catalog.add_label_set", 1),  # revised masks published, no row
        ("storage.catalog:utc_now", 2),  # inside the label set + review transaction
    ],
)
def test_kill_during_a_correction(kits_ws: Workspace, ledger, trap: tuple[str, int]) -> None:  # type: ignore[no-untyped-def]
    scan_id = str(kits_ws.catalog.label_sets()["scan_id"].iloc[0])
    kits_ws.catalog.add_review(
        scan_id, "kidney_left", str(kits_ws.catalog.label_sets()["id"].iloc[0]), "accept", "", "dr a"
    )
    before = snapshot(kits_ws)
    _killed(_correction_body(kits_ws.root, scan_id), trap)
    ws = Workspace.open(kits_ws.root)
    after_kill = audit(ws, before)
    proc = _run(_correction_body(ws.root, scan_id))  # the reviewer saves again
    resumed = audit(ws, before)
    ledger.record(
        "kill -9 during review (correction)",
        lost=len(after_kill.lost + resumed.lost),
        half_written=len(after_kill.half_written + resumed.half_written),
    )
    _assert_clean(after_kill)
    _assert_clean(resumed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (ws.catalog.reviews()["decision"] == "corrected").sum() == 1


def _published_files_that_do_not_read(out: Path) -> list[str]:
    bad = []
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(PARTIAL_PREFIX) or p.name.startswith("."):
            continue
        try:
            if p.name.endswith(".nii.gz"):
                np.asarray(nib.load(p).dataobj)
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except Exception as e:  # a published file that does not read is half-written
            bad.append(f"{p.relative_to(out)}: {e}")
    return bad


@pytest.mark.parametrize("trap", [("os:replace", 2), ("os:replace", 5), ("nibabel:save", 4)])
def test_kill_during_export(kits_ws: Workspace, tmp_path: Path, ledger, trap: tuple[str, int]) -> None:  # type: ignore[no-untyped-def]
    from workbench.export import export_nnunet, verify_manifest

    before = snapshot(kits_ws)
    out = tmp_path / "Dataset900_Faults"
    body = f"""
        from storage.workspace import Workspace
        from workbench.export import export_nnunet
        export_nnunet(Workspace.open({str(kits_ws.root)!r}), {str(out)!r}, progress=False)
    """
    _killed(body, trap)
    half = _published_files_that_do_not_read(out)
    lost = audit(Workspace.open(kits_ws.root), before)
    export_nnunet(kits_ws, out, progress=False)  # the re-run finishes it
    half += _published_files_that_do_not_read(out)
    ledger.record("kill -9 during export", lost=len(lost.lost), half_written=len(half + lost.half_written))
    assert half == [] and lost.lost == [] and lost.half_written == []
    assert verify_manifest(out) == []
    assert not [p for p in out.rglob(f"{PARTIAL_PREFIX}*")]  # the re-run left no temp file behind


REVIEWER = """
import json, sys
import numpy as np
from storage.workspace import Workspace
from workbench.review import correct, record_decision
ws = Workspace.open(sys.argv[1])
name, classes, out = sys.argv[2], sys.argv[3].split(","), sys.argv[4]
done = {"reviews": [], "corrections": []}
for scan_id in sorted(set(ws.catalog.label_sets()["scan_id"])):
    for cls in classes:
        ls = ws.catalog.current_label_set(scan_id, cls)
        if ls is None:
            continue
        done["reviews"].append(record_decision(ws, scan_id, cls, ls, "accept", name, "ok"))
    cls = classes[0]
    ls = ws.catalog.current_label_set(scan_id, cls)
    if ls is not None:
        mask = ws.masks.read(ws.catalog.label_set_row(ls)["mask_key"], cls) if cls in ws.masks.names(
            ws.catalog.label_set_row(ls)["mask_key"]) else np.zeros(ws.catalog.scan_grid(scan_id)[0], bool)
        c = correct(ws, scan_id, cls, mask, name, "checked")
        done["corrections"].append([c.review_id, c.label_set_id])
with open(out, "w") as f:
    json.dump(done, f)
"""


def test_concurrent_reviewers_with_an_ingest_and_a_pseudolabel_job(
    kits_ws: Workspace,
    checkpoint: Path,
    tmp_path: Path,
    ledger,  # type: ignore[no-untyped-def]
) -> None:
    lits = _write_source(tmp_path / "more", "lits", 3, first_seed=10)
    before = snapshot(kits_ws)
    root = str(kits_ws.root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    jobs = {
        "reviewer a": [
            sys.executable,
            "-c",
            REVIEWER,
            root,
            "dr a",
            "kidney_right,kidney_left",
            str(tmp_path / "a.json"),
        ],
        "reviewer b": [
            sys.executable,
            "-c",
            REVIEWER,
            root,
            "dr b",
            "kidney_tumor,kidney_cyst",
            str(tmp_path / "b.json"),
        ],
        "ingest": [
            sys.executable,
            "-c",
            "import sys; from storage.workspace import Workspace; from workbench.ingest import ingest; "
            "assert not ingest(Workspace.open(sys.argv[1]), 'lits', sys.argv[2], progress=False).skipped",
            root,
            str(lits),
        ],
        "pseudolabel": [
            sys.executable,
            "-c",
            "import sys; from storage.workspace import Workspace; "
            "from workbench.pseudolabel import pseudolabel; "
            "s = pseudolabel(Workspace.open(sys.argv[1]), sys.argv[2], low_res_mm=6.0, sources=['kits23'], "
            "progress=False); assert not s.failed, s.failed",
            root,
            str(checkpoint),
        ],
    }
    procs = {k: subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for k, cmd in jobs.items()}
    errors = {k: p.communicate(timeout=900)[1] for k, p in procs.items() if p.wait(timeout=900) != 0}
    ws = Workspace.open(kits_ws.root)
    result = audit(ws, before)
    committed = [
        json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json") if (tmp_path / f).exists()
    ]
    review_ids = set(ws.catalog.reviews()["id"])
    missing = [
        r
        for c in committed
        for r in c["reviews"] + [rid for rid, _ in c["corrections"]]
        if r not in review_ids
    ]
    sets = set(ws.catalog.label_sets()["id"])
    missing += [ls for c in committed for _, ls in c["corrections"] if ls not in sets]
    ledger.record(
        "concurrent reviewers + ingest + pseudo-label job",
        lost=len(result.lost) + len(missing),
        half_written=len(result.half_written),
    )
    assert errors == {}, {k: v[-1500:] for k, v in errors.items()}
    _assert_clean(result)
    assert missing == [] and len(committed) == 2
    assert ws.catalog.counts()["scan"] == KITS_CASES + 3


#: Case folders that one sanitiser used to map to one export name, and one that is live Markdown.
HOSTILE_CASES = ("case 1", "case_1", "case(1)", "case [log in](https:evil.example)")


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "kits23"
    for seed, case in enumerate(HOSTILE_CASES):
        write_native(make_phantom(seed, shape=SHAPE), get_protocol("kits23"), root, case)
    return root


@pytest.fixture()
def hostile_ws(tmp_path: Path, hostile_data: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    assert len(ingest(ws, "kits23", hostile_data, progress=False).added) == len(HOSTILE_CASES)
    return ws


@pytest.mark.parametrize("fmt", ["abdomenatlas", "nnunet", "monai", "slicer", "uncertainty maps"])
def test_hostile_names_never_share_an_output(hostile_ws: Workspace, tmp_path: Path, ledger, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Every scan gets its own files: nothing written for one scan overwrites another's."""
    from storage.maps import load_uncertainty_map, write_uncertainty_map
    from workbench.export import export_abdomenatlas, export_monai, export_nnunet
    from workbench.review.slicer import export_case_for_slicer

    scans = sorted(set(hostile_ws.catalog.label_sets()["scan_id"]))
    out = tmp_path / "out"
    if fmt == "slicer":
        folders = {next(iter(export_case_for_slicer(hostile_ws, s).values())).parent for s in scans}
        written = len(folders)
    elif fmt == "uncertainty maps":
        for i, s in enumerate(scans):
            write_uncertainty_map(
                hostile_ws, "run-x", s, np.full((2, 2, 2), i, np.float16), np.eye(4), ["liver"]
            )
        values = {
            s: float(load_uncertainty_map(hostile_ws, "run-x", s, on_original_grid=False)[0][0, 0, 0])
            for s in scans
        }
        written = len(set(values.values()))
    else:
        export = {"abdomenatlas": export_abdomenatlas, "nnunet": export_nnunet, "monai": export_monai}[fmt]
        kwargs = {"n_folds": 2} if fmt == "monai" else {}
        # every scan, held-out ones too: the point is that no two names collide
        manifest = export(hostile_ws, out, progress=False, include_held_out=True, **kwargs)
        names = {c["case"] for c in manifest["cases"]}
        written = len(names)
        assert {c["scan_id"] for c in manifest["cases"]} == set(scans)  # the manifest maps names back
        if fmt == "abdomenatlas":
            assert {p.name for p in out.iterdir() if p.is_dir()} == names
        else:
            assert len(list((out / "labelsTr").glob("*.nii.gz"))) == len(scans)
    ledger.record("hostile names (export, Slicer, uncertainty maps)", lost=len(scans) - written)
    assert written == len(scans)


def _truncate(path: Path, n: int = 10) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-n])


@pytest.mark.parametrize("fmt", ["abdomenatlas", "nnunet", "monai"])
def test_a_damaged_mask_file_is_skipped_by_exports(
    kits_ws: Workspace, tmp_path: Path, ledger, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    from workbench.export import export_abdomenatlas, export_monai, export_nnunet

    sets = kits_ws.catalog.label_sets()
    damaged = str(sets["scan_id"].iloc[0])
    _truncate(kits_ws.masks.path(str(sets["mask_key"].iloc[0])))
    out = tmp_path / "out"
    export = {"abdomenatlas": export_abdomenatlas, "nnunet": export_nnunet, "monai": export_monai}[fmt]
    kw = {"n_folds": 2} if fmt == "monai" else {}
    # held-out scans kept: exports leave them out by default (#13), and every undamaged case must come out
    manifest = export(kits_ws, out, progress=False, include_held_out=True, **kw)
    exported = {c["scan_id"] for c in manifest["cases"]}
    skipped = {s["scan_id"] for s in manifest["skipped"]}
    half = [p for p in out.rglob(f"{PARTIAL_PREFIX}*")] + _published_files_that_do_not_read(out)
    lost = KITS_CASES - 1 - len(exported)  # every undamaged case must be exported
    ledger.record("damaged mask file (exports)", lost=lost, half_written=len(half))
    assert skipped == {damaged} and damaged not in exported
    assert lost == 0 and half == []


def test_check_names_a_damaged_mask_file_and_backup_brings_it_back(
    kits_ws: Workspace, tmp_path: Path, ledger
) -> None:  # type: ignore[no-untyped-def]
    from storage.backup import backup_workspace
    from storage.check import check_workspace

    backup = tmp_path / "backup"
    backup_workspace(kits_ws, backup)
    key = str(kits_ws.catalog.label_sets()["mask_key"].iloc[0])
    path = kits_ws.masks.path(key)
    _truncate(path)
    report = check_workspace(kits_ws)
    named = [f for f in report.problems if Path(f.path).name == path.name]
    restored = tmp_path / "restored"
    from storage.backup import restore_backup

    restore_backup(backup, restored)
    after = check_workspace(Workspace.open(restored))
    ledger.record("damaged mask file (check, backup)", lost=int(not after.ok), half_written=0)
    assert len(report.problems) == 1 and len(named) == 1  # exactly that file, by name
    assert after.ok


def test_a_damaged_catalog_gives_one_line_and_the_way_back(kits_ws: Workspace, ledger) -> None:  # type: ignore[no-untyped-def]
    catalog = kits_ws.catalog.path
    masks_before = {p.name: file_sha256(p) for p in kits_ws.masks.root.iterdir() if p.is_file()}
    data = bytearray(catalog.read_bytes())
    data[:4096] = b"\x00" * 4096  # the header
    catalog.write_bytes(bytes(data))
    damaged = catalog.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "--workspace", str(kits_ws.root), "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    masks_after = {p.name: file_sha256(p) for p in kits_ws.masks.root.iterdir() if p.is_file()}
    untouched = catalog.read_bytes() == damaged and masks_after == masks_before
    one_line = proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    ledger.record("damaged catalog header", lost=int(not untouched), handled=one_line)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and str(catalog) in lines[0] and "workbench restore" in lines[0]
    assert untouched


def test_re_ingesting_beside_a_catalog_moved_aside_deletes_no_mask(
    kits_ws: Workspace, kits_data: Path, ledger
) -> None:  # type: ignore[no-untyped-def]
    """A user moves a damaged catalog aside and ingests again: the corrections' and pseudo-labels' mask
    files, which the new catalog does not know, must stay on disk (the old ingest deleted them)."""
    scan_id = str(kits_ws.catalog.label_sets()["scan_id"].iloc[0])
    assert _run(_correction_body(kits_ws.root, scan_id)).returncode == 0
    files_before = {p.name for p in kits_ws.masks.root.iterdir() if p.is_file()}
    kits_ws.catalog.path.rename(kits_ws.catalog.path.with_name("catalog.damaged.duckdb"))
    ws = Workspace.open(kits_ws.root)
    ingest(ws, "kits23", kits_data, progress=False)
    files_after = {p.name for p in ws.masks.root.iterdir() if p.is_file()}
    ledger.record("catalog moved aside, then re-ingest", lost=len(files_before - files_after))
    assert files_before <= files_after


def test_reviewers_are_not_locked_out_by_a_long_export(kits_ws: Workspace, tmp_path: Path, ledger) -> None:  # type: ignore[no-untyped-def]
    """In the middle of an export (its first NIfTI write waits for the reviewer), another process records
    20 decisions. Were the export holding the catalog, the reviewer would wait for it: a deadlock that
    ends in CatalogBusy."""
    import threading
    import time

    from workbench.export import export_nnunet

    ls_id = str(kits_ws.catalog.label_sets()["id"].iloc[0])
    scan_id = str(kits_ws.catalog.label_sets()["scan_id"].iloc[0])
    exporting, reviewed = tmp_path / "exporting", tmp_path / "reviewed"
    writer = f"""
        import pathlib, time
        from storage.workspace import Workspace
        from workbench.review import record_decision
        while not pathlib.Path({str(exporting)!r}).exists():
            time.sleep(0.05)
        ws = Workspace.open({str(kits_ws.root)!r})
        for i in range(20):
            record_decision(ws, {scan_id!r}, "kidney_left", {ls_id!r}, "skip", "dr b", f"note {{i}}")
        pathlib.Path({str(reviewed)!r}).touch()
    """
    real_save = nib.save

    def save_after_the_reviewer(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not exporting.exists():
            exporting.touch()
            deadline = time.monotonic() + 300
            while not reviewed.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real_save(*args, **kwargs)

    result: dict[str, subprocess.CompletedProcess[str]] = {}
    thread = threading.Thread(target=lambda: result.setdefault("writer", _run(writer)))
    nib.save = save_after_the_reviewer  # type: ignore[assignment]
    try:
        thread.start()
        export_nnunet(kits_ws, tmp_path / "out", progress=False)
    finally:
        nib.save = real_save  # type: ignore[assignment]
        thread.join(timeout=600)
    proc = result["writer"]
    decisions = int((kits_ws.catalog.reviews()["decision"] == "skip").sum())
    ledger.record("reviewers writing during an export", lost=20 - decisions, handled=proc.returncode == 0)
    assert proc.returncode == 0 and reviewed.exists(), proc.stderr[-2000:]
    assert decisions == 20
