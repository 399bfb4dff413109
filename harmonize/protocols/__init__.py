"""Source protocols: one reviewable TOML file per public dataset, in ``sources/``.

File format (documented once here; every file in ``sources/`` obeys it):

.. code-block:: toml

    id = "kits23"                       # short snake_case source id
    name = "KiTS23"                     # display name
    protocol_version = 1                # bump when the mapping changes
    reference = "https://..."           # where the label values were checked
    description = "..."                 # one paragraph: what the dataset is, what is special
    default_origin = "original"         # original (expert annotation, default) | pseudo (a tool's output)
    tool = "TotalSegmentator 2.x"       # pseudo only, and then required: the tool and its version
    extends = "totalsegmentator"        # optional: take the mapping tables of this built-in protocol

    [layout]
    kind = "paired"                     # paired | per_class_files | dicom_png
    image = ["{case}/imaging.nii.gz"]   # path templates relative to the dataset root; {case} is the case id,
    label = ["{case}/segmentation.nii.gz"]  # other {names} match one path part; image[i] pairs label[i]
    # per_class_files: ``label`` names a folder holding one binary file (or DICOM folder) per class;
    # dicom_png: ``image`` names DICOM series folders and ``label`` a folder of PNG slice masks.

    [labels]                            # paired / dicom_png: native value -> universal targets
    "1" = ["kidney"]                    # a pair name ("kidney") means: merged, split left/right
    "2" = ["kidney", "kidney_tumor"]    # tumour drawn inside its organ: the voxel counts for both

    [files]                             # per_class_files: file stem -> universal targets
    kidney_left = ["kidney_left"]

    [inclusion]                         # optional rules
    case_number = '(\\d+)'              # regex giving the case number ...
    case_number_range = [1, 500]        # ... and the range to keep (AMOS22: 1-500 are CT)
    exclude_cases = ["case_00160"]      # cases excluded by the dataset's own errata
    label_values_must_be_known = true   # unknown native values are an error (default true)

    [unmapped]                          # defined by the source, no universal class: ignored, noted
    "5" = "bone"

    [native]                            # how the published files look (used by the phantom writers)
    axcodes = "LPS"                     # direction of the array axes, as nibabel's aff2axcodes; for a
                                        # DICOM series: column, row, direction of rising file names
    label_dtype = "uint8"
    image_dtype = "int16"
    mask_value = 1                      # per-class files: foreground value (default 1; 255 in DICOM)
    class_file_suffix = ".nii.gz"       # per-class files: ending (default: that of the image)

    [approximate]                       # honest notes where the mapping is not exact
    femur_left = "whole femur, universal class is the head of femur"

    tumour_free = ["liver_tumor"]       # optional: tumour classes no patient of the source has (its
                                        # cohort is healthy: CHAOS donors, Pancreas-CT); external
                                        # evaluation scores them as absent (patient-level specificity)
    paper_id = "04"                     # optional: the Universal Model paper's id of this dataset (its
                                        # TEMPLATE keys "01".."14", "10_03", ...)
    paper_overlap = ["10_03"]           # optional: other paper ids whose scans this source contains

Every class that appears in a target (after expanding pairs) is *annotated* by the source: a scan
without it is ``annotated_absent``. All other classes are ``not_annotated``. ``extra_annotated`` lists
classes annotated though no value is drawn for them (rare).

``default_origin`` says what the labels of the source are: ``original`` for annotations that experts
drew or corrected (ground truth for ``evaluate``, counted as annotated in the statistics), ``pseudo`` for
a segmentation tool's output (model predictions: ingested as ``pseudo`` label sets of a ``tool`` run,
reviewable like the workbench's own pseudo-labels, never ground truth). ``tool`` names the tool and its
version; it is required for ``pseudo`` and refused for ``original``.

``extends`` names a built-in protocol whose mapping this one shares: its ``layout``, ``labels``,
``files``, ``unmapped``, ``inclusion``, ``approximate``, ``native`` and ``extra_annotated`` are taken
unless this file sets them (one level: the base may not extend another). The TotalSegmentator tool's
per-class output shares the TotalSegmentator dataset's file names, but not its origin.

``[unmapped]`` lists native values (label maps) or file stems (per-class folders) that the source
defines but that have no universal class, with their meaning (``"5" = "bone"``). They are ignored and
noted; any value that is in neither ``[labels]`` nor ``[unmapped]`` is an error, unless
``[inclusion] label_values_must_be_known = false``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from harmonize.taxonomy import CLASSES, PAIRS, expand_target

LAYOUT_KINDS = ("paired", "per_class_files", "dicom_png")

#: What a protocol's labels may be on ingest: an expert annotation or a tool's prediction.
DEFAULT_ORIGINS = ("original", "pseudo")


@dataclass(frozen=True)
class Layout:
    """Where a source's image/label pairs sit in its published folder layout.

    Args:
        kind: ``paired`` (one label map per image), ``per_class_files`` (a folder of one binary file per
            class) or ``dicom_png`` (a DICOM series folder and a folder of PNG slice masks).
        images: path templates of the images, relative to the dataset root, e.g.
            ``imagesTr/amos_{case}.nii.gz``. ``{case}`` is the case id; any other ``{name}`` matches one
            path component.
        labels: the matching label templates; ``labels[i]`` belongs to ``images[i]``.
    """

    kind: str
    images: tuple[str, ...]
    labels: tuple[str, ...]

    def image_glob(self, i: int) -> str:
        """Glob pattern of template ``i`` (placeholders become ``*``)."""
        return re.sub(r"\{[a-z_]+\}", "*", self.images[i])

    def image_regex(self, i: int) -> re.Pattern[str]:
        """Regex matching a relative image path of template ``i``, with one named group per placeholder."""
        parts = re.split(r"(\{[a-z_]+\})", self.images[i])
        out = []
        for part in parts:
            if part.startswith("{") and part.endswith("}"):
                out.append(f"(?P<{part[1:-1]}>[^/]+?)")
            else:
                out.append(re.escape(part))
        return re.compile("^" + "".join(out) + "$")

    def label_path(self, i: int, fields: dict[str, str]) -> str:
        """The relative label path for an image matched by template ``i``."""
        return self.labels[i].format(**fields)


@dataclass(frozen=True)
class Protocol:
    """A public source's label protocol, loaded from its TOML file.

    Args:
        id: short snake_case source id (``kits23``).
        name: display name.
        protocol_version: version of this mapping; stored with every ingested label set.
        layout: folder layout of the published dataset.
        labels: native value -> targets (class or pair names), for label maps.
        files: file stem -> targets, for one-file-per-class sources.
        inclusion: optional inclusion rules (see module docstring).
        approximate: class -> note, where the mapping is only approximate.
        native: how the published files look (axcodes, dtypes); informs the phantom writers.
        unmapped: native value (as a string) or file stem -> meaning, for what the source defines but
            the taxonomy has no class for.
        reference: where the values were checked.
        description: a paragraph for humans.
        default_origin: ``original`` (expert labels) or ``pseudo`` (a tool's output), the origin of the
            label sets an ingest writes.
        tool: for ``pseudo``: the tool and its version (``"TotalSegmentator 2.x"``); empty otherwise.
        extends: the built-in protocol whose mapping tables this one shares, or empty.
        tumour_free: tumour classes no patient of the source has (a healthy cohort), in model order.
        paper_id: the Universal Model paper's id of this dataset ('' when it is not one of its sources).
        paper_overlap: other paper ids whose scans this source contains (e.g. LiTS is MSD Task03's set).
    """

    id: str
    name: str
    protocol_version: int
    layout: Layout
    labels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inclusion: dict[str, Any] = field(default_factory=dict)
    approximate: dict[str, str] = field(default_factory=dict)
    native: dict[str, Any] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)
    extra_annotated: tuple[str, ...] = ()
    reference: str = ""
    description: str = ""
    default_origin: str = "original"
    tool: str = ""
    extends: str = ""
    tumour_free: tuple[str, ...] = ()
    paper_id: str = ""
    paper_overlap: tuple[str, ...] = ()

    @property
    def paper_sources(self) -> tuple[str, ...]:
        """The paper's dataset ids whose scans this source holds: ``paper_id`` first, then
        ``paper_overlap``; empty when the paper did not use its scans."""
        return tuple(dict.fromkeys(i for i in (self.paper_id, *self.paper_overlap) if i))

    @property
    def is_tool_output(self) -> bool:
        """Whether the labels are a tool's predictions (``default_origin = "pseudo"``)."""
        return self.default_origin == "pseudo"

    @property
    def targets(self) -> list[tuple[str, ...]]:
        return list(self.labels.values()) + list(self.files.values())

    @property
    def annotated(self) -> tuple[str, ...]:
        """Universal classes this source annotates, in model order."""
        names = {c for targets in self.targets for t in targets for c in expand_target(t)}
        names.update(self.extra_annotated)
        return tuple(c.name for c in CLASSES if c.name in names)

    @property
    def merged_pairs(self) -> tuple[str, ...]:
        """Pair names (``kidney``) that this source draws as one label and that need a split."""
        return tuple(sorted({t for targets in self.targets for t in targets if t in PAIRS}))

    def include_case(self, case_id: str) -> bool:
        """Whether the inclusion rules keep this case."""
        if case_id in self.inclusion.get("exclude_cases", ()):
            return False
        pattern = self.inclusion.get("case_number")
        if pattern:
            m = re.search(pattern, case_id)
            if not m:
                return False
            lo, hi = self.inclusion.get("case_number_range", (None, None))
            n = int(m.group(1))
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                return False
        return True

    @property
    def strict_values(self) -> bool:
        return bool(self.inclusion.get("label_values_must_be_known", True))


def _targets(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: targets must be a non-empty list of class or pair names")
    for t in raw:
        expand_target(t)  # raises with the list of valid names
    return tuple(raw)


def _origin(data: dict[str, Any]) -> tuple[str, str]:
    """``(default_origin, tool)`` of a protocol's data, checked: a tool is named exactly for ``pseudo``."""
    origin = data.get("default_origin", "original")
    tool = data.get("tool", "")
    if origin not in DEFAULT_ORIGINS:
        raise ValueError(f"default_origin {origin!r} is not one of {DEFAULT_ORIGINS}")
    if not isinstance(tool, str):
        raise ValueError(f"tool must be a string, got {tool!r}")
    if origin == "pseudo" and not tool.strip():
        raise ValueError(
            'default_origin = "pseudo" needs tool = "<name> <version>" (the tool that made the labels)'
        )
    if origin == "original" and tool.strip():
        raise ValueError(f'tool = {tool!r} is only for default_origin = "pseudo" (a tool\'s output)')
    return origin, tool.strip()


def _tumour_free(raw: Any) -> tuple[str, ...]:
    """The ``tumour_free`` list, checked: tumour classes of the taxonomy, returned in model order."""
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise ValueError(f"tumour_free must be a list of tumour class names, got {raw!r}")
    tumours = [c.name for c in CLASSES if c.is_tumor]
    bad = sorted(set(raw) - set(tumours))
    if bad:
        raise ValueError(f"tumour_free names {bad}, which are not tumour classes ({', '.join(tumours)})")
    return tuple(n for n in tumours if n in raw)


def _paper_ids(data: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """``(paper_id, paper_overlap)`` of a protocol's data, checked to be strings."""
    pid, overlap = data.get("paper_id", ""), data.get("paper_overlap", [])
    if not isinstance(pid, str):
        raise ValueError(f'paper_id must be a string such as "04", got {pid!r}')
    if not isinstance(overlap, list) or not all(isinstance(i, str) and i for i in overlap):
        raise ValueError(f"paper_overlap must be a list of paper ids, got {overlap!r}")
    return pid, tuple(overlap)


def parse_protocol(data: dict[str, Any], origin: str = "<toml>") -> Protocol:
    """Validate a protocol's TOML data and build the :class:`Protocol`; errors name ``origin``."""
    try:
        lay = data["layout"]
        kind = lay["kind"]
        if kind not in LAYOUT_KINDS:
            raise ValueError(f"layout.kind {kind!r} is not one of {LAYOUT_KINDS}")
        images = (lay["image"],) if isinstance(lay["image"], str) else tuple(lay["image"])
        label_templates = (lay["label"],) if isinstance(lay["label"], str) else tuple(lay["label"])
        if len(images) != len(label_templates) or not images:
            raise ValueError("layout.image and layout.label need the same number of templates")
        if any("{case}" not in t for t in images):
            raise ValueError("every layout.image template needs a {case} placeholder")
        layout = Layout(kind, images, label_templates)
        labels = {int(k): _targets(v, f"{origin} labels.{k}") for k, v in data.get("labels", {}).items()}
        files = {str(k): _targets(v, f"{origin} files.{k}") for k, v in data.get("files", {}).items()}
        if kind == "per_class_files" and not files:
            raise ValueError("a per_class_files layout needs a [files] table")
        if kind != "per_class_files" and not labels:
            raise ValueError(f"a {kind} layout needs a [labels] table")
        if 0 in labels:
            raise ValueError("value 0 is background and cannot map to a class")
        unmapped_keys = [str(k) for k in data.get("unmapped", {})]
        if kind != "per_class_files" and not all(k.isdigit() for k in unmapped_keys):
            raise ValueError(f"[unmapped] keys of a {kind} layout must be label values, got {unmapped_keys}")
        both = sorted(set(map(str, labels)) & set(unmapped_keys))
        if both:
            raise ValueError(f"values {both} are both in [labels] and [unmapped]")
        default_origin, tool = _origin(data)
        extra = tuple(data.get("extra_annotated", ()))
        for name in extra:
            expand_target(name)
        paper_id, paper_overlap = _paper_ids(data)
        return Protocol(
            id=data["id"],
            name=data["name"],
            protocol_version=int(data["protocol_version"]),
            layout=layout,
            labels=labels,
            files=files,
            inclusion=dict(data.get("inclusion", {})),
            approximate=dict(data.get("approximate", {})),
            native=dict(data.get("native", {})),
            unmapped={str(k): str(v) for k, v in data.get("unmapped", {}).items()},
            extra_annotated=extra,
            reference=data.get("reference", ""),
            description=data.get("description", "").strip(),
            default_origin=default_origin,
            tool=tool,
            extends=str(data.get("extends", "")),
            tumour_free=_tumour_free(data.get("tumour_free", [])),
            paper_id=paper_id,
            paper_overlap=paper_overlap,
        )
    except KeyError as e:
        raise ValueError(f"{origin}: missing key {e}") from None
    except (ValueError, re.error) as e:
        raise ValueError(f"{origin}: {e}") from None


#: The tables a protocol with ``extends`` takes from its base unless it sets them itself.
SHARED_TABLES = (
    "layout",
    "labels",
    "files",
    "unmapped",
    "inclusion",
    "approximate",
    "native",
    "extra_annotated",
)


def resolve_extends(data: dict[str, Any], origin: str, builtins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A protocol's TOML data with the mapping tables of the protocol it ``extends`` filled in.

    Args:
        data: the protocol's TOML data.
        origin: where it came from (named in errors).
        builtins: source id -> TOML data of every built-in protocol.

    Returns:
        ``data`` itself without ``extends``, else a merged copy.

    Raises:
        ValueError: an unknown base, or a base that extends another.
    """
    base_id = data.get("extends")
    if base_id is None:
        return data
    base = builtins.get(str(base_id))
    if base is None:
        raise ValueError(
            f"{origin}: extends unknown source {base_id!r}; known: {', '.join(sorted(builtins))}"
        )
    if "extends" in base:
        raise ValueError(f"{origin}: extends {base_id!r}, which extends another protocol (one level only)")
    return {**{k: base[k] for k in SHARED_TABLES if k in base}, **data}


def load_protocol_file(path: str | Path) -> Protocol:
    """Load one protocol TOML file (for users who write their own; ``extends`` may name a built-in)."""
    path = Path(path)
    with path.open("rb") as f:
        data = tomllib.load(f)
    return parse_protocol(resolve_extends(data, str(path), _builtin_data()), str(path))


@cache
def _builtin_data() -> dict[str, dict[str, Any]]:
    """Source id -> TOML data of every built-in protocol file (before ``extends`` is resolved)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__package__).joinpath("sources").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            source = str(data.get("id", entry.name))
            if source in out:
                raise ValueError(f"sources/{entry.name}: duplicate source id {source!r}")
            out[source] = {**data, "_file": entry.name}
    return out


@cache
def all_protocols() -> dict[str, Protocol]:
    """Every built-in protocol, by source id, sorted by id."""
    builtins = _builtin_data()
    out: dict[str, Protocol] = {}
    for source, raw in sorted(builtins.items(), key=lambda kv: kv[1]["_file"]):
        where = f"sources/{raw['_file']}"
        data = {k: v for k, v in raw.items() if k != "_file"}
        out[source] = parse_protocol(resolve_extends(data, where, builtins), where)
    return dict(sorted(out.items()))


def get_protocol(source_id: str) -> Protocol:
    """The built-in protocol of ``source_id``; the error lists the known ids."""
    protos = all_protocols()
    if source_id not in protos:
        raise KeyError(f"unknown source {source_id!r}; known sources: {', '.join(protos)}")
    return protos[source_id]


def sources_table() -> pd.DataFrame:
    """One row per built-in source: ``source, name, layout, n_classes, annotated, split`` (comma-separated
    class and pair names), ``origin`` (``original``, or ``pseudo (<tool>)`` for a tool's output), in
    source id order."""
    rows = [
        {
            "source": p.id,
            "name": p.name,
            "layout": p.layout.kind,
            "n_classes": len(p.annotated),
            "annotated": ", ".join(p.annotated),
            "split": ", ".join(p.merged_pairs),
            "origin": f"pseudo ({p.tool})" if p.is_tool_output else "original",
        }
        for p in all_protocols().values()
    ]
    return pd.DataFrame(rows)
