"""Queue scores and reasons from uncertainty signals and run statistics; rescore (``pseudolabel.scoring``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.workspace import Workspace
from workbench.pseudolabel import scoring as q


@pytest.fixture()
def ws(uncertainty_ws: Workspace) -> Workspace:
    return uncertainty_ws


def test_the_issue_example_reads_as_words() -> None:
    score, reasons = q.assess("kidney_left", {"volume_z": 3.1, "components": 2, "expected_components": 1})
    assert reasons == ["volume 3.1 sd above the catalog mean", "2 components (annotated scans: 1)"]
    sev_volume = (3.1 - 2.0) / 1.5
    expected = 1 - (1 - q.WEIGHTS["volume"] * sev_volume) * (1 - q.WEIGHTS["components"] * 0.8)
    assert score == pytest.approx(expected)


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        (
            {"side": "left", "side_offset_mm": -42.0},
            "centroid 42 mm on the patient's right of the body midline",
        ),
        (
            {"side": "right", "side_offset_mm": -10.0},
            "centroid 10 mm on the patient's left of the body midline",
        ),
        (
            {"present": False, "in_region": True, "expected_presence": 0.95, "n_reference": 20},
            "predicted absent although the scan covers where it lies (present in 95% of 20 annotated scans)",
        ),
        ({"outside_parent": 0.8, "parent": "liver"}, "80% lies outside its organ (liver)"),
        ({"overlap": 0.3, "overlap_with": "stomach"}, "30% overlaps stomach"),
        ({"volume_z": -2.9}, "volume 2.9 sd below the catalog mean"),
        ({"tta_disagreement": 0.6}, "test-time augmentations disagree (1 - Dice 0.60)"),
        ({"entropy": 0.8}, "uncertain (mean entropy 0.80 bits)"),
    ],
)
def test_each_signal_gives_its_reason(signals: dict[str, object], reason: str) -> None:
    score, reasons = q.assess("kidney_left", signals)
    assert reasons == [reason] and score > 0.3


@pytest.mark.parametrize(
    "signals",
    [
        {"side": "left", "side_offset_mm": 30.0},  # right side for a left organ
        {"present": False, "in_region": False, "expected_presence": 1.0},  # outside the scan's region
        {"present": False, "in_region": True, "expected_presence": 0.3},  # often absent anyway
        {"outside_parent": 0.02},
        {"overlap": 0.01, "overlap_with": "stomach"},
        {"volume_z": 1.5},
        {"components": 1, "expected_components": 1},
        {"tta_disagreement": 0.1, "entropy": 0.2},
        {},
    ],
)
def test_plausible_items_score_zero_and_give_no_reason(signals: dict[str, object]) -> None:
    assert q.assess("kidney_left", signals) == (0.0, [])


def test_reasons_are_ordered_by_weighted_severity() -> None:
    _, reasons = q.assess(
        "spleen", {"entropy": 0.8, "side": "left", "side_offset_mm": -50.0, "volume_z": 2.5}
    )
    # weighted severities: side 1.0 * 1.0, entropy 0.4 * 1.0, volume 0.85 * (0.5 / 1.5)
    assert [r.split()[0] for r in reasons] == ["centroid", "uncertain", "volume"]


@pytest.mark.parametrize(("n_rare", "n_common"), [(0, 10), (3, 100), (10, 1000)])
def test_long_tail_boost_favours_rare_classes(n_rare: int, n_common: int) -> None:
    sig = {"volume_z": 3.0}
    base, _ = q.assess("spleen", sig)
    rare, _ = q.assess("spleen", sig, n_rare, long_tail_boost=0.5)
    common, _ = q.assess("spleen", sig, n_common, long_tail_boost=0.5)
    assert rare == pytest.approx(base * (1 + 0.5 / (1 + n_rare) ** 0.5))
    assert rare > common > base
    assert q.assess("spleen", sig, n_rare, long_tail_boost=0.0)[0] == base


def test_rescore_stores_scores_and_reasons(ws: Workspace) -> None:
    assert q.rescore(ws) == 4
    stored = ws.catalog.query("SELECT * FROM uncertainty WHERE class_name = 'liver_tumor'").iloc[0]
    expected, reasons = q.assess("liver_tumor", {"outside_parent": 0.9, "parent": "liver"}, 0)
    assert stored["score"] == pytest.approx(expected) and list(stored["reasons"]) == reasons
    assert json.loads(stored["signals"])["parent"] == "liver"


@pytest.mark.parametrize(
    ("z", "z_run", "expected"),
    [
        (3.0, None, 3.0),
        (3.0, 5.0, 3.0),
        (4.0, 2.5, 2.5),
        (-4.0, -3.0, -3.0),
        (3.0, -1.0, 0.0),
        (None, 2.0, None),
    ],
)
def test_volume_z_counts_only_as_far_as_catalog_and_run_agree(
    z: float | None, z_run: float | None, expected: float | None
) -> None:
    assert q._volume_z({"volume_z": z, "volume_z_run": z_run}) == expected


def test_run_statistics_are_robust_and_need_enough_items() -> None:
    vols = [100.0, 110.0, 90.0, 105.0, 95.0, 400.0]
    records = [
        {
            "run_id": "r",
            "class_name": "spleen",
            "signals": {"volume_ml": v, "tta_disagreement": t, "entropy": None},
        }
        for v, t in zip(vols, [0.1, 0.2, 0.3, 0.2, 0.2, 0.9])
    ]
    few = [{"run_id": "r", "class_name": "liver", "signals": {"volume_ml": 1000.0}} for _ in range(4)]
    q.add_run_statistics(records + few)
    logv = np.log(vols)
    med = np.median(logv)
    scale = max(1.4826 * np.median(np.abs(logv - med)), 0.15)
    assert records[-1]["signals"]["volume_z_run"] == pytest.approx((np.log(400.0) - med) / scale, abs=1e-3)
    assert records[0]["signals"]["tta_run_median"] == pytest.approx(0.2)
    assert "entropy_run_median" not in records[0]["signals"]
    assert all("volume_z_run" not in r["signals"] for r in few)


@pytest.mark.parametrize(
    ("near_ml", "near_p", "severity"),
    [
        (2.0, 0.4, 1.0),  # a faint 2 mL region that reached 0.4: a missed structure
        (0.25, 0.4, 0.5),  # half the volume that counts fully
        (2.0, 0.3, 0.5),  # half-way from 0.2 to 0.4
        (2.0, 0.15, 0.0),  # below the near-miss probability: nothing seen
        (0.0, 0.1, None),  # no region at all: no near miss signal
    ],
)
def test_a_near_miss_of_a_class_predicted_absent(
    near_ml: float, near_p: float, severity: float | None
) -> None:
    sev = q.severities({"present": False, "near_miss_ml": near_ml, "near_miss_p": near_p})
    if severity is None:
        assert "near_miss" not in sev
        return
    assert sev["near_miss"][0] == pytest.approx(severity)
    score, reasons = q.assess(
        "liver_tumor", {"present": False, "near_miss_ml": near_ml, "near_miss_p": near_p}
    )
    assert score == pytest.approx(q.WEIGHTS["near_miss"] * severity)
    if severity >= q.REASON_SEVERITY:
        assert reasons == [
            f"predicted absent, but the model saw {near_ml:.1f} mL at probability up to {near_p:.2f}"
        ]


def test_a_near_miss_never_scores_a_class_predicted_present() -> None:
    assert "near_miss" not in q.severities({"present": True, "near_miss_ml": 5.0, "near_miss_p": 0.45})
