"""Speed and memory optimizations for a loaded pipeline, each a switch (see docs/performance.md).

`apply_optimizations(pipeline, preset("exact"))` is the usual entry point; the pieces
(step cache, CFG-parallel, tiling...) are usable on their own. The switches and presets
(`stepedit.acceleration.config`) import without torch, so the CLI can check a mode before it
loads anything; the rest is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepedit.acceleration.config import (
    PRESETS,
    AttentionChoice,
    OptimizationConfig,
    StepCacheConfig,
    parse_mode,
    preset,
)

if TYPE_CHECKING:
    from stepedit.acceleration.apply import AppliedOptimizations, apply_optimizations
    from stepedit.acceleration.attention import AccelerationUnavailable

_LAZY = {
    "AppliedOptimizations": "stepedit.acceleration.apply",
    "apply_optimizations": "stepedit.acceleration.apply",
    "AccelerationUnavailable": "stepedit.acceleration.attention",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "AccelerationUnavailable",
    "AppliedOptimizations",
    "AttentionChoice",
    "OptimizationConfig",
    "StepCacheConfig",
    "apply_optimizations",
    "parse_mode",
    "preset",
]
