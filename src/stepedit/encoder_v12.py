"""Step1X-Edit v1.2 prompt encoding: how it differs from v1.0/v1.1, and its pure building blocks.

Verified in the reference (Peyton-Chen/diffusers@c69df6bdf2f0f998646c1adf2c1aa788ac7b6296,
pipeline_step1x_edit_v1p2.py, `_get_qwenvl_embeds` / `encode_prompt`) against v1.0/v1.1
(stepedit.encoder, after the official conditioner.py). v1.2 is NOT the v1.1 encoding:
1. prefix: `V12_EDIT_PREFIX` (below) instead of the "Enhanced prompt" prefix; one user turn
   `[text "{prefix} {instruction}", image]` (the image comes *after* the instruction), rendered with
   the chat template with "Picture 1: " labels;
2. the first 90 tokens are cut (system turn + prefix), not 217; up to 2048 tokens kept, not 640;
   the sequence is trimmed to its valid length instead of padded;
3. the kept sequence therefore contains the image's vision tokens. Their DiT positions are not
   zero: axis 0 is Qwen's M-RoPE temporal index shifted so the last kept token sits at -1; axes 1
   and 2 are 0 for text and, for vision tokens, the token centre mapped into the packed-latent grid
   (`vision_token_positions`);
4. the quote rule also splits at special tokens, and marks every character inside quotes: the
   input-token embeddings of those characters (`text_embeds` x `text_mask`) feed the v1.2 DiT's
   `text_token_mapping` (Linear 3584 -> 4096) added to the connector output;
5. the Qwen processor bounds the image to 256..400 merged tokens (v1.0/v1.1: 256..324) and gets
   the working-size image directly (no qwen_vl_utils resize).
This module holds the rules of 1-4 as plain, tested functions; the model-calling encoder that
assembles them is left to the encoder's owner (see the report that introduced this file).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

# EDIT_PREFIX in pipeline_step1x_edit_v1p2.py (reference above); "\u0020" is its trailing space.
V12_EDIT_PREFIX = (
    "Given a reference image and a user editing instruction.\n"
    "You need to understand the information of the reference image and the content of the"
    " editing instruction,\n"
    "and then generate a detailed description of the edited target image based on the reference"
    " image and the editing instruction.\u0020\n"
    "The description should include the requirements in the editing instruction and try to"
    " closely match the content of the target image.\n"
    "The editing instruction is:"
)
V12_PREFIX_TOKENS = 90  # QWEN25VL_PREFIX_LEN
V12_MAX_TOKENS = 2048  # max_token_length
V12_MIN_PIXELS = 256 * 28 * 28
V12_MAX_PIXELS = 400 * 28 * 28

# Pixel -> packed-latent-token coordinates (get_vae_downsample_affine_mat): 16 px per token.
LATENT_FROM_PIXEL = ((1 / 16, 0.0, -11 / 16), (0.0, 1 / 16, -11 / 16), (0.0, 0.0, 1.0))
# Pixel -> Qwen merged-vision-token coordinates (_get_affine_mat_from_source): 28 px per token.
VISION_FROM_PIXEL = ((1 / 28, 0.0, -13.5 / 28), (0.0, 1 / 28, -13.5 / 28), (0.0, 0.0, 1.0))

Piece = tuple[str, bool]  # (text to tokenize on its own, is a character inside quotes)

_CLOSING = {'"': '"', "“": "”"}


def _split_quotes(text: str, prefix_len: int) -> list[Piece]:
    """Quoted characters become one piece each (marked True); the rest stays in runs.

    Characters before `prefix_len` are never split. A closing quote starts the next run; an
    opening ASCII quote ends the current run; an opening “ does the same but, as in the
    reference, is dropped when the run is empty. An unclosed quote's characters are given back
    to the run before it.
    """
    pieces: list[Piece] = []
    run = text[:prefix_len]
    quoted: list[str] = []
    closing: str | None = None
    for char in text[prefix_len:]:
        if closing is None:
            if char in _CLOSING and (char == '"' or run):
                pieces.append((run + char, False))
                run, closing = "", _CLOSING[char]
            elif char == "“":  # empty run: the reference loses this quote mark
                closing = "”"
            else:
                run += char
        elif char == closing:
            pieces.extend((c, True) for c in quoted)
            quoted, run, closing = [], char, None
        else:
            quoted.append(char)
    if closing is not None:
        leftover = "".join(quoted) + run
        if pieces and not pieces[-1][1]:
            pieces[-1] = (pieces[-1][0] + leftover, False)
        else:
            pieces.append((leftover, False))
    elif run:
        pieces.append((run, False))
    return pieces


def split_for_tokenizing(text: str, prefix_len: int, special_tokens: Sequence[str]) -> list[Piece]:
    """The v1.2 split: special tokens as their own pieces, then the quote rule in between.

    `prefix_len` counts characters from the start of `text`; each segment gets what is left of it.
    """
    if not special_tokens:
        return _split_quotes(text, prefix_len)
    alternatives = "|".join(
        re.escape(t) for t in sorted(set(special_tokens), key=len, reverse=True)
    )
    specials = set(special_tokens)
    pieces: list[Piece] = []
    start = 0
    for segment in (s for s in re.split(f"({alternatives})", text) if s):
        if segment in specials:
            pieces.append((segment, False))
        else:
            pieces.extend(_split_quotes(segment, max(0, prefix_len - start)))
        start += len(segment)
    return pieces


def vision_from_source(source_size: tuple[int, int], resized_size: tuple[int, int]) -> Tensor:
    """3x3 affine: pixel (x, y) of the image given to Qwen -> merged-vision-token (x, y).

    `resized_size` is the processor's (width, height) = grid // 2 * 28.
    """
    (src_w, src_h), (res_w, res_h) = source_size, resized_size
    resize = torch.eye(3, dtype=torch.float64)
    resize[0, 0] = (res_w - 1) / (src_w - 1)
    resize[1, 1] = (res_h - 1) / (src_h - 1)
    return torch.tensor(VISION_FROM_PIXEL, dtype=torch.float64) @ resize


def vision_token_positions(grid_hw: tuple[int, int], source_size: tuple[int, int]) -> Tensor:
    """(y, x) packed-latent coordinates of each merged vision token, row-major: [h * w, 2].

    `grid_hw` is the merged token grid (image_grid_thw[1:] // 2); `source_size` the (width,
    height) of the image handed to Qwen (the working-size image).
    """
    h, w = grid_hw
    resized = (w * 28, h * 28)
    to_latent = torch.tensor(LATENT_FROM_PIXEL, dtype=torch.float64) @ torch.linalg.inv(
        vision_from_source(source_size, resized)
    )
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    xy = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # [h*w, 2] as (x, y)
    mapped = xy @ to_latent[:2, :2].T + to_latent[:2, 2]
    return mapped[:, [1, 0]].to(torch.float32)  # (y, x)


def text_position_ids(
    rope_positions: Tensor,
    is_vision: Tensor,
    grid_hw: tuple[int, int],
    source_size: tuple[int, int],
) -> Tensor:
    """DiT `txt_ids` [L, 3] for the kept tokens.

    rope_positions: [L, 3] Qwen M-RoPE ids of the kept tokens (after the 90-token cut);
    is_vision: [L] bool, the image-pad tokens. Axis 0: temporal id minus (its max + 1);
    axes 1, 2: zero for text, `vision_token_positions` for vision tokens.
    """
    temporal = rope_positions[:, 0].to(torch.float32)
    ids = torch.zeros(rope_positions.shape[0], 3, dtype=torch.float32)
    ids[:, 0] = temporal - (temporal.max() + 1)
    positions = vision_token_positions(grid_hw, source_size)
    if int(is_vision.sum()) != positions.shape[0]:
        raise ValueError(
            f"{int(is_vision.sum())} vision tokens kept but the grid {grid_hw} has "
            f"{positions.shape[0]}"
        )
    ids[is_vision, 1:] = positions
    return ids
