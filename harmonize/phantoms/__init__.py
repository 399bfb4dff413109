"""Synthetic abdominal CT phantoms with exact ground truth, and writers in each source's native layout.

``make_phantom`` builds a seeded CT with masks for the 32 universal classes; ``write_native`` writes it
the way a public source publishes its data (folder layout, label values, orientation, dtypes), so
readers, harmonizers and ingest can be tested end to end against known truth.
"""

from harmonize.phantoms.anatomy import Phantom, make_phantom
from harmonize.phantoms.native import NativeCase, write_native

__all__ = ["NativeCase", "Phantom", "make_phantom", "write_native"]
