"""Checkpoints: layouts on disk, strict streaming loading, layout conversion, dummy weights.

`load_components(source, device=..., dtype=...)` is the entry point; `write_checkpoint` is its
inverse. See docs/weights.md for the layouts, versions and FP8 support.
"""

from stepedit.weights.components import Components, load_components, write_checkpoint
from stepedit.weights.formats import detect_layout, detect_version

__all__ = ["Components", "detect_layout", "detect_version", "load_components", "write_checkpoint"]
