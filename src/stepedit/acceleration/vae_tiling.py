"""Decode large latents in overlapping tiles so the VAE decoder's activations stay bounded.

The FLUX decoder's activations at 2048 px reach tens of GB (128 channels at full resolution in
float32 GroupNorm). Tiles of `tile` latent pixels with `overlap` latent pixels shared between
neighbours are decoded one at a time and blended with linear ramps, which hides seams.

Not bit-exact: the decoder's mid-block attention and GroupNorm see one tile instead of the whole
image. Only images above a pixel threshold are tiled, so the usual 512-1024 px edits decode
exactly as without tiling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

DecodeFn = Callable[[Tensor], Tensor]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap} tile={tile}")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(size: int, ramp: int, device: torch.device) -> Tensor:
    """1-D weights: rising over `ramp` samples at both ends, 1 in between, never 0."""
    weights = torch.ones(size, device=device)
    if ramp > 0:
        rise = torch.arange(1, ramp + 1, device=device, dtype=torch.float32) / (ramp + 1)
        weights[:ramp] = rise
        weights[size - ramp :] = torch.minimum(weights[size - ramp :], rise.flip(0))
    return weights


def decode_tiled(decode: DecodeFn, z: Tensor, *, tile: int = 64, overlap: int = 16) -> Tensor:
    """z [B, C, h, w] -> image [B, 3, f*h, f*w] decoded tile by tile (f: the VAE's upsampling)."""
    _, _, h, w = z.shape
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return decode(z)
    out: Tensor | None = None
    weight_sum: Tensor | None = None
    for top in rows:
        for left in cols:
            piece = decode(z[:, :, top : top + tile, left : left + tile])
            factor = piece.shape[-1] // min(tile, w)
            th, tw = piece.shape[-2], piece.shape[-1]
            if out is None:
                out = piece.new_zeros((piece.shape[0], piece.shape[1], h * factor, w * factor))
                weight_sum = torch.zeros((h * factor, w * factor), device=piece.device)
            assert weight_sum is not None
            ramp = overlap * factor // 2
            window = _ramp(th, ramp, piece.device)[:, None] * _ramp(tw, ramp, piece.device)[None]
            y, x = top * factor, left * factor
            out[:, :, y : y + th, x : x + tw] += piece * window.to(piece.dtype)
            weight_sum[y : y + th, x : x + tw] += window
    assert out is not None and weight_sum is not None
    return out / weight_sum.to(out.dtype)


def tiled_decoder(
    decode: DecodeFn, *, min_pixels: int, tile: int = 64, overlap: int = 16, factor: int = 8
) -> DecodeFn:
    """A drop-in for `ae.decode` that tiles latents whose image has at least `min_pixels`."""

    def decode_maybe_tiled(z: Tensor) -> Tensor:
        if z.shape[-2] * z.shape[-1] * factor * factor < min_pixels:
            return decode(z)
        return decode_tiled(decode, z, tile=tile, overlap=overlap)

    return decode_maybe_tiled
