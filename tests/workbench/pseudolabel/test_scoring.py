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
        (0.0325, 0.4, 0.5),  # half the volume that counts fully (a 5 mm sphere, 0.065 mL)
        (2.0, 0.2, 0.75),  # half-way from 0.1 to 0.3: 0.5 + 0.5 * 0.5
        (2.0, 0.1, 0.5),  # at the near-miss probability: a compact region half-seen, worth a look
        (0.091, 0.13, 0.575),  # one 4.5 mm voxel at 0.13: 0.5 + 0.5 * 0.15
        (2.0, 0.05, 0.0),  # below the near-miss probability: nothing seen
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
            f"predicted absent, but the model saw {near_ml:.2f} mL at probability up to {near_p:.2f}"
        ]


def test_a_near_miss_never_scores_a_class_predicted_present() -> None:
    assert "near_miss" not in q.severities({"present": True, "near_miss_ml": 5.0, "near_miss_p": 0.45})


@pytest.mark.parametrize(
    ("peak", "presence", "severity"),
    [
        (None, 1.0, 1.0),  # no probabilities (a tool run): "missing" in full, as before
        (0.0, 1.0, 0.2),  # the model is sure nothing is there: confirm a true absence
        (0.02, 1.0, 0.2),  # at the confident-absence level
        (0.06, 1.0, 0.6),  # half-way from 0.02 to 0.1: 0.2 + 0.8 * 0.5
        (0.1, 1.0, 1.0),  # the model half-saw it: a miss
        (0.45, 1.0, 1.0),  # a natural miss just under the threshold
        (0.0, 0.8, 0.16),  # the catalog's presence still scales it
    ],
)
def test_missing_is_tempered_by_the_model_s_own_evidence_of_absence(
    peak: float | None, presence: float, severity: float
) -> None:
    signals = {"present": False, "in_region": True, "expected_presence": presence, "n_reference": 12}
    sev = q.severities({**signals, "absent_peak_p": peak})
    assert sev["missing"][0] == pytest.approx(severity)
    if peak is not None and peak <= q.CONFIDENT_ABSENT_P:
        assert "confirm a true absence" in sev["missing"][1]
    else:
        assert sev["missing"][1].startswith("predicted absent although the scan covers where it lies")


@pytest.mark.parametrize(
    ("peak", "match", "severity", "says"),
    [
        (0.0, 0.05, 0.2, "5% of the other side's mirror at its density): confirm a true absence"),
        (0.0, 0.1, 1.0, "; 10% of the other side's mirror has its density"),  # the CT says it is there
        (0.0, 0.8, 1.0, "; 80% of the other side's mirror has its density"),
        (0.3, 0.05, 1.0, "predicted absent although the scan covers where it lies"),  # the model saw it
    ],
)
def test_a_confident_absence_counts_only_where_the_ct_agrees(
    peak: float, match: float, severity: float, says: str
) -> None:
    signals = {"present": False, "in_region": True, "expected_presence": 1.0, "n_reference": 12}
    sev = q.severities({**signals, "absent_peak_p": peak, "twin_density_match": match})
    assert sev["missing"][0] == pytest.approx(severity)
    assert says in sev["missing"][1]
