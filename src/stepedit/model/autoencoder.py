"""The FLUX 16-channel VAE (key names as in FLUX's ae.safetensors: `encoder.*`, `decoder.*`).

`encode` maps images in [-1, 1] to scaled, shifted latents at 1/8 resolution; `decode` inverts
that. Like the reference, `encode` samples from the posterior by default (pass a generator to make
it reproducible, or `sample=False` for the mean).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from stepedit.model.presets import AutoEncoderConfig


class Swish(nn.Module):
    """x * sigmoid(x), as FLUX writes it; `fused` computes it with torch's silu kernel instead,
    as diffusers' AutoencoderKL does (`AutoEncoder.use_diffusers_arithmetic`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = False

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(x) if self.fused else x * torch.sigmoid(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention at the lowest resolution."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

        # diffusers' AutoencoderKL computes the same block on [B, HW, C] tokens with Linear
        # projections: equal math, other float rounding (see AutoEncoder.use_diffusers_arithmetic).
        self.tokens_first = False

    def forward(self, x: Tensor) -> Tensor:
        if self.tokens_first:
            return self._forward_tokens(x)
        h = self.norm(x)
        height, width = h.shape[-2:]
        q = rearrange(self.q(h), "b c h w -> b 1 (h w) c").contiguous()
        k = rearrange(self.k(h), "b c h w -> b 1 (h w) c").contiguous()
        v = rearrange(self.v(h), "b c h w -> b 1 (h w) c").contiguous()
        h = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)

    def _forward_tokens(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = x.view(batch, channels, height * width)
        h = self.norm(tokens).transpose(1, 2)  # [B, HW, C]

        def project(conv: nn.Conv2d, t: Tensor) -> Tensor:
            return nn.functional.linear(t, conv.weight.view(channels, channels), conv.bias)

        q, k, v = (project(conv, h).view(batch, -1, 1, channels).transpose(1, 2)
                   for conv in (self.q, self.k, self.v))  # fmt: skip
        h = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        h = project(self.proj_out, h.transpose(1, 2).reshape(batch, -1, channels))
        return h.transpose(-1, -2).reshape(batch, channels, height, width) + x


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut: nn.Conv2d | None = None
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.swish = Swish()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.swish(self.norm1(x)))
        h = self.conv2(self.swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Pad right and bottom only (torch convs pad symmetrically), then stride 2: H -> H/2.
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class DownLevel(nn.Module):
    """Checkpoint prefix `encoder.down.<i>`: `block.<j>` and, except last, `downsample`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            [ResnetBlock(channels[j], channels[j + 1]) for j in range(num_blocks)]
        )
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """Checkpoint prefix `decoder.up.<i>`: `block.<j>` and, except level 0, `upsample`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            [ResnetBlock(channels[j], channels[j + 1]) for j in range(num_blocks)]
        )
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    def __init__(self, config: AutoEncoderConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *mult)
        self.down = nn.ModuleList(
            [
                DownLevel(
                    ch * in_mult[i],
                    ch * mult[i],
                    config.num_res_blocks,
                    downsample=i != len(mult) - 1,
                )
                for i in range(len(mult))
            ]
        )
        block_in = ch * mult[-1]
        self.mid = MidBlock(block_in)
        self.norm_out = _group_norm(block_in)
        # Mean and log-variance of the posterior, stacked on channels.
        self.conv_out = nn.Conv2d(block_in, 2 * config.z_channels, kernel_size=3, padding=1)
        self.swish = Swish()

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] -> moments [B, 2 * z, H/8, W/8]."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(self.swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: AutoEncoderConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = MidBlock(block_in)
        # Built from the deepest level up, stored in level order so `up.<i>` matches FLUX keys.
        levels: list[UpLevel] = []
        for i in reversed(range(len(mult))):
            levels.insert(
                0, UpLevel(block_in, ch * mult[i], config.num_res_blocks + 1, upsample=i != 0)
            )
            block_in = ch * mult[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, kernel_size=3, stride=1, padding=1)
        self.swish = Swish()

    def forward(self, z: Tensor) -> Tensor:
        """z [B, z, h, w] -> image [B, 3, 8h, 8w]."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(self.swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, config: AutoEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.scale_factor = config.scale_factor
        self.shift_factor = config.shift_factor

    def use_diffusers_arithmetic(self, enabled: bool) -> None:
        """Compute as diffusers' AutoencoderKL does (the swish by torch's silu kernel, the
        attention block on tokens with Linear projections) or as FLUX's code (x * sigmoid(x),
        1x1 convolutions). The same function; each reference is matched to the last bit only
        by its own arithmetic."""
        for module in self.modules():
            if isinstance(module, Swish):
                module.fused = enabled
            elif isinstance(module, AttnBlock):
                module.tokens_first = enabled

    def encode(
        self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """x [B, 3, H, W] in [-1, 1] -> latents [B, 16, H/8, W/8], scaled and shifted."""
        mean, logvar = torch.chunk(self.encoder(x), 2, dim=1)
        z = mean
        if sample:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.scale_factor * (z - self.shift_factor)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 16, h, w] -> image [B, 3, 8h, 8w], roughly in [-1, 1] (not clamped)."""
        return self.decoder(z / self.scale_factor + self.shift_factor)

    def decode_tiled(self, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """`decode` in overlapping latent tiles of tile x tile, blended linearly across seams.

        Peak memory is that of one tile instead of the whole image. GroupNorm statistics are
        per tile, so the result is close to, not equal to, `decode` (equal when one tile fits).
        """
        if not 0 <= overlap < tile:
            raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
        height, width = z.shape[-2:]
        if height <= tile and width <= tile:
            return self.decode(z)
        f = self.config.downsample_factor
        out: Tensor | None = None
        weight = torch.zeros(1, 1, height * f, width * f, device=z.device, dtype=torch.float32)
        for y0 in _tile_starts(height, tile, tile - overlap):
            for x0 in _tile_starts(width, tile, tile - overlap):
                piece = self.decode(z[..., y0 : y0 + tile, x0 : x0 + tile]).float()
                ph, pw = piece.shape[-2:]
                ramp = _seam_ramp(ph, overlap * f, y0 > 0, y0 + tile < height, z.device)[:, None]
                ramp = ramp * _seam_ramp(pw, overlap * f, x0 > 0, x0 + tile < width, z.device)
                if out is None:
                    out = torch.zeros(*piece.shape[:2], height * f, width * f, device=z.device)
                region = (..., slice(y0 * f, y0 * f + ph), slice(x0 * f, x0 * f + pw))
                out[region] += piece * ramp
                weight[region] += ramp
        assert out is not None
        return (out / weight).to(z.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile`; the last tile ends at `size`."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _seam_ramp(
    length: int, ramp: int, fade_in: bool, fade_out: bool, device: torch.device
) -> Tensor:
    """1-D blend weights: rising over `ramp` pixels at a leading seam, falling at a trailing one."""
    weights = torch.ones(length, device=device)
    if ramp == 0:
        return weights
    rising = (torch.arange(ramp, device=device) + 0.5) / ramp  # strictly positive
    if fade_in:
        weights[:ramp] = torch.minimum(weights[:ramp], rising)
    if fade_out:
        weights[-ramp:] = torch.minimum(weights[-ramp:], rising.flip(0))
    return weights
