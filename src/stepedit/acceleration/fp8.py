"""FP8 (e4m3) weights and dynamically quantized activations for the DiT blocks' Linear layers.

Through torchao's float8 dynamic-activation/float8-weight config with per-row scales, whose
matmuls run on Hopper's FP8 tensor cores (`torch._scaled_mm`). Only the Linears inside the
double and single blocks are quantized: they hold 11.8 of the DiT's 12.4 B parameters, while the
embedders, the connector and the final layer are small and the most sensitive to rounding.

torchao is imported lazily: it is an optional extra (`pip install stepedit[fp8]`). Checked
against torchao 0.18 (`Float8DynamicActivationFloat8WeightConfig`, `PerRow`, `quantize_` with
`filter_fn`; the config API exists since 0.10, the function-style spelling is gone). Its per-row
path asserts bf16 weights, so weights stored in float8 by an FP8 checkpoint
(`stepedit.weights.native.Float8StorageLinear`) are upcast to bf16 first (exact: every float8
value is a bf16 value) and torchao then requantizes them with per-row scales.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stepedit.acceleration.attention import AccelerationUnavailable

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

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
            " (without FP8 use --optimize exact; with --offload the bf16 DiT, about 25 GB, must "
            "fit on the GPU)"
        )


def check_fp8_dtype(dtype: torch.dtype) -> None:
    """torchao's per-row float8 path takes bf16 weights and activations only."""
    if dtype != torch.bfloat16:
        raise AccelerationUnavailable(
            f"FP8 needs the bf16 pipeline (torchao's per-row float8 takes bf16), not {dtype}"
        )


def torchao_version() -> str | None:
    try:
        return str(importlib.import_module("torchao").__version__)
    except ImportError:
        return None


def _fp8_config() -> Any:
    try:
        quantization = importlib.import_module("torchao.quantization")
    except ImportError as exc:
        raise AccelerationUnavailable("FP8 needs torchao: pip install 'stepedit[fp8]'") from exc
    config_type = getattr(quantization, "Float8DynamicActivationFloat8WeightConfig", None)
    if config_type is None:
        raise AccelerationUnavailable(
            f"torchao {torchao_version()} has no Float8DynamicActivationFloat8WeightConfig: "
            "pip install 'stepedit[fp8]' (torchao >= 0.14)"
        )
    return config_type(granularity=quantization.PerRow())


def upcast_float8_storage(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Turn the FP8-storage Linears of `module` (an FP8 checkpoint's block Linears) into plain
    `dtype` Linears, in place, on their current device; returns how many were converted."""
    count = 0
    for child in module.modules():
        if isinstance(child, nn.Linear) and child.weight.dtype in FLOAT8_DTYPES:
            weight = child.weight.detach().to(dtype)
            child.__class__ = nn.Linear  # drop Float8StorageLinear's per-call upcast
            child.weight = nn.Parameter(weight, requires_grad=False)
            count += 1
    return count


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
    return quantize_blocks(dit, device)


def quantize_blocks(dit: nn.Module, device: torch.device) -> int:
    """`quantize_dit_fp8` without the device check (torchao itself checks the hardware)."""
    config = _fp8_config()
    quantization = importlib.import_module("torchao.quantization")

    def quantize(block: nn.Module) -> int:
        count = sum(1 for m in block.modules() if is_fp8_eligible(m))
        quantization.quantize_(block, config, filter_fn=is_fp8_eligible)
        return count

    count, upcast = quantize_block_by_block(dit, device, torch.bfloat16, quantize)
    if upcast:
        logger.info("FP8: %d float8-stored Linears upcast to bf16 for torchao", upcast)
    logger.info(
        "FP8: quantized %d Linear layers of the DiT blocks (torchao %s)", count, torchao_version()
    )
    return count


def quantize_block_by_block(
    dit: nn.Module, device: torch.device, dtype: torch.dtype, quantize: Callable[[nn.Module], int]
) -> tuple[int, int]:
    """Move `dit` to `device` one block at a time, each block's float8-stored Linears upcast to
    `dtype` and the block then `quantize`d there; returns (what `quantize` counted, Linears
    upcast). One block at a time keeps the peak at the quantized model plus one unquantized
    block, so a DiT loaded on the CPU fits the card."""
    count = upcast = 0
    for name, child in dit.named_children():
        if name in _BLOCK_LISTS:
            assert isinstance(child, nn.ModuleList)
            for block in child:
                block.to(device)
                upcast += upcast_float8_storage(block, dtype)
                count += quantize(block)
        else:
            child.to(device)
    dit.to(device)  # parameters and buffers held by the DiT itself
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count, upcast
