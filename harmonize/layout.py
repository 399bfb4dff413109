"""Find a source's image/label pairs in its published folder layout.

Example:
    >>> from harmonize.protocols import get_protocol
    >>> cases = find_cases(get_protocol("kits23"), "/path/to/kits23/dataset")  # doctest: +SKIP
    >>> cases[0].case_id, cases[0].image.name  # doctest: +SKIP
    ('case_00000', 'imaging.nii.gz')
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field, replace
from pathlib import Path

from harmonize.errors import HarmonizeError
from harmonize.protocols import Layout, Protocol
from harmonize.readers._files import BROKEN_LINK

#: The problem of a case whose label file (or folder) is there and whose image is not.
LABEL_WITHOUT_IMAGE = "label without image"


@dataclass(frozen=True)
class CaseFiles:
    """One case of a source on disk.

    Args:
        case_id: the case id from the layout template (``case_00012``).
        image: the image file (or DICOM series folder).
        label: the label map file, or the folder of per-class files / PNG masks.
        template: index of the layout template that matched.
        excluded: why the inclusion rules drop this case, else ``None``.
        fields: the values of the template's placeholders (``case``, ``batch``, ...).
        problem: why this case cannot be read before any file is opened (:data:`LABEL_WITHOUT_IMAGE`,
            a broken link of a dataset not fetched yet), else ``None``; ``image`` is then the path the
            image should have.
    """

    case_id: str
    image: Path
    label: Path
    template: int = 0
    excluded: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


def _matches(root: Path, pattern: str) -> list[str]:
    """Relative paths under ``root`` that match a glob ``pattern``, broken symbolic links included
    (``glob.glob`` tests literal components with ``lexists``; ``Path.glob`` drops broken links)."""
    return sorted(glob.glob(pattern, root_dir=root))


def find_cases(protocol: Protocol, root: str | Path) -> list[CaseFiles]:
    """All cases of ``protocol`` under ``root``, sorted by case id, inclusion rules applied.

    Cases that the inclusion rules drop are returned with ``excluded`` set (so a summary can say why);
    a missing label file is *not* checked here (the ingest reports it per case). A case whose image is a
    broken symbolic link (datalad / git-annex content not fetched) or whose label has no image comes back
    with ``problem`` set, so that the ingest names it instead of losing it from the count.

    Raises:
        HarmonizeError: ``root`` is missing, or nothing in it matches the source's layout (the folder is
            not that source, or ROOT points at the wrong level).
    """
    root = Path(root)
    if not root.is_dir():
        raise HarmonizeError(root, "dataset root is not a folder")
    layout = protocol.layout
    found: dict[str, CaseFiles] = {}
    for t in range(len(layout.images)):
        pattern = layout.image_regex(t)
        for rel in _matches(root, layout.image_glob(t)):
            m = pattern.match(Path(rel).as_posix())
            if not m:
                continue
            fields = {k: v for k, v in m.groupdict().items() if v is not None}
            case_id = fields["case"]
            if case_id in found:
                continue  # the first template wins (e.g. a training copy over a validation copy)
            path = root / rel
            label = root / layout.label_path(t, fields)
            excluded = None if protocol.include_case(case_id) else "excluded by the source's inclusion rules"
            problem = BROKEN_LINK if path.is_symlink() and not path.exists() else None
            found[case_id] = CaseFiles(case_id, path, label, t, excluded, fields, problem)
    for case in _labels_without_image(protocol, root, set(found)):
        found.setdefault(case.case_id, case)
    if not found:
        expected = ", ".join(f"'{p}'" for p in layout.images)
        raise HarmonizeError(
            root,
            f"does not look like {protocol.name} ({protocol.id}): no file matches its layout {expected}",
        )
    return [found[k] for k in sorted(found)]


def _labels_without_image(protocol: Protocol, root: Path, known: set[str]) -> list[CaseFiles]:
    """Cases whose label file or folder matches a label template and whose image matches no template."""
    layout = protocol.layout
    # The label templates read as image templates: the same placeholder rules, one implementation.
    as_images = replace(layout, images=layout.labels)
    out: dict[str, CaseFiles] = {}
    for t in range(len(layout.labels)):
        pattern = as_images.image_regex(t)
        for rel in _matches(root, as_images.image_glob(t)):
            m = pattern.match(Path(rel).as_posix())
            if not m or "case" not in m.groupdict():
                continue
            fields = {k: v for k, v in m.groupdict().items() if v is not None}
            case_id = fields["case"]
            if case_id in known or case_id in out:
                continue
            image = root / _image_path(layout, t, fields)
            excluded = None if protocol.include_case(case_id) else "excluded by the source's inclusion rules"
            out[case_id] = CaseFiles(case_id, image, root / rel, t, excluded, fields, LABEL_WITHOUT_IMAGE)
    return [out[k] for k in sorted(out)]


def _image_path(layout: Layout, t: int, fields: dict[str, str]) -> str:
    """The image path template ``t`` gives for ``fields``; the template itself when the label does not
    name all of its placeholders (an image folder below a study and series)."""
    try:
        return layout.images[t].format(**fields)
    except KeyError:
        return layout.images[t]
