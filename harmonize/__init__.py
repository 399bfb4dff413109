"""Label knowledge for public abdominal CT datasets.

Pure functions: arrays and files in, per-class binary masks out. This package imports neither
``storage`` nor ``workbench``.
"""

from harmonize.taxonomy import CLASSES, PAIRS, UniversalClass, class_by_name, class_names
from harmonize.volume import Volume

__all__ = ["CLASSES", "PAIRS", "UniversalClass", "Volume", "class_by_name", "class_names"]
