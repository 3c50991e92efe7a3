"""A tiny random-weight Qwen2.5-VL and a tiny Qwen-style tokenizer, for `dummy:tiny-*` sources.

Everything is transformers' own Qwen2.5-VL code (config, model, processor, the slow PIL image
processor); only the sizes are small. The tokenizer is a byte-level BPE over the 256 byte symbols
(in GPT-2's byte-to-unicode order, so id 0 is "!" exactly as in Qwen's vocabulary, which matters
because the reference builds its attention mask as `input_ids > 0`), a handful of merges that make
the curly quotes “ and ” single tokens (the reference's quote trick looks for them), and Qwen's
special tokens in Qwen's order. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.tokenization_utils_base import AddedToken

from stepedit.model.presets import TINY_QWEN_HIDDEN
from stepedit.model.qwen import CHAT_TEMPLATE, ImageTextProcessor

logger = logging.getLogger(__name__)

# Qwen2.5-VL's special tokens in the order of their ids (151643 onwards in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

TINY_MAX_NEW_TOKENS = 12
# The reference's processor bounds: the image is resized to 256..324 merged 28x28 tokens.
MIN_PIXELS = 256 * 28 * 28
MAX_PIXELS = 324 * 28 * 28


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table as a list indexed by byte (Qwen's byte-level alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols (ids in Qwen's order: printable bytes first) plus merges for “ and ”."""
    table = byte_symbols()
    ordered = sorted(range(256), key=lambda b: (table[b] != chr(b) or b < 33, ord(table[b])))
    vocab = {table[b]: i for i, b in enumerate(ordered)}
    merges: list[tuple[str, str]] = []
    for quote in ("“", "”"):
        pieces = [table[b] for b in quote.encode("utf-8")]
        merged = pieces[0]
        for piece in pieces[1:]:
            if merged + piece not in vocab:
                merges.append((merged, piece))
                vocab[merged + piece] = len(vocab)
            merged += piece
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return vocab, merges


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    vocab, merges = build_vocab()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=cast(Any, merges),  # tokenizers wants (left, right) pairs; the stub says str
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    tokenizer.model_max_length = 32768
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor() -> ImageTextProcessor:
    """Tokenizer + the slow PIL image processor (no torchvision needed)."""
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2
    )
    return ImageTextProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_qwen_config(vocab: dict[str, int]) -> Qwen2_5_VLConfig:
    vocab_size = (len(vocab) + 7) // 8 * 8
    head_dim = 16
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TINY_QWEN_HIDDEN,
            "intermediate_size": 2 * TINY_QWEN_HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": TINY_QWEN_HIDDEN // head_dim,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": vocab["<|endoftext|>"],
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TINY_QWEN_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_qwen(
    seed: int = 0,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A random Qwen2.5-VL (hidden TINY_QWEN_HIDDEN) and its processor; same seed, same weights."""
    processor = build_tiny_processor()
    config = tiny_qwen_config(processor.tokenizer.get_vocab())
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval().requires_grad_(False)
    # Its text is noise that rarely ends: cap what a reasoning pass asks of it (the pipeline
    # reads the cap), so a test of the passes takes seconds on any machine.
    model.generation_config.max_new_tokens = TINY_MAX_NEW_TOKENS
    return model, processor


def save_tiny_qwen(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    directory: str | Path,
) -> None:
    """Write a folder that `load_qwen` (or transformers' from_pretrained) reads back."""
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
