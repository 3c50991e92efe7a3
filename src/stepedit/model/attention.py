"""Rotary position embedding and the attention kernel used by every DiT block.

One entry point, `attention(q, k, v, pe)`. The kernel behind it is chosen once per process with
`set_attention_backend`: PyTorch SDPA by default, FlashAttention 2 or 3 when installed. RoPE is
applied in float32 whatever the model dtype, as the reference does, so bf16 runs stay close to it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

AttentionBackend = Literal["sdpa", "flash", "flash3"]

_FlashFn = Callable[[Tensor, Tensor, Tensor], Tensor]
_backend: AttentionBackend = "sdpa"
_flash_fn: _FlashFn | None = None


def _load_flash(backend: AttentionBackend) -> _FlashFn:
    module_name = "flash_attn" if backend == "flash" else "flash_attn_interface"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"attention backend {backend!r} needs the {module_name!r} package"
        ) from exc
    fn = module.flash_attn_func

    def call(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = fn(q, k, v)
        # FlashAttention 3 returns (out, softmax_lse) in some releases.
        return out[0] if isinstance(out, tuple) else out

    return call


def set_attention_backend(backend: AttentionBackend) -> None:
    """Select the kernel for all later `attention` calls; raises if it is not installed."""
    global _backend, _flash_fn
    if backend not in ("sdpa", "flash", "flash3"):
        raise ValueError(f"unknown attention backend {backend!r}")
    _flash_fn = None if backend == "sdpa" else _load_flash(backend)
    _backend = backend


def get_attention_backend() -> AttentionBackend:
    return _backend


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices for one id axis: pos [B, L] -> [B, L, dim/2, 2, 2] float32."""
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**exponent)  # [dim/2]
    angles = pos.to(torch.float64)[..., None] * omega  # [B, L, dim/2]
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)  # [B, L, dim/2, 4]
    return rearrange(rot, "b n d (i j) -> b n d i j", i=2, j=2).float()


def embed_positions(ids: Tensor, axes_dim: tuple[int, ...], theta: int) -> Tensor:
    """ids [B, L, n_axes] -> pe [B, 1, L, head_dim/2, 2, 2] (one head axis to broadcast)."""
    pe = torch.cat([rope(ids[..., i], d, theta) for i, d in enumerate(axes_dim)], dim=-3)
    return pe.unsqueeze(1)


def apply_rope(q: Tensor, k: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate consecutive channel pairs of q, k [B, H, L, D] by pe [B, 1, L, D/2, 2, 2]."""
    q_pairs = q.float().reshape(*q.shape[:-1], -1, 1, 2)  # [B, H, L, D/2, 1, 2]
    k_pairs = k.float().reshape(*k.shape[:-1], -1, 1, 2)
    q_out = pe[..., 0] * q_pairs[..., 0] + pe[..., 1] * q_pairs[..., 1]  # [B, H, L, D/2, 2]
    k_out = pe[..., 0] * k_pairs[..., 0] + pe[..., 1] * k_pairs[..., 1]
    return q_out.reshape(q.shape).type_as(q), k_out.reshape(k.shape).type_as(k)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """RoPE then full (unmasked) attention: q, k, v [B, H, L, D] -> [B, L, H*D]."""
    q, k = apply_rope(q, k, pe)
    if _flash_fn is None:
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, D]
        return rearrange(out, "b h l d -> b l (h d)")
    # FlashAttention wants [B, L, H, D] and half precision.
    out = _flash_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return rearrange(out, "b l h d -> b l (h d)")


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """SDPA with a boolean keep-mask [B, 1, Lq, Lk]: q, k, v [B, H, L, D] -> [B, L, H*D]."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h l d -> b l (h d)")
