"""The connector from Qwen2.5-VL hidden states to the DiT's text tokens and pooled vector.

A token refiner (as in HunyuanVideo) re-encodes every text token with self-attention conditioned on
the timestep and the masked mean of the prompt; a linear head turns the same masked mean into the
768-wide pooled vector the DiT adds to its timestep embedding.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from stepedit.model.attention import masked_attention
from stepedit.model.layers import sinusoidal_embedding

# v1.0 checkpoints ship this learned factor; -(1 - 0.09) is the value it is created with.
SCALE_FACTOR_INIT = -0.91


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid tokens: x [B, L, C], mask [B, L] (1 = token) -> [B, C]."""
    weights = mask.unsqueeze(-1)  # [B, L, 1]
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: Tensor) -> Tensor:
        """t [B] already scaled to [0, 1000] -> [B, hidden]."""
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        t_freq = sinusoidal_embedding(t, self.frequency_embedding_size)  # [B, 256] float32
        return self.mlp(t_freq.to(first.weight.dtype))


class TextProjection(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_size, bias=True)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class MLP(nn.Module):
    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels, bias=True)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_channels, in_channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads_num = heads_num
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, hidden_size * 3, bias=True)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor | None) -> Tensor:
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=1)  # each [B, hidden]
        qkv = self.self_attn_qkv(self.norm1(x))
        q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=self.heads_num)
        if attn_mask is None:
            attn = rearrange(
                nn.functional.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)"
            )
        else:
            attn = masked_attention(q, k, v, attn_mask)  # [B, L, hidden]
        x = x + self.self_attn_proj(attn) * gate_msa.unsqueeze(1)
        return x + self.mlp(self.norm2(x)) * gate_mlp.unsqueeze(1)


def padding_attention_mask(mask: Tensor) -> Tensor:
    """mask [B, L] -> bool [B, 1, L, L]: token i attends to j when both are real tokens.

    Key 0 is always allowed so that padding rows do not softmax over nothing (NaN).
    """
    keep = mask.bool()
    pair = keep[:, None, None, :] & keep[:, None, :, None]  # [B, 1, L, L]
    pair[:, :, :, 0] = True
    return pair


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [IndividualTokenRefinerBlock(hidden_size, heads_num) for _ in range(depth)]
        )

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None) -> Tensor:
        attn_mask = None if mask is None else padding_attention_mask(mask.to(x.device))
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int, heads_num: int, depth: int) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.c_embedder = TextProjection(in_channels, hidden_size)
        self.individual_token_refiner = IndividualTokenRefiner(hidden_size, heads_num, depth)

    def forward(self, x: Tensor, t: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, L, C_llm], t [B] in [0, 1000] -> [B, L, hidden]."""
        pooled = x.mean(dim=1) if mask is None else masked_mean(x, mask)  # [B, C_llm]
        c = self.t_embedder(t) + self.c_embedder(pooled)  # [B, hidden]
        x = self.input_embedder(x)  # [B, L, hidden]
        return self.individual_token_refiner(x, c, mask)


class Connector(nn.Module):
    """Checkpoint prefix `connector.`; `scale_factor` exists only in v1.0 checkpoints."""

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        heads_num: int,
        depth: int,
        pooled_dim: int = 768,
        has_scale_factor: bool = False,
    ) -> None:
        super().__init__()
        self.S = SingleTokenRefiner(in_channels, hidden_size, heads_num, depth)
        self.global_proj_out = nn.Linear(in_channels, pooled_dim)
        self.scale_factor: nn.Parameter | None = None
        if has_scale_factor:
            self.scale_factor = nn.Parameter(torch.full((1,), SCALE_FACTOR_INIT))

    def forward(self, x: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, L, C_llm], t [B] in [0, 1], mask [B, L] -> (txt [B, L, hidden], y [B, 768])."""
        t = t * 1000  # the refiner's embedder expects diffusion-step units
        x_mean = masked_mean(x, mask)  # [B, C_llm]
        if self.scale_factor is not None:
            x_mean = x_mean * (1 + self.scale_factor.to(x.dtype))
        return self.S(x, t, mask), self.global_proj_out(x_mean)
