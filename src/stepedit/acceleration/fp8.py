"""FP8 (e4m3) weights and dynamically quantized activations for the DiT blocks' Linear layers.

Through torchao's float8 dynamic-activation/float8-weight config with per-row scales, whose
matmuls run on Hopper's FP8 tensor cores (`torch._scaled_mm`). Only the Linears inside the
double and single blocks are quantized: they hold 11.8 of the DiT's 12.4 B parameters, while the
embedders, the connector and the final layer are small and the most sensitive to rounding.

torchao is imported lazily: it is an optional extra (`pip install stepedit[fp8]`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from stepedit.acceleration.attention import AccelerationUnavailable

logger = logging.getLogger(__name__)

_BLOCK_LISTS = ("double_blocks", "single_blocks")


def check_fp8_device(device: torch.device) -> None:
    """Raise AccelerationUnavailable unless `device` has FP8 tensor cores (sm_89 / sm_90+)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise AccelerationUnavailable(
            f"FP8 needs an NVIDIA GPU with FP8 tensor cores (H100/H200/L40S/RTX 40xx); "
            f"the pipeline runs on {device}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise AccelerationUnavailable(
            f"FP8 needs compute capability 8.9 or newer; {name} has {capability[0]}.{capability[1]}"
        )


def _fp8_config() -> Any:
    try:
        quantization = importlib.import_module("torchao.quantization")
    except ImportError as exc:
        raise AccelerationUnavailable("FP8 needs torchao: pip install 'stepedit[fp8]'") from exc
    granularity = quantization.PerRow()
    if hasattr(quantization, "Float8DynamicActivationFloat8WeightConfig"):
        return quantization.Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
    # torchao < 0.10 spells the same config as a function.
    return quantization.float8_dynamic_activation_float8_weight(granularity=granularity)


def is_fp8_eligible(module: nn.Module, fqn: str = "") -> bool:
    # _scaled_mm needs both matrix dimensions divisible by 16.
    return (
        isinstance(module, nn.Linear)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_dit_fp8(dit: nn.Module, device: torch.device) -> int:
    """Quantize the block Linears of `dit` in place, moving the DiT to `device` block by block.

    Moving one block at a time and quantizing it on the GPU keeps the peak at the FP8 model plus
    one bf16 block, so a DiT loaded on the CPU fits a 24 GB card. Returns the number of Linears.
    """
    check_fp8_device(device)
    quantization = importlib.import_module("torchao.quantization")
    config = _fp8_config()
    count = 0
    for name, child in dit.named_children():
        if name in _BLOCK_LISTS:
            assert isinstance(child, nn.ModuleList)
            for block in child:
                block.to(device)
                count += sum(1 for m in block.modules() if is_fp8_eligible(m))
                quantization.quantize_(block, config, filter_fn=is_fp8_eligible)
        else:
            child.to(device)
    dit.to(device)  # parameters and buffers held by the DiT itself
    torch.cuda.empty_cache()
    logger.info("FP8: quantized %d Linear layers of the DiT blocks", count)
    return count
