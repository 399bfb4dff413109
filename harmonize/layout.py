"""Find a source's image/label pairs in its published folder layout.

Example:
    >>> from harmonize.protocols import get_protocol
    >>> cases = find_cases(get_protocol("kits23"), "/path/to/kits23/dataset")  # doctest: +SKIP
    >>> cases[0].case_id, cases[0].image.name  # doctest: +SKIP
    ('case_00000', 'imaging.nii.gz')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harmonize.errors import HarmonizeError
from harmonize.protocols import Protocol


@dataclass(frozen=True)
class CaseFiles:
    """One case of a source on disk.

    Args:
        case_id: the case id from the layout template (``case_00012``).
        image: the image file (or DICOM series folder).
        label: the label map file, or the folder of per-class files / PNG masks.
        template: index of the layout template that matched.
        excluded: why the inclusion rules drop this case, else ``None``.
    """

    case_id: str
    image: Path
    label: Path
    template: int = 0
    excluded: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def find_cases(protocol: Protocol, root: str | Path) -> list[CaseFiles]:
    """All cases of ``protocol`` under ``root``, sorted by case id, inclusion rules applied.

    Cases that the inclusion rules drop are returned with ``excluded`` set (so a summary can say why);
    a missing label file is *not* checked here (the ingest reports it per case).

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
        for path in sorted(root.glob(layout.image_glob(t))):
            rel = path.relative_to(root).as_posix()
            m = pattern.match(rel)
            if not m:
                continue
            fields = {k: v for k, v in m.groupdict().items() if v is not None}
            case_id = fields["case"]
            if case_id in found:
                continue  # the first template wins (e.g. a training copy over a validation copy)
            label = root / layout.label_path(t, fields)
            excluded = None if protocol.include_case(case_id) else "excluded by the source's inclusion rules"
            found[case_id] = CaseFiles(case_id, path, label, t, excluded, fields)
    if not found:
        expected = ", ".join(f"'{p}'" for p in layout.images)
        raise HarmonizeError(
            root,
            f"does not look like {protocol.name} ({protocol.id}): no file matches its layout {expected}",
        )
    return [found[k] for k in sorted(found)]
