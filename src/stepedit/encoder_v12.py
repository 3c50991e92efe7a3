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
The rules of 1-4 are plain, tested functions; `QwenEditEncoderV12` runs Qwen2.5-VL and
assembles them into the DiT's conditioning (`stepedit.sampling.Conditioning`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.encoder import placement
from stepedit.errors import InvalidInput
from stepedit.sampling import Conditioning

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
    """3x3 float32 affine: pixel (x, y) of the image given to Qwen -> merged-vision-token (x, y).

    `resized_size` is the processor's (width, height) = grid // 2 * 28. Computed in float32 with
    the reference's operations, so the positions are the reference's to the last bit.
    """
    (src_w, src_h), (res_w, res_h) = source_size, resized_size
    resize = torch.eye(3)
    resize[0, 0] = (torch.tensor(res_w) - 1) / (src_w - 1)
    resize[1, 1] = (torch.tensor(res_h) - 1) / (src_h - 1)
    return torch.tensor(VISION_FROM_PIXEL) @ resize


def vision_token_positions(grid_hw: tuple[int, int], source_size: tuple[int, int]) -> Tensor:
    """(y, x) packed-latent coordinates of each merged vision token, row-major: [h * w, 2].

    `grid_hw` is the merged token grid (image_grid_thw[1:] // 2); `source_size` the (width,
    height) of the image handed to Qwen (the working-size image). float32 throughout.
    """
    h, w = grid_hw
    to_latent = torch.tensor(LATENT_FROM_PIXEL) @ torch.linalg.inv(
        vision_from_source(source_size, (w * 28, h * 28))
    )
    grid = torch.zeros(h, w, 2)  # (x, y) of each token
    grid[..., 0] += torch.arange(w, dtype=torch.float32)[None, :]
    grid[..., 1] += torch.arange(h, dtype=torch.float32)[:, None]
    xy = grid.reshape(-1, 2)  # [h*w, 2]
    mapped = xy @ to_latent[:2, :2].T + to_latent[:2, -1][None]
    return mapped[:, [1, 0]]  # (y, x)


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


def special_token_strings(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens, as the reference's `_special_token_strings` lists them."""
    tokens = list(getattr(tokenizer, "additional_special_tokens", None) or [])
    tokens.extend(t.content for t in tokenizer.added_tokens_decoder.values())
    return tokens


class QwenEditEncoderV12:
    """`encoder.encode(prompt, image) -> Conditioning`: the v1.2 reference's
    `_get_qwenvl_embeds` followed by its `encode_prompt` (position ids and trimming)."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        processor: Qwen2_5_VLProcessor,
        max_length: int = V12_MAX_TOKENS,
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_length = max_length
        tokenizer: Any = processor.tokenizer
        self.tokenizer = tokenizer
        self.special_tokens = special_token_strings(tokenizer)
        self.image_token_id = int(model.config.image_token_id)
        # transformers 5 derives M-RoPE ids from explicit token types; 4.x from the ids.
        rope_params = inspect.signature(model.model.get_rope_index).parameters
        self._rope_takes_token_types = "mm_token_type_ids" in rope_params

    def render(self, prompt: str) -> str:
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{V12_EDIT_PREFIX} {prompt}"},
                    {"type": "image"},
                ],
            }
        ]
        text: str = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        return text

    def tokenize(self, text: str, image: Image.Image) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(input_ids [1, T], quote mask [1, T], pixel_values, image_grid_thw [1, 3]).

        Every piece is tokenized on its own, as the reference does; the image-pad piece goes
        through the processor, which expands it to one pad per merged vision token.
        """
        ids: list[Tensor] = []
        quoted: list[Tensor] = []
        pixel_values: Tensor | None = None
        grid: Tensor | None = None
        pieces = split_for_tokenizing(text, len(V12_EDIT_PREFIX), self.special_tokens)
        for piece, is_quoted in pieces:
            if "<|image_pad|>" in piece:
                inputs = self.processor(
                    text=[piece],
                    images=[image],
                    size={"shortest_edge": V12_MIN_PIXELS, "longest_edge": V12_MAX_PIXELS},
                    return_tensors="pt",
                )
                pixel_values, grid = inputs["pixel_values"], inputs["image_grid_thw"]
                piece_ids = inputs["input_ids"][0]
            else:
                piece_ids = torch.tensor(self.tokenizer(piece).input_ids, dtype=torch.long)
            ids.append(piece_ids)
            quoted.append(torch.full_like(piece_ids, int(is_quoted)))
        if pixel_values is None or grid is None:
            raise ValueError("the rendered template has no image")
        return torch.cat(ids)[None], torch.cat(quoted)[None], pixel_values, grid

    def _rope_index(self, input_ids: Tensor, grid: Tensor, attention_mask: Tensor) -> Tensor:
        """Qwen's M-RoPE ids [3, 1, T] (tokens with id 0 are skipped, as the reference's mask)."""
        language: Any = self.model.model
        if self._rope_takes_token_types:
            token_types = (input_ids == self.image_token_id).int()
            position_ids, _ = language.get_rope_index(
                input_ids,
                mm_token_type_ids=token_types,
                image_grid_thw=grid,
                attention_mask=attention_mask,
            )
        else:  # pragma: no cover - transformers 4.x
            position_ids, _ = language.get_rope_index(input_ids, grid, None, None, attention_mask)
        ids: Tensor = position_ids
        return ids

    @torch.inference_mode()
    def encode(self, prompt: str, image: Image.Image) -> Conditioning:
        """Conditioning of batch 1 and length min(T - 90, max_length) for one prompt."""
        device, dtype = placement(self.model)
        image = image.convert("RGB")
        input_ids, quoted, pixel_values, grid = self.tokenize(self.render(prompt), image)
        input_ids, grid = input_ids.to(device), grid.to(device)
        attention_mask = (input_ids > 0).long()
        if input_ids.shape[1] - V12_PREFIX_TOKENS > self.max_length:
            # The instruction precedes the image: a window cut inside the image tokens would
            # condition on half a picture. Refuse instead of failing deep in the position ids.
            tokens = input_ids.shape[1] - V12_PREFIX_TOKENS
            raise InvalidInput(
                f"prompt: the instruction is too long for v1.2: {tokens} tokens with the image, "
                f"at most {self.max_length}",
                param="prompt",
            )

        # 1. Input embeddings with the image features in place of the pads.
        model: Any = self.model
        inputs_embeds = model.get_input_embeddings()(input_ids)  # [1, T, hidden]
        features = model.model.get_image_features(
            pixel_values.to(device, dtype), grid, return_dict=True
        ).pooler_output
        features = torch.cat(list(features)) if isinstance(features, list | tuple) else features
        is_image = input_ids == self.image_token_id  # [1, T]
        if int(is_image.sum()) != features.shape[0]:
            raise ValueError(f"{int(is_image.sum())} image tokens but {features.shape[0]} features")
        inputs_embeds = inputs_embeds.masked_scatter(
            is_image[..., None].expand_as(inputs_embeds), features.to(inputs_embeds.dtype)
        )

        # 2. The LLM over them with M-RoPE ids; no attention mask (the reference passes none).
        position_ids = self._rope_index(input_ids, grid, attention_mask)  # [3, 1, T]
        outputs = model(
            inputs_embeds=inputs_embeds, position_ids=position_ids, output_hidden_states=True
        )
        hidden = outputs.hidden_states[-1]  # [1, T, hidden]

        # 3. Drop the system turn and the prefix, keep at most max_length tokens.
        keep = slice(V12_PREFIX_TOKENS, V12_PREFIX_TOKENS + self.max_length)
        emb = hidden[:, keep]  # [1, L, hidden]
        length = emb.shape[1]
        txt_ids = text_position_ids(
            position_ids.permute(1, 2, 0)[0, keep].cpu(),
            is_image[0, keep].cpu(),
            (int(grid[0, 1]) // 2, int(grid[0, 2]) // 2),
            image.size,
        )
        return Conditioning(
            emb=emb,
            mask=torch.ones(1, length, dtype=torch.long, device=device),
            txt_ids=txt_ids[None].to(device),
            text_embeds=inputs_embeds[:, keep],
            text_mask=quoted[:, keep].to(device),
        )
