"""Checkpoints: sources (paths, Hub repo ids, dummy), layouts on disk, strict streaming loading,
layout conversion.

`load_components(source, device=..., dtype=...)` is the entry point; `write_checkpoint` is its
inverse. `resolve_checkpoint` is its pre-flight check (every file found, or one `MissingWeights`
naming all that are missing) and `fetch_checkpoint` downloads what a source needs into the
Hugging Face cache. See docs/weights.md for sources, layouts, versions and FP8 support.

The pre-flight (`checkpoint`, `formats`, `hub`) reads only file names, JSON and safetensors
headers and imports no torch, so the CLI and the server check a source before loading anything;
the loaders are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stepedit.weights.checkpoint import (
    Checkpoint,
    MissingWeights,
    TextEncoder,
    detect_version,
    fetch_checkpoint,
    resolve_checkpoint,
)
from stepedit.weights.formats import detect_layout
from stepedit.weights.hub import DEFAULT_TEXT_ENCODER

if TYPE_CHECKING:
    from stepedit.weights.components import Components, load_components, write_checkpoint

_LAZY = {
    "Components": "stepedit.weights.components",
    "load_components": "stepedit.weights.components",
    "write_checkpoint": "stepedit.weights.components",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "Checkpoint",
    "Components",
    "MissingWeights",
    "TextEncoder",
    "detect_layout",
    "detect_version",
    "fetch_checkpoint",
    "load_components",
    "resolve_checkpoint",
    "write_checkpoint",
]
