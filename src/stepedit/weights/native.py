"""Strict, streaming loading of tensors into a module built on the meta device.

`load_module(factory, source, ...)`:
1. builds the module on the meta device (no memory, no init);
2. compares the source's key names and shapes (headers only) with the module's state dict and
   raises `WeightsError` naming the first few missing, unexpected and mis-shaped keys;
3. reads one tensor at a time, casts it, moves it to the device and assigns it in place of the
   meta parameter (what `load_state_dict(assign=True, strict=True)` does, without a full dict).

So the peak is the model itself plus one tensor; the checkpoint is never a second copy in RAM.

FP8: a source tensor stored as float8 is kept in float8 when it is the weight of an `nn.Linear`
under one of the `keep_fp8` key prefixes; that Linear then upcasts its weight to the input's
dtype in `forward` (see `Float8StorageLinear`). Every other float8 tensor (biases, norm scales,
small layers outside those prefixes) is upcast at load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from stepedit.errors import WeightsError
from stepedit.weights.tensors import Shape, TensorSource, first_few, first_keys, key_problems

logger = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class Float8StorageLinear(nn.Linear):
    """A Linear whose weight is stored in float8 and upcast to the input dtype per call.

    This is weight-only storage, not FP8 matmul: numbers are those of the bf16 model run with
    weights rounded to float8 (as the official `--quantized` path computes under autocast).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return nn.functional.linear(input, self.weight.to(input.dtype), bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # `model.to(torch.bfloat16)` must not undo the storage format: follow device moves but
        # put the weight back into float8 (exact, since float8 values are bf16/fp32 values).
        storage = self.weight.dtype
        result = super()._apply(fn, recurse)
        if self.weight.dtype != storage:
            self.weight = nn.Parameter(self.weight.to(storage), requires_grad=False)
        return result


def check_keys(expected: dict[str, Shape], source: TensorSource, what: str) -> None:
    """Raise `WeightsError` unless `source` has exactly the expected keys with expected shapes."""
    present = source.names()
    present_set = set(present)
    missing = [k for k in expected if k not in present_set]
    unexpected = [k for k in present if k not in expected]
    misshaped = [
        f"{k!r} is {list(source.shape(k))}, model wants {list(expected[k])}"
        for k in present
        if k in expected and source.shape(k) != expected[k]
    ]
    problems = key_problems(missing, unexpected)
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped: " + first_few(misshaped, "; "))
    if problems:
        raise WeightsError(f"{what} checkpoint does not match the model: " + "; ".join(problems))


def build_on_meta(factory: Callable[[], ModuleT]) -> ModuleT:
    with torch.device("meta"):
        return factory()


def _is_linear_weight(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and name == "weight"


def assign_tensors(
    module: nn.Module,
    source: TensorSource,
    *,
    device: torch.device,
    dtype: torch.dtype,
    keep_fp8: tuple[str, ...] = (),
) -> int:
    """Replace `module`'s parameters/buffers by `source`'s tensors, one key at a time.

    float8 Linear weights under the key prefixes `keep_fp8` stay float8; returns their count.
    """
    owners = dict(module.named_modules())
    kept_fp8 = 0
    for key in source.names():
        owner_name, _, name = key.rpartition(".")
        owner = owners[owner_name]
        stored = source.get(key)
        is_kept = key.startswith(keep_fp8) if keep_fp8 else False
        if stored.dtype in FLOAT8_DTYPES and is_kept and _is_linear_weight(owner, name):
            tensor = stored.to(device=device)
            if type(owner) is nn.Linear:
                owner.__class__ = Float8StorageLinear
            kept_fp8 += 1
        elif stored.is_floating_point():
            tensor = stored.to(device=device, dtype=dtype)
        else:
            tensor = stored.to(device=device)
        if tensor.data_ptr() == stored.data_ptr():
            # Still the file's memory map: own the memory, so the model neither changes if the
            # file does nor runs on unaligned pages (which alters CPU kernels' rounding).
            tensor = tensor.clone()
        del stored
        if name in owner._parameters:
            owner._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[name] = tensor
    still_meta = [n for n, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    still_meta += [n for n, b in module.named_buffers() if b.is_meta and n not in still_meta]
    if still_meta:
        raise WeightsError(
            f"after loading, {first_keys(still_meta)} are still unset (meta tensors)"
        )
    return kept_fp8


def load_module(
    factory: Callable[[], ModuleT],
    source: TensorSource,
    *,
    device: torch.device,
    dtype: torch.dtype,
    what: str,
    keep_fp8: tuple[str, ...] = (),
) -> ModuleT:
    """Build with `factory` on meta, check `source` strictly, then stream its tensors in."""
    module = build_on_meta(factory)
    expected = {k: tuple(t.shape) for k, t in module.state_dict(keep_vars=True).items()}
    check_keys(expected, source, what)
    kept = assign_tensors(module, source, device=device, dtype=dtype, keep_fp8=keep_fp8)
    if kept:
        logger.info("%s: %d Linear weights kept in float8 storage", what, kept)
    module.eval().requires_grad_(False)
    return module


def has_fp8(source: TensorSource) -> bool:
    return any(source.dtype(k) in FLOAT8_DTYPES for k in source.names())


def reject_scaled_fp8(source: TensorSource, what: str) -> None:
    """Scaled-FP8 files (per-tensor `*scale_weight` / `*weight_scale` keys) are not supported."""
    scales = [
        k for k in source.names() if k.endswith(("scale_weight", "weight_scale", "scale_input"))
    ]
    if scales:
        raise WeightsError(
            f"{what} is a scaled-FP8 checkpoint (keys like {scales[0]!r}); only plain "
            "float8_e4m3fn weights (a straight cast, as the official FP8 release) are supported"
        )
