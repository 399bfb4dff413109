"""Planning and per-scan jobs: settings are checked once for every executor, the classes a job predicts,
and a scan that cannot be read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage.workspace import Workspace
from workbench.pseudolabel import JobOptions, Segmenter, plan_jobs, pseudolabel

BAD_SETTINGS = [(1.0, 3.0), (-0.1, 3.0), (0.5, 0.0), (0.5, float("nan"))]


@pytest.mark.parametrize(("overlap", "low_res"), BAD_SETTINGS)
def test_bad_settings_are_refused(
    tmp_path: Path, overlap: float, low_res: float, window_segmenter: Callable[..., Segmenter]
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError):
        pseudolabel(ws, window_segmenter(), overlap=overlap, low_res_mm=low_res, progress=False)


@pytest.mark.parametrize(("overlap", "low_res"), BAD_SETTINGS)
def test_job_options_check_themselves(overlap: float, low_res: float) -> None:
    with pytest.raises(ValueError):
        JobOptions(low_res, overlap)
    assert JobOptions(None, 0.0).low_res_mm is None  # the checkpoint's spacing


def test_all_classes_predicts_annotated_classes_too(lits_ws, window_segmenter) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    scan_id = sorted(truth)[0]
    jobs, _ = plan_jobs(ws, window_segmenter(), scans=[scan_id])
    assert "liver" not in jobs[0].classes  # LiTS annotates the liver
    pseudolabel(ws, window_segmenter(), scans=[scan_id], all_classes=True, low_res_mm=6.0, progress=False)
    ls = ws.catalog.query("SELECT id FROM label_set WHERE scan_id = ? AND origin = 'pseudo'", [scan_id])
    assert ws.catalog.coverage(ls["id"].iloc[0])["liver"] == "annotated_present"


def test_a_vanished_scan_fails_with_one_line_and_writes_nothing(lits_ws, window_segmenter) -> None:  # type: ignore[no-untyped-def]
    ws, truth = lits_ws
    gone, kept = sorted(truth)
    image = Path(ws.catalog.query("SELECT image_path FROM scan WHERE id = ?", [gone])["image_path"].iloc[0])
    image.unlink()
    summary = pseudolabel(ws, window_segmenter(), low_res_mm=6.0, progress=False)
    assert summary.done == [kept]
    assert len(summary.failed) == 1 and summary.failed[0][0] == gone and str(image) in summary.failed[0][1]
    assert "not found" in summary.failed[0][1]
    assert (
        ws.catalog.query(
            "SELECT count(*) AS n FROM label_set WHERE scan_id = ? AND origin = 'pseudo'", [gone]
        )["n"].iloc[0]
        == 0
    )
    assert any(f"failed {gone}" in line for line in summary.lines())


# -- the paper's settings for a release model; the prefetch thread (#12) ---------------------------------


@pytest.mark.parametrize(
    ("kind", "tta", "uncertainty", "expected"),
    [
        ("release", None, True, False),  # the paper's inference: no second prediction unless asked
        ("release", True, True, True),  # --tta
        ("workbench", None, True, True),  # our checkpoints keep their default
        ("workbench", True, False, False),  # no uncertainty, no TTA
    ],
)
def test_tta_runs_only_where_asked_or_by_the_models_default(
    window_segmenter: Callable[..., Segmenter], kind: str, tta: bool | None, uncertainty: bool, expected: bool
) -> None:
    import dataclasses

    seg = dataclasses.replace(window_segmenter(("spleen",)), kind=kind)
    assert JobOptions(3.0, 0.5, "cpu", uncertainty, tta).use_tta(seg) is expected


def test_the_next_scan_is_prepared_while_the_current_one_runs(
    lits_ws: tuple[Workspace, dict],
    window_segmenter: Callable[..., Segmenter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from workbench.pseudolabel import jobs, run

    events: list[tuple[str, str, str]] = []
    real_prepare, real_run = jobs.prepare_scan, jobs.run_scan_job

    def prepare(seg, job, options):  # type: ignore[no-untyped-def]
        events.append(("prepare", job.scan_id, threading.current_thread().name))
        return real_prepare(seg, job, options)

    def run_one(seg, job, options, reference, **kw):  # type: ignore[no-untyped-def]
        events.append(("run", job.scan_id, threading.current_thread().name))
        out = real_run(seg, job, options, reference, **kw)
        events.append(("ran", job.scan_id, threading.current_thread().name))
        return out

    monkeypatch.setattr(run, "prepare_scan", prepare)
    monkeypatch.setattr(run, "run_scan_job", run_one)
    seg = window_segmenter(("spleen",))
    planned, _ = plan_jobs(lits_ws[0], seg, all_classes=True)
    assert len(planned) == 2
    results = list(run.LocalExecutor().results(seg, planned, JobOptions(6.0, 0.5, "cpu", False), {}))
    assert [r.error for r in results] == [None, None]
    first, second = planned[0].scan_id, planned[1].scan_id
    # The second scan is read in the prefetch thread while the first one's prediction runs.
    order = [e[:2] for e in events]
    assert order.index(("run", first)) < order.index(("ran", first))
    assert order.index(("prepare", second)) < order.index(("ran", first))
    assert {t for kind, _, t in events if kind == "prepare"} != {threading.current_thread().name}
