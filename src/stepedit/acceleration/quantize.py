"""Weight-only quantization of the DiT's block Linears and of the MLLM, for 16 GB cards.

Three schemes, all through torchao (`pip install 'stepedit[16gb]'`; checked against torchao 0.18):

- "int8": per-output-channel int8 weights (`Int8WeightOnlyConfig`), upcast inside the matmul.
  Runs on CPU and CUDA. 1 byte per weight: the DiT blocks' 11.8 B parameters take 11.0 GiB.
- "nf4": 4-bit NormalFloat in blocks of 64 with double-quantized block scales (QLoRA's format,
  `torchao.quantization.to_nf4`); the Linear dequantizes its weight to the activation dtype per
  call and runs a plain matmul, so it costs a weight-sized temporary, not a special kernel.
  Runs on CPU and CUDA. ~4.1 bits per weight: 5.7 GiB for the DiT blocks.
- "int4": torchao's int4 weight-only with tinygemm kernels (`Int4WeightOnlyConfig`, group 128,
  `tile_packed_to_4d`): CUDA and bf16 only; refused elsewhere with AccelerationUnavailable.

Only the Linears inside `double_blocks` and `single_blocks` of the DiT are quantized (11.8 of its
12.4 B parameters); the embedders, the connector and the final layer stay in the pipeline dtype,
as with FP8. For the MLLM every Linear is quantized except a `lm_head` tied to the embeddings.
Modules are never replaced (the weight becomes a tensor subclass), so hooks on them, the LoRA
paths among them, keep working; LoRA adapters are not merged into quantized weights
(`stepedit.model.lora`). As with FP8 (`fp8.quantize_block_by_block`), the DiT moves to the device
block by block and each block is quantized there, so a host-loaded DiT never needs its bf16 size
on the GPU.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stepedit.acceleration.attention import AccelerationUnavailable
from stepedit.acceleration.config import OptimizationConfig
from stepedit.acceleration.fp8 import quantize_block_by_block

if TYPE_CHECKING:
    from stepedit.pipeline import EditPipeline

logger = logging.getLogger(__name__)

SCHEMES = ("int8", "nf4", "int4")
NF4_BLOCK = 64  # weights per absmax scale (QLoRA)
NF4_SCALER_BLOCK = 256  # scales per second-level scale, when the count allows it
INT4_GROUP = 128


def torchao_quantization() -> Any:
    try:
        return importlib.import_module("torchao.quantization")
    except ImportError as exc:
        raise AccelerationUnavailable(
            "weight quantization needs torchao: pip install 'stepedit[16gb]'"
        ) from exc


def check_quantization(
    config: OptimizationConfig, device: torch.device, dtype: torch.dtype
) -> None:
    """Refuse a combination that cannot run here, before anything is changed."""
    schemes = [s for s in (config.dit_quant, config.mllm_quant) if s is not None]
    for scheme in schemes:
        if scheme not in SCHEMES:
            raise AccelerationUnavailable(f"unknown quantization {scheme!r}; known: {SCHEMES}")
    if config.fp8 and config.dit_quant is not None:
        raise AccelerationUnavailable(
            f"fp8 and {config.dit_quant} both quantize the DiT: choose one"
        )
    if config.mllm_quant is not None and config.offload_mllm:
        raise AccelerationUnavailable(
            f"a {config.mllm_quant} MLLM is kept resident, not streamed: add -offload_mllm"
        )
    if "int4" in schemes:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise AccelerationUnavailable(
                f"int4 runs torchao's tinygemm CUDA kernels; the pipeline runs on {device} "
                "(use nf4 or int8 there)"
            )
        if dtype != torch.bfloat16:
            raise AccelerationUnavailable(f"int4 needs the bf16 pipeline, not {dtype}")
    if schemes:
        torchao_quantization()


def is_eligible(scheme: str) -> Callable[[nn.Module, str], bool]:
    """Which Linears a scheme can take (its block or group must divide the weight)."""

    def eligible(module: nn.Module, fqn: str = "") -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if scheme == "nf4":
            return module.weight.numel() % NF4_BLOCK == 0
        if scheme == "int4":
            return module.in_features % INT4_GROUP == 0 and module.out_features % 8 == 0
        return True

    return eligible


class QuantizedLinear(nn.Linear):
    """A Linear whose weight is a torchao quantized tensor (NF4, int8, int4).

    Only device moves reach the weight: quantized tensors cannot take part in `Module._apply`'s
    parameter swap under inference mode (the pipeline's offload moves modules there), and a
    dtype cast would dequantize them (or fail).
    """

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        weight = self._parameters.pop("weight")
        assert weight is not None
        try:
            result = super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = weight
        target = fn(torch.empty(0, device=weight.device)).device
        if target != weight.device:
            moved = weight.detach().to(target)
            self._parameters["weight"] = nn.Parameter(moved, requires_grad=False)
        return result


def quantize_linear_nf4(linear: nn.Linear) -> None:
    """Replace the weight by an NF4 tensor; the module object stays (hooks keep working)."""
    quantization = torchao_quantization()
    weight = linear.weight.detach()
    blocks = weight.numel() // NF4_BLOCK
    scaler_block = math.gcd(blocks, NF4_SCALER_BLOCK)  # 256 for every full-size Linear
    nf4 = quantization.to_nf4(weight, NF4_BLOCK, scaler_block)
    linear.weight = nn.Parameter(nf4, requires_grad=False)


def quantize_module(
    module: nn.Module, scheme: str, *, skip: Callable[[str], bool] | None = None
) -> int:
    """Quantize the eligible Linears of `module` in place; returns how many."""
    eligible = is_eligible(scheme)
    chosen = [
        (name, child)
        for name, child in module.named_modules()
        if eligible(child, name) and not (skip and skip(name))
    ]
    if scheme == "nf4":
        for _, child in chosen:
            assert isinstance(child, nn.Linear)
            quantize_linear_nf4(child)
    else:
        quantization = torchao_quantization()
        if scheme == "int8":
            config = quantization.Int8WeightOnlyConfig()
        else:
            config = quantization.Int4WeightOnlyConfig(
                group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d"
            )
        names = {id(child) for _, child in chosen}
        quantization.quantize_(module, config, filter_fn=lambda m, fqn: id(m) in names)
    for _, child in chosen:
        if type(child) is nn.Linear:
            child.__class__ = QuantizedLinear
    return len(chosen)


def quantize_dit(dit: nn.Module, scheme: str, device: torch.device, dtype: torch.dtype) -> int:
    """Quantize the block Linears of `dit`, moving it to `device` block by block."""
    count, upcast = quantize_block_by_block(
        dit, device, dtype, lambda block: quantize_module(block, scheme)
    )
    if upcast:
        logger.info("%s: %d float8-stored Linears upcast to %s first", scheme, upcast, dtype)
    return count


def quantize_text_model(model: nn.Module, scheme: str, device: torch.device) -> int:
    """Quantize the MLLM's Linears one at a time on `device`, then move the rest there."""
    tied = _tied_output(model)
    count = 0
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear) and name != tied and is_eligible(scheme)(child, name):
            child.to(device)
            count += quantize_module(child, scheme)
    model.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count


def _tied_output(model: nn.Module) -> str | None:
    """The name of an output Linear sharing its weight with the input embeddings, if any."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if embeddings is None or output is None or output.weight is not embeddings.weight:
        return None
    return next((n for n, m in model.named_modules() if m is output), None)


def quantized_bytes(module: nn.Module) -> int:
    """Bytes the module's weights take, counting a quantized tensor's inner tensors."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    inner = getattr(type(tensor), "__tensor_flatten__", None)
    if inner is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def quantize_pipeline(pipeline: EditPipeline, config: OptimizationConfig) -> list[str]:
    """Apply `config.dit_quant` / `config.mllm_quant`; returns lines for the applied summary."""
    check_quantization(config, pipeline.device, pipeline.dtype)
    notes = []
    version = getattr(importlib.import_module("torchao"), "__version__", "?")
    if config.dit_quant is not None:
        count = quantize_dit(pipeline.dit, config.dit_quant, pipeline.device, pipeline.dtype)
        size = quantized_bytes(pipeline.dit) / 2**30
        notes.append(
            f"DiT: {count} block Linears in {config.dit_quant} (torchao {version}), "
            f"{size:.2f} GiB of weights"
        )
    if config.mllm_quant is not None:
        count = quantize_text_model(pipeline.text_model, config.mllm_quant, pipeline.device)
        size = quantized_bytes(pipeline.text_model) / 2**30
        notes.append(
            f"MLLM: {count} Linears in {config.mllm_quant} (torchao {version}), "
            f"{size:.2f} GiB of weights"
        )
    for note in notes:
        logger.info("quantization: %s", note)
    return notes
