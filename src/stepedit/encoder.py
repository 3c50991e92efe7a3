"""Qwen2.5-VL as Step1X-Edit's conditioning encoder: instruction + image -> hidden states.

Follows the reference embedder step by step:
1. one user turn: [the "Enhanced prompt" instruction prefix, the image, the instruction], rendered
   with Qwen's chat template (default system turn, "Picture 1: " before the image, assistant
   header);
2. the image is first resized as `qwen_vl_utils.fetch_image` does (multiple of 28, default pixel
   bounds), then the processor resizes it into 256..324 merged tokens;
3. the token ids up to the image's <|vision_end|> come from the processor (image pads expanded);
   from <|vision_end|> on they come from tokenizing the template in pieces, where each character
   inside double quotes (past the prefix) is tokenized alone, so quoted text is spelled out;
4. the attention mask is `input_ids > 0` (as the reference: token 0, "!", is masked too);
5. the last hidden state minus the template prefix (system turn + instruction prefix) is the
   embedding, padded or truncated to `max_length` with a mask.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.sampling import Conditioning

logger = logging.getLogger(__name__)

INSTRUCTION_PREFIX = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions'
    " suitable for image generation. Evaluate the level of detail in the user prompt:\n"
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures,"
    " and spatial relationships to create vivid and concrete scenes.\n"
    "- If the prompt is already detailed, refine and enhance the existing details slightly without"
    " overcomplicating.\n\n"
    "Here are examples of how to transform or refine prompts:\n"
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round"
    " shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red"
    " flowers.\n"
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring"
    " glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus"
    " passing by towering glass skyscrapers.\n\n"
    "Please generate only the enhanced description for the prompt below and avoid including any"
    " additional commentary or evaluations:\n"
    "User Prompt:"
)

# The reference's processor bounds (in pixels): 256..324 merged 28x28 image tokens.
MIN_PIXELS = 256 * 28 * 28
MAX_PIXELS = 324 * 28 * 28
# qwen_vl_utils' defaults, applied before the processor in the reference.
VISION_UTILS_MIN_PIXELS = 4 * 28 * 28
VISION_UTILS_MAX_PIXELS = 16384 * 28 * 28
IMAGE_FACTOR = 28
# Quotes before this character index (the system turn and the prefix's own "Enhanced prompt")
# are left alone by the reference's quote splitting.
QUOTE_SPLIT_START = 155


def split_quoted(text: str) -> list[str]:
    """The reference's `split_string`: quoted characters become separate “c” pieces.

    Single quotes and curly quotes count as double quotes. A quote closes its piece; text between
    quotes is kept together.
    """
    text = text.replace("'", '"').replace("“", '"').replace("”", '"')
    pieces: list[str] = []
    in_quotes = False
    pending = ""
    for index, char in enumerate(text):
        if char == '"' and index > QUOTE_SPLIT_START:
            pending += char
            if not in_quotes:
                pieces.append(pending)
                pending = ""
            in_quotes = not in_quotes
            continue
        if in_quotes:
            pieces.append("“" + char + "”")
        else:
            pending += char
    if pending:
        pieces.append(pending)
    return pieces


def vision_utils_size(width: int, height: int) -> tuple[int, int]:
    """qwen_vl_utils' smart_resize with its default bounds: (width, height), multiples of 28."""
    h_bar = max(IMAGE_FACTOR, round(height / IMAGE_FACTOR) * IMAGE_FACTOR)
    w_bar = max(IMAGE_FACTOR, round(width / IMAGE_FACTOR) * IMAGE_FACTOR)
    if h_bar * w_bar > VISION_UTILS_MAX_PIXELS:
        beta = math.sqrt(height * width / VISION_UTILS_MAX_PIXELS)
        h_bar = math.floor(height / beta / IMAGE_FACTOR) * IMAGE_FACTOR
        w_bar = math.floor(width / beta / IMAGE_FACTOR) * IMAGE_FACTOR
    elif h_bar * w_bar < VISION_UTILS_MIN_PIXELS:
        beta = math.sqrt(VISION_UTILS_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / IMAGE_FACTOR) * IMAGE_FACTOR
        w_bar = math.ceil(width * beta / IMAGE_FACTOR) * IMAGE_FACTOR
    return w_bar, h_bar


def placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the MLLM runs now (offloading moves it whole) and its dtype: its first weight's."""
    weight = next(model.parameters())
    return weight.device, weight.dtype


def image_digest(image: Image.Image) -> str:
    """A key for an image's pixels, mode and size (the one digest of the encoding cache)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class QwenEditEncoder:
    """v1.0/v1.1: `encoder.encode(prompt, image) -> Conditioning` ([1, max_length, hidden])."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        processor: Qwen2_5_VLProcessor,
        max_length: int = 640,
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_length = max_length
        # The reference loads its processor with these bounds; set them whatever the folder says.
        image_processor: Any = processor.image_processor
        image_processor.size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
        tokenizer: Any = processor.tokenizer
        self.tokenizer = tokenizer
        self.vision_end_id = int(tokenizer.convert_tokens_to_ids("<|vision_end|>"))
        self.open_quote_id = self._single_token("“")
        self.close_quote_id = self._single_token("”")
        self.prefix_length = self._template_prefix_length()
        self.image_token_id = int(model.config.image_token_id)
        forward = inspect.signature(type(model).forward).parameters
        self._rope_takes_token_types = "mm_token_type_ids" in forward

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer(text).input_ids
        return int(ids[0]) if len(ids) == 1 else None

    def render(self, prompt: str) -> str:
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": INSTRUCTION_PREFIX},
                    {"type": "image"},
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        text: str = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        return text

    def _template_prefix_length(self) -> int:
        """How many leading tokens (system turn + instruction prefix) the embedding drops.

        The reference hard-codes 217 for Qwen2.5-VL's tokenizer. Tokenizing the rendered template
        up to the end of the prefix gives 218 tokens with that tokenizer, the last one being the
        prefix's final ":"; the reference keeps that token, so the count is one less.
        (Checked with Qwen's BPE ranks: tokens 215..217 of a rendered template are "User",
        " Prompt", ":", and 2073/854 are “ and ”, the ids the reference tests for.)
        """
        text = self.render("")
        head = text[: text.index(INSTRUCTION_PREFIX) + len(INSTRUCTION_PREFIX)]
        return len(self.tokenizer(head).input_ids) - 1

    def token_ids(self, text: str, expanded_ids: torch.Tensor) -> torch.Tensor:
        """Merge the processor's ids (up to <|vision_end|>) with the quote-split ids after it."""
        pieces: list[torch.Tensor] = []
        for piece in split_quoted(text):
            ids = torch.tensor(self.tokenizer(piece).input_ids, dtype=torch.long)
            if (
                len(ids) >= 2
                and int(ids[0]) == self.open_quote_id
                and int(ids[-1]) == self.close_quote_id
            ):
                ids = ids[1:-1]
            pieces.append(ids)
        split_ids = torch.cat(pieces)
        cut_expanded = int((expanded_ids == self.vision_end_id).nonzero()[0, 0])
        cut_split = int((split_ids == self.vision_end_id).nonzero()[0, 0])
        return torch.cat([expanded_ids[:cut_expanded], split_ids[cut_split:]])

    def qwen_view(self, image: Image.Image) -> Image.Image:
        """The image as the reference hands it to the processor (after qwen_vl_utils' resize)."""
        image = image.convert("RGB")
        return image.resize(vision_utils_size(image.width, image.height))

    @torch.inference_mode()
    def encode(self, prompt: str, image: Image.Image) -> Conditioning:
        """Conditioning of batch 1, padded to `max_length`, for one instruction and image."""
        device, dtype = placement(self.model)
        text = self.render(prompt)
        inputs = self.processor(
            text=[text], images=[self.qwen_view(image)], padding=True, return_tensors="pt"
        )
        input_ids = self.token_ids(text, inputs["input_ids"][0]).unsqueeze(0).to(device)
        attention_mask = (input_ids > 0).long()
        # transformers 5 builds Qwen's 3-D (M-RoPE) positions only from explicit token types;
        # 4.x, which the reference runs on, derives them from the ids.
        token_types = {}
        if self._rope_takes_token_types:
            token_types["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=inputs["pixel_values"].to(device, dtype),
            image_grid_thw=inputs["image_grid_thw"].to(device),
            output_hidden_states=True,
            **token_types,
        )
        hidden = outputs.hidden_states[-1][0, self.prefix_length :][: self.max_length]
        emb = torch.zeros(
            1, self.max_length, hidden.shape[-1], dtype=dtype, device=device
        )  # [1, max_length, hidden]
        mask = torch.zeros(1, self.max_length, dtype=torch.long, device=device)
        emb[0, : hidden.shape[0]] = hidden
        mask[0, : hidden.shape[0]] = 1
        txt_ids = torch.zeros(1, self.max_length, 3, device=device)  # no text positions
        return Conditioning(emb, mask, txt_ids)


class EncodingCache:
    """Exact reuse of recent (prompt, image) encodings, the negative prompt above all.

    Step1X-Edit encodes the negative prompt together with the source image, so its encoding
    differs per image; the cache pays off when one image is edited several times (the
    playground, retries, reasoning rounds). Each pair is encoded alone, so a hit is the very
    tensor a fresh encode would give.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], Conditioning] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(
        self, encode: Callable[[str, Image.Image], Conditioning], prompt: str, image: Image.Image
    ) -> Conditioning:
        key = (prompt, image_digest(image))
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        result = encode(prompt, image)
        self._entries[key] = result
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return result

    def clear(self) -> None:
        self._entries.clear()
