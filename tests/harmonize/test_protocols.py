"""The built-in source protocols (harmonize/protocols/sources/*.toml) against the datasets' documentation.

The expected sets below were written from each dataset's own documentation (challenge pages, papers,
dataset.json files, official READMEs; see docs/sources.md), not by calling the code under test.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from harmonize.protocols import Protocol, all_protocols, get_protocol, load_protocol_file, parse_protocol

SOURCES_DIR = Path(str(resources.files("harmonize.protocols").joinpath("sources")))

# The Universal Model's 32 classes in its order (index i + 1 is the original's 1-based class number).
UNIVERSAL_ORDER = [
    "spleen", "kidney_right", "kidney_left", "gall_bladder", "esophagus", "liver", "stomach", "aorta",
    "postcava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "duodenum", "hepatic_vessel", "lung_right", "lung_left", "colon", "intestine", "rectum", "bladder",
    "prostate", "femur_left", "femur_right", "celiac_trunk", "kidney_tumor", "liver_tumor",
    "pancreas_tumor", "hepatic_vessel_tumor", "lung_tumor", "colon_tumor", "kidney_cyst",
]  # fmt: skip
PAIR_OF_SIDE = {
    "kidney_left": "kidney", "kidney_right": "kidney", "lung_left": "lung", "lung_right": "lung",
    "adrenal_gland_left": "adrenal_gland", "adrenal_gland_right": "adrenal_gland",
    "femur_left": "femur", "femur_right": "femur",
}  # fmt: skip

KIDNEYS = {"kidney_left", "kidney_right"}
LUNGS = {"lung_left", "lung_right"}
ADRENALS = {"adrenal_gland_left", "adrenal_gland_right"}
FEMURS = {"femur_left", "femur_right"}
BTCV_13 = {
    "spleen", *KIDNEYS, "gall_bladder", "esophagus", "liver", "stomach", "aorta", "postcava",
    "portal_vein_and_splenic_vein", "pancreas", *ADRENALS,
}  # fmt: skip
GIBSON_8 = {"spleen", "kidney_left", "gall_bladder", "esophagus", "liver", "stomach", "pancreas", "duodenum"}
TS_CLASSES = {
    "spleen", *KIDNEYS, "gall_bladder", "liver", "stomach", "pancreas", *ADRENALS, *LUNGS, "esophagus",
    "intestine", "duodenum", "colon", "bladder", "aorta", "postcava", "portal_vein_and_splenic_vein", *FEMURS,
}  # fmt: skip
ATLAS_10 = {"aorta", "gall_bladder", *KIDNEYS, "liver", "pancreas", "postcava", "spleen", "stomach"}

EXPECTED_ANNOTATED: dict[str, set[str]] = {
    "btcv": BTCV_13,
    "pancreas_ct_multiorgan": GIBSON_8,
    "pancreas_ct": {"pancreas"},
    "chaos_ct": {"liver"},
    "lits": {"liver", "liver_tumor"},
    "kits19": {*KIDNEYS, "kidney_tumor"},
    "kits23": {*KIDNEYS, "kidney_tumor", "kidney_cyst"},
    "word": {
        "liver", "spleen", *KIDNEYS, "stomach", "gall_bladder", "esophagus", "pancreas", "duodenum",
        "colon", "intestine", *ADRENALS, "rectum", "bladder", *FEMURS,
    },
    "abdomenct_1k": {"liver", *KIDNEYS, "spleen", "pancreas"},
    "amos22": (BTCV_13 - {"portal_vein_and_splenic_vein"}) | {"duodenum", "bladder"},
    "ct_org": {"liver", "bladder", *LUNGS, *KIDNEYS},
    "msd_liver": {"liver", "liver_tumor"},
    "msd_lung": {"lung_tumor"},
    "msd_pancreas": {"pancreas", "pancreas_tumor"},
    "msd_hepatic_vessel": {"hepatic_vessel", "hepatic_vessel_tumor"},
    "msd_spleen": {"spleen"},
    "msd_colon": {"colon_tumor"},
    "abdomenct_12organ": {
        "liver", *KIDNEYS, "spleen", "pancreas", "aorta", "postcava", "stomach", "gall_bladder",
        "esophagus", *ADRENALS, "celiac_trunk",
    },
    "flare22": (BTCV_13 - {"portal_vein_and_splenic_vein"}) | {"duodenum"},
    "ircadb": {
        "liver", "liver_tumor", "spleen", "gall_bladder", *KIDNEYS, *LUNGS, "pancreas", "stomach",
        "duodenum", "colon", "intestine", "bladder", *ADRENALS, "aorta", "postcava",
        "portal_vein_and_splenic_vein",
    },
    "totalsegmentator": TS_CLASSES | {"prostate", "kidney_cyst"},
    "totalsegmentator_v1": TS_CLASSES,
    "totalsegmentator_v2": TS_CLASSES | {"prostate", "kidney_cyst"},
    "totalsegmentator_v1_tool": TS_CLASSES | {"prostate", "kidney_cyst"},  # v1: no such files
    "totalsegmentator_v2_tool": TS_CLASSES | {"prostate", "kidney_cyst"},
    "abdomenatlas10": ATLAS_10,
    "abdomenatlas11": ATLAS_10
    | {
        *ADRENALS, "bladder", "celiac_trunk", "colon", "duodenum", "esophagus", *FEMURS, "hepatic_vessel",
        "intestine", *LUNGS, "portal_vein_and_splenic_vein", "prostate", "rectum",
    },
}  # fmt: skip

EXPECTED_PAIRS: dict[str, set[str]] = {
    "kits19": {"kidney"},
    "kits23": {"kidney"},
    "abdomenct_1k": {"kidney"},
    "abdomenct_12organ": {"kidney"},
    "word": {"adrenal_gland"},
    "ct_org": {"kidney", "lung"},
    "ircadb": {"kidney", "lung", "adrenal_gland"},  # 'kidneys', 'lungs', 'surrenalgland' folders
}

# (source, a realistic published image path, case id, label path)
PUBLISHED_PATHS = [
    ("btcv", "RawData/Training/img/img0001.nii.gz", "0001", "RawData/Training/label/label0001.nii.gz"),
    (
        "pancreas_ct_multiorgan",
        "Pancreas-CT/PANCREAS_0001/11-24-2015-PANCREAS0001-Pancreas-18957/Pancreas-99667",
        "0001",
        "label_tcia_multiorgan/label0001.nii.gz",
    ),
    (
        "pancreas_ct",
        "Pancreas-CT/PANCREAS_0082/11-24-2015-PANCREAS0082-Pancreas-4390/Pancreas-71376",
        "0082",
        "TCIA_pancreas_labels-02-05-2017/label0082.nii.gz",
    ),
    ("chaos_ct", "Train_Sets/CT/21/DICOM_anon", "21", "Train_Sets/CT/21/Ground"),
    ("lits", "Training Batch 1/volume-0.nii", "0", "Training Batch 1/segmentation-0.nii"),
    ("lits", "Training Batch 2/volume-130.nii", "130", "Training Batch 2/segmentation-130.nii"),
    ("kits19", "case_00123/imaging.nii.gz", "case_00123", "case_00123/segmentation.nii.gz"),
    ("kits23", "case_00588/imaging.nii.gz", "case_00588", "case_00588/segmentation.nii.gz"),
    ("word", "imagesTr/word_0001.nii.gz", "0001", "labelsTr/word_0001.nii.gz"),
    ("word", "imagesVal/word_0101.nii.gz", "0101", "labelsVal/word_0101.nii.gz"),
    ("word", "imagesTs/word_0121.nii.gz", "0121", "labelsTs/word_0121.nii.gz"),
    ("abdomenct_1k", "AbdomenCT-1K-ImagePart1/Case_00001_0000.nii.gz", "00001", "Mask/Case_00001.nii.gz"),
    ("amos22", "imagesTr/amos_0001.nii.gz", "0001", "labelsTr/amos_0001.nii.gz"),
    ("amos22", "imagesVa/amos_0013.nii.gz", "0013", "labelsVa/amos_0013.nii.gz"),
    ("ct_org", "volume-12.nii.gz", "12", "labels-12.nii.gz"),
    ("msd_liver", "imagesTr/liver_0.nii.gz", "0", "labelsTr/liver_0.nii.gz"),
    ("msd_lung", "imagesTr/lung_001.nii.gz", "001", "labelsTr/lung_001.nii.gz"),
    ("msd_pancreas", "imagesTr/pancreas_001.nii.gz", "001", "labelsTr/pancreas_001.nii.gz"),
    ("msd_hepatic_vessel", "imagesTr/hepaticvessel_001.nii.gz", "001", "labelsTr/hepaticvessel_001.nii.gz"),
    ("msd_spleen", "imagesTr/spleen_2.nii.gz", "2", "labelsTr/spleen_2.nii.gz"),
    ("msd_colon", "imagesTr/colon_001.nii.gz", "001", "labelsTr/colon_001.nii.gz"),
    ("abdomenct_12organ", "images/Case_0001_0000.nii.gz", "Case_0001", "labels/Case_0001.nii.gz"),
    ("flare22", "images/FLARE22_Tr_0001_0000.nii.gz", "0001", "labels/FLARE22_Tr_0001.nii.gz"),
    ("flare22", "imagesTr/FLARE22_Tr_0050_0000.nii.gz", "0050", "labelsTr/FLARE22_Tr_0050.nii.gz"),
    ("ircadb", "3Dircadb1.17/PATIENT_DICOM", "17", "3Dircadb1.17/MASKS_DICOM"),
    ("totalsegmentator", "s0011/ct.nii.gz", "s0011", "s0011/segmentations"),
    ("totalsegmentator_v1", "case01/ct.nii.gz", "case01", "case01/segmentations.nii.gz"),
    ("totalsegmentator_v2", "case01/ct.nii.gz", "case01", "case01/segmentations.nii.gz"),
    ("totalsegmentator_v1_tool", "case01/ct.nii.gz", "case01", "case01/segmentations"),
    ("totalsegmentator_v2_tool", "case01/ct.nii.gz", "case01", "case01/segmentations"),
    ("abdomenatlas10", "BDMAP_00000001/ct.nii.gz", "BDMAP_00000001", "BDMAP_00000001/segmentations"),
    ("abdomenatlas11", "BDMAP_00009262/ct.nii.gz", "BDMAP_00009262", "BDMAP_00009262/segmentations"),
]

# Paths that sit beside the data and must not be taken for images.
NOT_IMAGES = [
    ("msd_liver", "imagesTr/._liver_0.nii.gz"),  # macOS resource fork inside the MSD tarballs
    ("msd_spleen", "labelsTr/spleen_2.nii.gz"),  # a label, not an image
    ("kits23", "case_00000/segmentation.nii.gz"),
    ("kits23", "case_00000/instances/kidney_instance-1_annotation-1.nii.gz"),
    ("totalsegmentator", "s0011/segmentations/liver.nii.gz"),
    ("amos22", "labelsTr/amos_0001.nii.gz"),
]

# Our source id -> the original Universal Model's dataset key.
ORIGINAL_KEY = {
    "btcv": "01", "pancreas_ct_multiorgan": "02", "chaos_ct": "03", "lits": "04", "kits19": "05",
    "kits23": "05", "ircadb": "06", "word": "07", "abdomenct_1k": "08", "amos22": "09", "msd_liver": "10_03",
    "msd_lung": "10_06", "msd_pancreas": "10_07", "msd_hepatic_vessel": "10_08", "msd_spleen": "10_09",
    "msd_colon": "10_10", "ct_org": "12", "abdomenct_12organ": "13",
}  # fmt: skip

# Annotated-class deviations from the original's template_classes_annotated, as documented in
# docs/sources.md: (only in the original, only here).
ANNOTATED_DEVIATIONS: dict[str, tuple[set[str], set[str]]] = {
    "btcv": ({"duodenum"}, set()),  # BTCV has 13 labels; 14 (duodenum) is the Gibson relabel's
    "kits19": ({"kidney_cyst"}, set()),  # KiTS19 has no cyst label
    "amos22": ({"prostate"}, set()),  # AMOS value 15 is prostate OR uterus
    "ircadb": (
        set(),
        {
            "liver_tumor",
            "aorta",
            "postcava",
            "portal_vein_and_splenic_vein",
            *ADRENALS,
            "duodenum",
            "colon",
            "intestine",
            "bladder",
        },
    ),
}

# Per-value deviations from the original's label transfer (after its tumour-inside and left/right split
# rules): (source, original key, native value) -> (original targets, our targets).
TRANSFER_DEVIATIONS: dict[tuple[str, str, int], tuple[set[str], set[str]]] = {
    ("btcv", "01", 14): ({"duodenum"}, set()),
    ("chaos_ct", "03", 1): ({"liver"}, set()),  # the original read a converted 0/1 copy
    ("chaos_ct", "03", 255): (set(), {"liver"}),  # the published PNG masks are 0/255
    ("kits19", "05", 3): ({"kidney", "kidney_cyst"}, set()),
    ("amos22", "09", 15): ({"prostate"}, set()),
    # Zenodo 7860267, cited by the original for '13', holds FLARE22's 13-label maps:
    ("flare22", "13", 2): ({"kidney"}, {"kidney_right"}),
    ("flare22", "13", 7): ({"stomach"}, {"adrenal_gland_right"}),
    ("flare22", "13", 8): ({"gall_bladder"}, {"adrenal_gland_left"}),
    ("flare22", "13", 9): ({"esophagus"}, {"gall_bladder"}),
    ("flare22", "13", 10): ({"adrenal_gland_right"}, {"esophagus"}),
    ("flare22", "13", 11): ({"adrenal_gland_left"}, {"stomach"}),
    ("flare22", "13", 12): ({"celiac_trunk"}, {"duodenum"}),
    ("flare22", "13", 13): (set(), {"kidney_left"}),
}
TRANSFER_COMPARED = [*(k for k in ORIGINAL_KEY.items() if k[1] != "06"), ("flare22", "13")]

# TotalSegmentator names (v1 and v2 `total` tasks) that have a universal class: name -> our targets.
TS_NAME_TO_TARGETS = {
    "spleen": {"spleen"}, "kidney_right": {"kidney_right"}, "kidney_left": {"kidney_left"},
    "gallbladder": {"gall_bladder"}, "liver": {"liver"}, "stomach": {"stomach"}, "pancreas": {"pancreas"},
    "adrenal_gland_right": {"adrenal_gland_right"}, "adrenal_gland_left": {"adrenal_gland_left"},
    "lung_upper_lobe_left": {"lung_left"}, "lung_lower_lobe_left": {"lung_left"},
    "lung_upper_lobe_right": {"lung_right"}, "lung_middle_lobe_right": {"lung_right"},
    "lung_lower_lobe_right": {"lung_right"}, "esophagus": {"esophagus"}, "small_bowel": {"intestine"},
    "duodenum": {"duodenum"}, "colon": {"colon"}, "urinary_bladder": {"bladder"}, "prostate": {"prostate"},
    "kidney_cyst_left": {"kidney_left", "kidney_cyst"}, "kidney_cyst_right": {"kidney_right", "kidney_cyst"},
    "aorta": {"aorta"}, "inferior_vena_cava": {"postcava"},
    "portal_vein_and_splenic_vein": {"portal_vein_and_splenic_vein"}, "femur_left": {"femur_left"},
    "femur_right": {"femur_right"},
}  # fmt: skip


def _match(proto: Protocol, path: str) -> tuple[int, dict[str, str]] | None:
    for i in range(len(proto.layout.images)):
        m = proto.layout.image_regex(i).match(path)
        if m:
            return i, m.groupdict()
    return None


def _toml_files() -> list[Path]:
    return sorted(SOURCES_DIR.glob("*.toml"))


def test_every_builtin_toml_parses_and_is_loaded() -> None:
    files = _toml_files()
    assert len(files) == len(EXPECTED_ANNOTATED)
    loaded = {load_protocol_file(f).id for f in files}
    assert loaded == set(all_protocols()) == set(EXPECTED_ANNOTATED)


@pytest.mark.parametrize("path", _toml_files(), ids=lambda p: p.stem)
def test_id_is_snake_case_and_equals_the_file_name(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", data["id"])
    assert data["id"] == path.stem
    assert data["reference"].strip() and data["description"].strip()


@pytest.mark.parametrize("source", sorted(EXPECTED_ANNOTATED))
def test_annotated_classes_match_the_documentation(source: str) -> None:
    assert set(get_protocol(source).annotated) == EXPECTED_ANNOTATED[source]


@pytest.mark.parametrize("source", sorted(EXPECTED_ANNOTATED))
def test_merged_pairs_match_the_documentation(source: str) -> None:
    assert set(get_protocol(source).merged_pairs) == EXPECTED_PAIRS.get(source, set())


@pytest.mark.parametrize(("source", "image", "case", "label"), PUBLISHED_PATHS)
def test_layout_matches_a_published_path(source: str, image: str, case: str, label: str) -> None:
    proto = get_protocol(source)
    found = _match(proto, image)
    assert found is not None, f"{source}: no template matches {image}"
    i, fields = found
    assert fields["case"] == case
    assert proto.layout.label_path(i, fields) == label


def test_every_source_has_a_published_path_case() -> None:
    assert {s for s, *_ in PUBLISHED_PATHS} == set(EXPECTED_ANNOTATED)


@pytest.mark.parametrize(("source", "path"), NOT_IMAGES)
def test_files_beside_the_images_are_not_matched(source: str, path: str) -> None:
    assert _match(get_protocol(source), path) is None


@pytest.mark.parametrize(
    ("case", "kept"),
    [("0001", True), ("0013", True), ("0500", True), ("0501", False), ("0507", False), ("0600", False)],
)
def test_amos_keeps_ct_cases_1_to_500_only(case: str, kept: bool) -> None:
    assert get_protocol("amos22").include_case(case) is kept


@pytest.mark.parametrize(("case", "kept"), [("0001", True), ("0024", True), ("0025", False), ("0082", True)])
def test_pancreas_ct_drops_the_withdrawn_case(case: str, kept: bool) -> None:
    assert get_protocol("pancreas_ct_multiorgan").include_case(case) is kept


def _switch_off_reason(toml_text: str) -> str | None:
    """The comment that explains ``label_values_must_be_known = false`` (same line or the line above).

    Returns ``None`` when the switch is off without a comment, ``""`` when it is not switched off.
    """
    lines = toml_text.splitlines()
    for i, line in enumerate(lines):
        code, _, comment = line.partition("#")
        if re.fullmatch(r"\s*label_values_must_be_known\s*=\s*false\s*", code):
            above = lines[i - 1].strip() if i else ""
            reason = comment.strip() or (above[1:].strip() if above.startswith("#") else "")
            return reason or None
    return ""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[inclusion]\ncase_number = '(\\d+)'\n", ""),
        ("[inclusion]\nlabel_values_must_be_known = true\n", ""),
        ("[inclusion]\nlabel_values_must_be_known = false\n", None),
        ("[inclusion]\nlabel_values_must_be_known = false  #\n", None),
        (
            "[inclusion]\nlabel_values_must_be_known = false  # values vary per release\n",
            "values vary per release",
        ),
        (
            "[inclusion]\n# ids above 9 are noise\nlabel_values_must_be_known = false\n",
            "ids above 9 are noise",
        ),
    ],
)
def test_switch_off_reason_reads_the_comment(text: str, reason: str | None) -> None:
    assert _switch_off_reason(text) == reason


# Per-class-file sources are left out: only the stems of [files] are read, unknown values cannot occur.
LABEL_MAP_FILES = [f for f in _toml_files() if load_protocol_file(f).layout.kind != "per_class_files"]


@pytest.mark.parametrize("path", LABEL_MAP_FILES, ids=lambda p: p.stem)
def test_label_map_protocols_keep_the_unknown_value_check_unless_a_comment_says_why(path: Path) -> None:
    proto = load_protocol_file(path)
    reason = _switch_off_reason(path.read_text())
    assert reason is not None, f"{path.name} switches label_values_must_be_known off without saying why"
    assert proto.strict_values is (reason == "")


@pytest.mark.parametrize("path", _toml_files(), ids=lambda p: p.stem)
def test_unmapped_keys_fit_the_layout(path: Path) -> None:
    proto = load_protocol_file(path)
    assert all(meaning.strip() for meaning in proto.unmapped.values())
    if proto.layout.kind == "per_class_files":
        assert not set(proto.unmapped) & set(proto.files)
    else:
        assert all(re.fullmatch(r"[1-9][0-9]*", k) for k in proto.unmapped)


@pytest.mark.parametrize(
    ("source", "unmapped"),
    [
        ("amos22", {"15": "prostate/uterus"}),
        ("ct_org", {"5": "bone", "6": "brain"}),
        ("btcv", {}),
        ("kits23", {}),
    ],
)
def test_documented_unmapped_values(source: str, unmapped: dict[str, str]) -> None:
    assert get_protocol(source).unmapped == unmapped


# 3D-IRCADb structure folders without a universal class (or ambiguous), as listed in docs/sources.md.
IRCADB_UNMAPPED = {
    "bone", "skin", "heart", "biliarysystem", "Hyperplasie", "lymphNodes", "metal", "metastasectomie",
    "sigmoid", "stomachoesophage", "Stones", "uterus", "tumor", "leftsurretumor", "rightsurretumor",
}  # fmt: skip


def test_ircadb_lists_its_unmapped_structure_folders() -> None:
    assert set(get_protocol("ircadb").unmapped) == IRCADB_UNMAPPED


@pytest.mark.parametrize(
    ("source", "value", "targets"),
    [
        ("word", 12, {"adrenal_gland"}),  # one value for both glands: split, not 'right only'
        ("ct_org", 3, {"lung"}),
        ("ct_org", 4, {"kidney"}),
        ("kits23", 3, {"kidney", "kidney_cyst"}),
        ("lits", 2, {"liver", "liver_tumor"}),
        ("msd_hepatic_vessel", 2, {"hepatic_vessel_tumor"}),
        ("chaos_ct", 255, {"liver"}),
    ],
)
def test_key_native_values(source: str, value: int, targets: set[str]) -> None:
    assert set(get_protocol(source).labels[value]) == targets


@pytest.mark.parametrize("source", ["ircadb"])
def test_ircadb_lists_numbered_tumour_folders(source: str) -> None:
    files = get_protocol(source).files
    for i in range(1, 21):
        assert set(files[f"livertumor{i:02d}"]) == {"liver", "liver_tumor"}


def _reference(shared_reference: Path) -> dict:
    return json.loads((shared_reference / "universal_model_tables.json").read_text())


def test_reference_class_order_is_ours(shared_reference: Path) -> None:
    ref = _reference(shared_reference)
    assert len(ref["organ_name_1based"]) == len(UNIVERSAL_ORDER) == 32


@pytest.mark.parametrize("source", sorted(ORIGINAL_KEY))
def test_annotated_differs_from_the_original_only_where_documented(
    source: str, shared_reference: Path
) -> None:
    ref = _reference(shared_reference)
    original = {UNIVERSAL_ORDER[i - 1] for i in ref["template_classes_annotated"][ORIGINAL_KEY[source]]}
    ours = set(get_protocol(source).annotated)
    assert (original - ours, ours - original) == ANNOTATED_DEVIATIONS.get(source, (set(), set()))


def _original_targets(ref: dict, key: str, value: int) -> set[str]:
    """What the original's transfer + tumour-inside + left/right split make of one native value."""
    table = ref["label_transfer_raw_to_universal"][key]
    index = table[value - 1] if 1 <= value <= len(table) else 0
    if not index:
        return set()
    out = {UNIVERSAL_ORDER[index - 1]}
    if [value, index] in ref["tumor_inside_organ"].get(key, []):
        out.add(UNIVERSAL_ORDER[table[0] - 1])  # tumour voxels become the template's first organ
    split = {p.replace(" ", "_") for p in ref["left_right_split"].get(key, [])}
    return {PAIR_OF_SIDE.get(c) if PAIR_OF_SIDE.get(c) in split else c for c in out}  # type: ignore[misc]


@pytest.mark.parametrize(("source", "key"), TRANSFER_COMPARED)
def test_label_transfer_differs_only_where_documented(source: str, key: str, shared_reference: Path) -> None:
    ref = _reference(shared_reference)
    proto = get_protocol(source)
    values = set(proto.labels) | set(range(1, len(ref["label_transfer_raw_to_universal"][key]) + 1))
    deviations = {}
    for v in sorted(values):
        theirs, ours = _original_targets(ref, key, v), set(proto.labels.get(v, ()))
        if theirs != ours:
            deviations[(source, key, v)] = (theirs, ours)
    expected = {k: d for k, d in TRANSFER_DEVIATIONS.items() if k[:2] == (source, key)}
    assert deviations == expected


@pytest.mark.parametrize(
    ("source", "task"), [("totalsegmentator_v2", "total"), ("totalsegmentator_v1", "total_v1")]
)
def test_totalsegmentator_ids_follow_the_class_map(source: str, task: str, shared_fixtures: Path) -> None:
    class_map = json.loads((shared_fixtures / "totalsegmentator" / "class_map.json").read_text())[task]
    proto = get_protocol(source)
    expected = {int(i): TS_NAME_TO_TARGETS[n] for i, n in class_map.items() if n in TS_NAME_TO_TARGETS}
    assert {v: set(t) for v, t in proto.labels.items()} == expected


@pytest.mark.parametrize(
    ("source", "task"), [("totalsegmentator_v2", "total"), ("totalsegmentator_v1", "total_v1")]
)
def test_totalsegmentator_labels_and_unmapped_cover_exactly_the_class_map(
    source: str, task: str, shared_fixtures: Path
) -> None:
    class_map = json.loads((shared_fixtures / "totalsegmentator" / "class_map.json").read_text())[task]
    proto = get_protocol(source)
    assert not set(map(str, proto.labels)) & set(proto.unmapped)
    assert set(map(str, proto.labels)) | set(proto.unmapped) == set(class_map)
    assert proto.unmapped == {i: n for i, n in class_map.items() if n not in TS_NAME_TO_TARGETS}


def test_totalsegmentator_dataset_lists_every_v1_and_v2_name(shared_fixtures: Path) -> None:
    class_map = json.loads((shared_fixtures / "totalsegmentator" / "class_map.json").read_text())
    names = set(class_map["total"].values()) | set(class_map["total_v1"].values())
    proto = get_protocol("totalsegmentator")
    assert set(proto.files) | set(proto.unmapped) == names
    assert set(proto.unmapped) == names - set(TS_NAME_TO_TARGETS)


def test_totalsegmentator_dataset_files_use_the_v2_names(shared_fixtures: Path) -> None:
    class_map = json.loads((shared_fixtures / "totalsegmentator" / "class_map.json").read_text())
    names_v2 = set(class_map["total"].values())
    files = get_protocol("totalsegmentator").files
    assert set(files) <= names_v2
    assert {n: set(t) for n, t in files.items()} == {
        n: TS_NAME_TO_TARGETS[n] for n in names_v2 & set(TS_NAME_TO_TARGETS)
    }


def test_real_amos_label_map_values_are_known(shared_fixtures: Path) -> None:
    nib = pytest.importorskip("nibabel")
    import numpy as np

    img = nib.load(shared_fixtures / "amos" / "amos_0013_label.nii.gz")
    values = {int(v) for v in np.unique(np.asarray(img.dataobj))} - {0}
    proto = get_protocol("amos22")
    assert values == set(range(1, 16))
    assert values - set(proto.labels) == {15}  # only prostate/uterus is left unmapped ...
    assert proto.unmapped == {"15": "prostate/uterus"}  # ... and it is declared, so the map is valid
    assert "".join(nib.aff2axcodes(img.affine)) == proto.native["axcodes"]


# ------------------------------------------------------------------------------- default origin (#13)

#: Which built-in protocols describe a tool's predictions, decided from each protocol's reference: the
#: TotalSegmentator DATASET's labels were model-assisted and corrected by annotators (expert labels); the
#: outputs of running the TotalSegmentator TOOL (multilabel v1/v2, or one file per class) are predictions.
TOOL_OUTPUTS = {
    "totalsegmentator_v1": "TotalSegmentator 1.x",
    "totalsegmentator_v2": "TotalSegmentator 2.x",
    "totalsegmentator_v1_tool": "TotalSegmentator 1.x",
    "totalsegmentator_v2_tool": "TotalSegmentator 2.x",
}


@pytest.mark.parametrize("source", sorted(EXPECTED_ANNOTATED))
def test_every_protocol_says_whether_its_labels_are_expert_or_a_tool_output(source: str) -> None:
    proto = get_protocol(source)
    if source in TOOL_OUTPUTS:
        assert (proto.default_origin, proto.tool, proto.is_tool_output) == (
            "pseudo",
            TOOL_OUTPUTS[source],
            True,
        )
    else:
        assert (proto.default_origin, proto.tool, proto.is_tool_output) == ("original", "", False)


@pytest.mark.parametrize("source", ["totalsegmentator_v1_tool", "totalsegmentator_v2_tool"])
def test_the_per_class_tool_outputs_share_the_dataset_mapping(source: str) -> None:
    tool, dataset = get_protocol(source), get_protocol("totalsegmentator")
    assert tool.extends == "totalsegmentator"
    assert (tool.files, tool.unmapped, tool.layout, tool.approximate) == (
        dataset.files,
        dataset.unmapped,
        dataset.layout,
        dataset.approximate,
    )
    assert tool.id == source and tool.name != dataset.name


BASE = {
    "id": "x",
    "name": "x",
    "protocol_version": 1,
    "layout": {"kind": "paired", "image": "{case}.nii.gz", "label": "{case}_seg.nii.gz"},
    "labels": {"1": ["liver"]},
}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"default_origin": "pseudo"}, r'x\.toml: default_origin = "pseudo" needs tool = "<name> <version>"'),
        ({"tool": "nnU-Net 2.5"}, r"x\.toml: tool = 'nnU-Net 2\.5' is only for default_origin = \"pseudo\""),
        (
            {"default_origin": "revised"},
            r"x\.toml: default_origin 'revised' is not one of \('original', 'pseudo'\)",
        ),
    ],
)
def test_bad_origins_are_refused(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_protocol({**BASE, **extra}, "x.toml")


def test_a_user_protocol_may_extend_a_built_in_one(tmp_path: Path) -> None:
    path = tmp_path / "my_ts.toml"
    path.write_text(
        'id = "my_ts"\nname = "my TotalSegmentator run"\nprotocol_version = 1\n'
        'default_origin = "pseudo"\ntool = "TotalSegmentator 2.3"\nextends = "totalsegmentator"\n'
    )
    proto = load_protocol_file(path)
    assert proto.files == get_protocol("totalsegmentator").files and proto.tool == "TotalSegmentator 2.3"
    path.write_text('id = "y"\nname = "y"\nprotocol_version = 1\nextends = "nope"\n')
    with pytest.raises(ValueError, match=r"my_ts\.toml: extends unknown source 'nope'"):
        load_protocol_file(path)
    path.write_text('id = "y"\nname = "y"\nprotocol_version = 1\nextends = "totalsegmentator_v2_tool"\n')
    with pytest.raises(ValueError, match="which extends another protocol"):
        load_protocol_file(path)


def test_the_sources_table_says_which_sources_are_tool_outputs() -> None:
    from harmonize.protocols import sources_table

    origin = dict(zip(sources_table()["source"], sources_table()["origin"]))
    assert origin["totalsegmentator_v2"] == "pseudo (TotalSegmentator 2.x)"
    assert origin["totalsegmentator_v1_tool"] == "pseudo (TotalSegmentator 1.x)"
    assert origin["totalsegmentator"] == origin["kits23"] == "original"
    assert sum(o.startswith("pseudo") for o in origin.values()) == len(TOOL_OUTPUTS)


# The paper's dataset id per source (its TEMPLATE keys), and the ids whose scans a source shares, from the
# datasets' own descriptions: LiTS is MSD Task03's training set and 131 of CT-ORG's 140 scans; AbdomenCT-1K
# gathers LiTS, KiTS19, MSD Spleen / Pancreas and NIH Pancreas-CT; the 12-organ set is AbdomenCT-1K's.
PAPER_SOURCES = {
    **{source: (key,) for source, key in ORIGINAL_KEY.items()},
    "btcv": ("01", "01_2"),
    "pancreas_ct": ("02",),
    "lits": ("04", "10_03", "12"),
    "msd_liver": ("10_03", "04", "12"),
    "ct_org": ("12", "04", "10_03"),
    "abdomenct_1k": ("08", "02", "04", "05", "10_03", "10_07", "10_09"),
    "abdomenct_12organ": ("13", "08"),
    "flare22": ("13", "10_07"),  # FLARE22 images are MSD Task07 images
}
# CHAOS: potential liver donors; Pancreas-CT (both label sets): kidney donors and patients without major
# abdominal pathology or pancreatic lesions (TCIA's collection page).
HEALTHY = ("liver_tumor", "kidney_tumor", "pancreas_tumor")
TUMOUR_FREE = {"chaos_ct": HEALTHY, "pancreas_ct": HEALTHY, "pancreas_ct_multiorgan": HEALTHY}


@pytest.mark.parametrize("source", sorted(EXPECTED_ANNOTATED))
def test_paper_ids_name_the_papers_datasets(source: str) -> None:
    assert get_protocol(source).paper_sources == PAPER_SOURCES.get(source, ())


@pytest.mark.parametrize("source", sorted(EXPECTED_ANNOTATED))
def test_tumour_free_sources_are_the_healthy_cohorts(source: str) -> None:
    assert set(get_protocol(source).tumour_free) == set(TUMOUR_FREE.get(source, ()))


def test_the_external_test_set_is_no_training_source_of_the_release() -> None:
    from workbench.model.registry import RELEASE_SOURCES

    trained = {i for ids in RELEASE_SOURCES.values() for i in ids}
    assert get_protocol("ircadb").paper_id == "06" and "06" not in trained
    assert {"01", "02", "03", "04", "05"} <= trained


def _with(**extra: object) -> dict[str, object]:
    return {
        "id": "x",
        "name": "X",
        "protocol_version": 1,
        "layout": {"kind": "paired", "image": ["{case}.nii.gz"], "label": ["{case}_seg.nii.gz"]},
        "labels": {"1": ["liver"]},
        **extra,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tumour_free": ["liver"]}, "not tumour classes"),
        ({"tumour_free": "liver_tumor"}, "must be a list"),
        ({"paper_id": 4}, "paper_id must be a string"),
        ({"paper_overlap": "04"}, "paper_overlap must be a list"),
    ],
)
def test_bad_paper_and_tumour_free_fields_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_protocol(_with(**extra), "x.toml")


def test_tumour_free_is_kept_in_model_order() -> None:
    p = parse_protocol(_with(tumour_free=["pancreas_tumor", "kidney_tumor"]), "x.toml")
    assert p.tumour_free == ("kidney_tumor", "pancreas_tumor")


@pytest.mark.parametrize(("case", "kept"), [("0001", True), ("0025", False), ("0070", False), ("0082", True)])
def test_pancreas_ct_drops_the_two_withdrawn_duplicates(case: str, kept: bool) -> None:
    assert get_protocol("pancreas_ct").include_case(case) is kept
