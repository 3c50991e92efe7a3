"""Model code: the Step1X-Edit DiT, its connector, the FLUX autoencoder and their presets.

Pure `nn.Module`s: no I/O, no settings. Build on the meta device and load with `assign=True`
(`stepedit.weights`), or use a `dummy:` source for a seeded random model. The presets import
without torch (the CLI checks a request against them before anything loads); the modules are
imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stepedit.model.presets import (
    AE_PRESETS,
    DIT_PRESETS,
    TINY_QWEN_HIDDEN,
    AutoEncoderConfig,
    DiTConfig,
    ModelVersion,
)

if TYPE_CHECKING:
    from stepedit.model.attention import get_attention_backend, set_attention_backend
    from stepedit.model.autoencoder import AutoEncoder
    from stepedit.model.dit import Step1XEditDiT

_LAZY = {
    "AutoEncoder": "stepedit.model.autoencoder",
    "Step1XEditDiT": "stepedit.model.dit",
    "get_attention_backend": "stepedit.model.attention",
    "set_attention_backend": "stepedit.model.attention",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AE_PRESETS",
    "DIT_PRESETS",
    "TINY_QWEN_HIDDEN",
    "AutoEncoder",
    "AutoEncoderConfig",
    "DiTConfig",
    "ModelVersion",
    "Step1XEditDiT",
    "get_attention_backend",
    "set_attention_backend",
]
