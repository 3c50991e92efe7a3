"""Choose the attention kernel behind the DiT's `attention()`, check that it runs, say which does.

- `flash3`: FlashAttention-3 (module `flash_attn_interface`, built from the flash-attention
  repository's `hopper/` folder; not on PyPI) through the model's own backend switch
  (`set_attention_backend`), process-wide.
- `cudnn` / `flash4`: PyTorch SDPA with a backend priority. The priority is set around the
  DiT's forward only (hooks on the DiT module), not for the process: process-wide toggles would
  also reach Qwen2.5-VL's masked attention and the float32 VAE attention, which cuDNN refuses,
  and those would then drop to the slow math kernel without a word. `torch.compile` traces the
  blocks inside the DiT's forward, so the compiled graphs call the kernel chosen there.
  `flash4` also routes PyTorch's flash kernel to FlashAttention-4 (`flash-attn-4` on PyPI,
  module `flash_attn.cute`) with `torch.nn.attention.activate_flash_attention_impl("FA4")`.
- `sdpa`: PyTorch's own dispatch, untouched.

`select_attention` then runs one attention at the DiT's head shape and dtype, inside the same
scope, and asks PyTorch's dispatcher which kernel it picked (`torch._fused_sdp_choice`), so the
summary, the log, the bench and /health name the kernel that really runs: a request for cuDNN
that the dispatcher turns into "flash" or "math" is reported as such, loudly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend

from stepedit.acceleration.config import AttentionChoice
from stepedit.model.attention import set_attention_backend

logger = logging.getLogger(__name__)

# The probe's sequence lengths: one aligned, one not (kernels differ in padding rules).
_PROBE_LENGTHS = (256, 333)
# torch._fused_sdp_choice returns the SDPBackend value of the kernel the dispatcher picks.
_SDP_CHOICE_NAMES = {
    SDPBackend.MATH.value: "math",
    SDPBackend.FLASH_ATTENTION.value: "flash",
    SDPBackend.EFFICIENT_ATTENTION.value: "efficient",
    SDPBackend.CUDNN_ATTENTION.value: "cudnn",
}


class AccelerationUnavailable(RuntimeError):
    """An optimization was asked for on a device or install that cannot run it."""


@dataclass(frozen=True)
class AttentionSelection:
    backend: AttentionChoice  # what the DiT is set up with
    kernel: str  # what actually runs at the DiT's shape, e.g. "cudnn", "flash", "FA3"
    asked: AttentionChoice

    @property
    def is_fallback(self) -> bool:
        wanted = {"cudnn": "cudnn", "flash4": "flash (FA4)"}.get(self.backend)
        return wanted is not None and self.kernel != wanted


def is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def has_flash3() -> bool:
    return importlib.util.find_spec("flash_attn_interface") is not None


def has_flash4() -> bool:
    """FlashAttention-4 installed and a PyTorch that can plug it into SDPA."""
    try:
        has_module = importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # flash_attn itself missing
        return False
    attention = torch.nn.attention
    registry = getattr(attention, "list_flash_attention_impls", None)
    return has_module and registry is not None and "FA4" in registry()


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
    if choice in ("flash3", "flash4", "cudnn") and device.type != "cuda":
        raise AccelerationUnavailable(f"attention backend {choice!r} needs a CUDA device")
    if choice == "flash3" and not has_flash3():
        raise AccelerationUnavailable(
            "attention backend 'flash3' needs FlashAttention-3 (module flash_attn_interface, "
            "built from flash-attention's hopper/ folder)"
        )
    if choice == "flash4" and not has_flash4():
        raise AccelerationUnavailable(
            "attention backend 'flash4' needs FlashAttention-4 (pip install 'stepedit[flash4]') "
            f"and a PyTorch with activate_flash_attention_impl (this is {torch.__version__})"
        )
    if choice == "flash4" and torch.cuda.get_device_capability(device)[0] not in (9, 10):
        raise AccelerationUnavailable("FlashAttention-4 runs on Hopper and Blackwell only")
    if choice == "cudnn" and not has_cudnn_sdpa():
        raise AccelerationUnavailable("this PyTorch build has no cuDNN SDPA backend")
    return choice


def sdpa_priority(backend: AttentionChoice) -> list[SDPBackend] | None:
    """The SDPA backends in the order the DiT should try them; None: PyTorch's default.

    Every backend stays allowed (a shape one kernel refuses still runs); the probe reports
    which one the dispatcher actually takes.
    """
    rest = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if backend == "cudnn":
        return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, *rest]
    if backend == "flash4":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, *rest]
    return None


class SdpaScope:
    """Sets an SDPA backend priority for the duration of each forward of one module."""

    def __init__(self, module: nn.Module, backends: list[SDPBackend]) -> None:
        self.backends = backends
        self._stack: list[contextlib.ExitStack] = []
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            # always_call: restore the process's priority even when the forward raises.
            module.register_forward_hook(self._exit, always_call=True),
        ]

    def _enter(self, module: nn.Module, args: Any) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.nn.attention.sdpa_kernel(self.backends, set_priority=True))
        self._stack.append(stack)

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop().close()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# The scope installed on each DiT, so a second selection replaces the first.
_scopes: weakref.WeakKeyDictionary[nn.Module, SdpaScope] = weakref.WeakKeyDictionary()


def _set_flash4(enabled: bool) -> None:
    attention: Any = torch.nn.attention
    if enabled:
        attention.activate_flash_attention_impl("FA4")
    elif getattr(attention, "current_flash_attention_impl", lambda: None)() == "FA4":
        attention.restore_flash_attention_impl()


def select_attention(
    choice: AttentionChoice,
    device: torch.device,
    dit: nn.Module | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> AttentionSelection:
    """Route the DiT's attention to `choice` and return what actually runs at its shape.

    `dit` gets the SDPA priority scope (cudnn, flash4); without it, only the process-wide part
    (flash3, flash4's kernel swap) is set. `dtype` is the dtype attention runs in (the
    pipeline's; bf16 under autocast on CUDA).
    """
    backend = resolve_attention(choice, device)
    set_attention_backend("flash3" if backend == "flash3" else "sdpa")
    if has_flash4() or backend == "flash4":
        _set_flash4(backend == "flash4")
    if dit is not None:
        old = _scopes.pop(dit, None)
        if old is not None:
            old.remove()
        priority = sdpa_priority(backend)
        if priority is not None:
            _scopes[dit] = SdpaScope(dit, priority)
    kernel = probe_kernel(backend, device, dit, dtype)
    selection = AttentionSelection(backend=backend, kernel=kernel, asked=choice)
    if selection.is_fallback:
        logger.warning(
            "attention: asked for %s, but PyTorch's dispatcher runs %s at the DiT's shape (%s)",
            backend,
            kernel,
            dtype,
        )
    else:
        logger.info("attention backend: %s, kernel %s (asked for %s)", backend, kernel, choice)
    return selection


def _head_shape(dit: nn.Module | None) -> tuple[int, int]:
    config = getattr(dit, "config", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return heads, hidden // heads
    return 24, 128  # Step1X-Edit's DiT


@contextlib.contextmanager
def _scope_of(dit: nn.Module | None) -> Iterator[None]:
    scope = _scopes.get(dit) if dit is not None else None
    if scope is None:
        yield
        return
    with torch.nn.attention.sdpa_kernel(scope.backends, set_priority=True):
        yield


def probe_kernel(
    backend: AttentionChoice,
    device: torch.device,
    dit: nn.Module | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> str:
    """Run attention at the DiT's head shape and name the kernel that ran.

    Raises AccelerationUnavailable when the chosen kernel fails there (FA3 on a float32
    pipeline, say), so a broken fast path fails at start-up rather than on a user's edit.
    """
    heads, head_dim = _head_shape(dit)
    kernel = "unknown"
    for length in _PROBE_LENGTHS:
        q, k, v = (
            torch.randn(1, heads, length, head_dim, device=device, dtype=dtype) for _ in range(3)
        )
        try:
            with torch.no_grad(), _scope_of(dit):
                if backend == "flash3":
                    from stepedit.model.attention import attention as dit_attention

                    pe = _identity_rope(length, head_dim, device)
                    dit_attention(q, k, v, pe)
                    kernel = "FA3"
                else:
                    F.scaled_dot_product_attention(q, k, v)
                    kernel = _dispatch_choice(q, k, v)
        except Exception as exc:
            raise AccelerationUnavailable(
                f"attention backend {backend!r} fails at the DiT's shape [1, {heads}, {length}, "
                f"{head_dim}] {dtype}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
            ) from exc
    attention: Any = torch.nn.attention
    active_impl = getattr(attention, "current_flash_attention_impl", lambda: None)()
    if kernel == "flash" and active_impl is not None:
        kernel = f"flash ({active_impl})"  # PyTorch's flash kernel swapped for FA3/FA4
    return kernel


def _identity_rope(length: int, head_dim: int, device: torch.device) -> torch.Tensor:
    eye = torch.eye(2, device=device).expand(1, 1, length, head_dim // 2, 2, 2)
    return eye.contiguous()


def _dispatch_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return "unknown"
    try:
        return _SDP_CHOICE_NAMES.get(int(choose(q, k, v)), "unknown")
    except Exception:  # a private API: never fail a selection over its report
        return "unknown"
