"""Seeded random weights for the model tests (the `dummy:` sources seed each tensor by its key,
see `stepedit.weights.dummy`; these tests only need a module filled deterministically)."""

from __future__ import annotations

import torch
from torch import nn

from stepedit.model.connector import SCALE_FACTOR_INIT


@torch.no_grad()
def init_random_weights(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Fill every parameter of `module` deterministically from `generator`: Linear/conv weights
    ~ N(0, std), biases 0, norm weights 1, `scale_factor` the value the reference creates it with.
    Values are drawn on the CPU in float32 and copied, so a seed gives the same weights anywhere.
    """
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "scale_factor":
            value = torch.full(param.shape, SCALE_FACTOR_INIT)
        elif leaf == "bias":
            value = torch.zeros(param.shape)
        elif leaf == "scale" or param.ndim == 1:
            value = torch.ones(param.shape)  # RMSNorm.scale, LayerNorm/GroupNorm weight
        else:
            value = torch.randn(param.shape, generator=generator) * std
        param.copy_(value.to(device=param.device, dtype=param.dtype))
