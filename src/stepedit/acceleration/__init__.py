"""Speed and memory optimizations for a loaded pipeline, each a switch (see docs/performance.md).

`apply_optimizations(pipeline, preset("exact"))` is the usual entry point; the pieces
(step cache, CFG-parallel, request batching, tiling...) are usable on their own.
"""

from stepedit.acceleration.apply import AppliedOptimizations, apply_optimizations
from stepedit.acceleration.attention import AccelerationUnavailable
from stepedit.acceleration.config import (
    PRESETS,
    AttentionChoice,
    OptimizationConfig,
    StepCacheConfig,
    preset,
)

__all__ = [
    "PRESETS",
    "AccelerationUnavailable",
    "AppliedOptimizations",
    "AttentionChoice",
    "OptimizationConfig",
    "StepCacheConfig",
    "apply_optimizations",
    "preset",
]
