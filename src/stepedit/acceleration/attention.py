"""Choose the attention kernel behind the DiT's `attention()` for the whole process.

FlashAttention-3 goes through the model's own backend switch (`set_attention_backend`); cuDNN
SDPA is selected with PyTorch's global SDPA toggles. `torch.nn.attention.sdpa_kernel` sets the
very same toggles, but only inside a `with` block; setting them once for the process avoids
wrapping every DiT call, and `torch.compile` reads them when it traces the blocks. Both are
exact up to the kernel's float rounding.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from stepedit.acceleration.config import AttentionChoice
from stepedit.model.attention import set_attention_backend

logger = logging.getLogger(__name__)


class AccelerationUnavailable(RuntimeError):
    """An optimization was asked for on a device or install that cannot run it."""


def is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def has_flash3() -> bool:
    return importlib.util.find_spec("flash_attn_interface") is not None


def has_cudnn_sdpa() -> bool:
    return torch.backends.cudnn.is_available() and hasattr(torch.backends.cuda, "enable_cudnn_sdp")


def resolve_attention(choice: AttentionChoice, device: torch.device) -> AttentionChoice:
    """Turn "auto" into a concrete backend for `device`; check that an explicit one can run."""
    if choice == "auto":
        if device.type != "cuda":
            return "sdpa"
        if is_hopper(device) and has_flash3():
            return "flash3"
        if has_cudnn_sdpa() and torch.cuda.get_device_capability(device)[0] >= 8:
            return "cudnn"
        return "sdpa"
    if choice in ("flash3", "cudnn") and device.type != "cuda":
        raise AccelerationUnavailable(f"attention backend {choice!r} needs a CUDA device")
    if choice == "flash3" and not has_flash3():
        raise AccelerationUnavailable(
            "attention backend 'flash3' needs FlashAttention-3 (module flash_attn_interface)"
        )
    if choice == "cudnn" and not has_cudnn_sdpa():
        raise AccelerationUnavailable("this PyTorch build has no cuDNN SDPA backend")
    return choice


def select_attention(choice: AttentionChoice, device: torch.device) -> AttentionChoice:
    """Route every later DiT attention call to `choice`; returns the backend actually used."""
    backend = resolve_attention(choice, device)
    if backend == "flash3":
        set_attention_backend("flash3")
    else:
        set_attention_backend("sdpa")
    if device.type == "cuda":
        only_cudnn = backend == "cudnn"
        # cuDNN only (math SDPA stays on as the fallback for shapes it refuses), or PyTorch's
        # default dispatch among all of them.
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch.backends.cuda.enable_flash_sdp(not only_cudnn)
        torch.backends.cuda.enable_mem_efficient_sdp(not only_cudnn)
    logger.info("attention backend: %s (asked for %s)", backend, choice)
    return backend
