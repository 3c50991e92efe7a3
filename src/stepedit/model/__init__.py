"""Model code: the Step1X-Edit DiT, its connector, the FLUX autoencoder and their presets.

Pure `nn.Module`s: no I/O, no settings. Build on the meta device and load with `assign=True`,
or call `init_random_weights` for a seeded random model.
"""

from stepedit.model.attention import get_attention_backend, set_attention_backend
from stepedit.model.autoencoder import AutoEncoder
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.layers import init_random_weights
from stepedit.model.presets import (
    AE_PRESETS,
    DIT_PRESETS,
    TINY_QWEN_HIDDEN,
    AutoEncoderConfig,
    DiTConfig,
    ModelVersion,
)

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
    "init_random_weights",
    "set_attention_backend",
]
