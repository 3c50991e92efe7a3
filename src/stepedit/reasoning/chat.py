"""Text generation on the loaded Qwen2.5-VL for the reasoning passes (a `TextGenerator`).

Mirrors how the reference's reasoning client feeds the MLLM (Peyton-Chen/diffusers@c69df6bd,
pipeline_step1x_edit_thinker.py, `QwenGenerativeAIClient.call_model`): the chat template without
"Picture N:" labels, each image resized as qwen_vl_utils does and then bounded by the processor to
262144..802816 pixels. Unlike the reference (top-p 0.9, temperature 0.7 sampling, always at most
128 new tokens), decoding is greedy by default and bounded by the caller's `max_new_tokens`, so a
fixed seed reproduces the whole edit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.encoder import vision_utils_size
from stepedit.reasoning.prompts import ChatTurn

logger = logging.getLogger(__name__)

# The reference client: `AutoProcessor.from_pretrained(..., min_pixels=262144, max_pixels=802816)`
REASONING_MIN_PIXELS = 262144
REASONING_MAX_PIXELS = 802816


def to_hf_messages(conversation: Sequence[ChatTurn]) -> list[dict[str, Any]]:
    """Our turns as transformers chat messages; a system turn's text stays a plain string."""
    messages: list[dict[str, Any]] = []
    for turn in conversation:
        if turn.role == "system" and all(isinstance(p, str) for p in turn.parts):
            messages.append({"role": "system", "content": "".join(map(str, turn.parts))})
            continue
        content = [
            {"type": "text", "text": part}
            if isinstance(part, str)
            else {"type": "image", "image": part}
            for part in turn.parts
        ]
        messages.append({"role": turn.role, "content": content})
    return messages


def conversation_images(conversation: Sequence[ChatTurn]) -> list[Image.Image]:
    return [part for turn in conversation for part in turn.parts if isinstance(part, Image.Image)]


class QwenChat:
    """`TextGenerator` over a Qwen2.5-VL model and its processor (the ones already loaded)."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        processor: Qwen2_5_VLProcessor,
        *,
        greedy: bool = True,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.greedy = greedy
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed  # only used when sampling

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, conversation: Sequence[ChatTurn], *, max_new_tokens: int) -> str:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        text = self.processor.apply_chat_template(
            to_hf_messages(conversation), tokenize=False, add_generation_prompt=True
        )
        images = [
            image.convert("RGB").resize(vision_utils_size(image.width, image.height))
            for image in conversation_images(conversation)
        ]
        inputs = self.processor(
            text=[text],
            images=images or None,
            size={"shortest_edge": REASONING_MIN_PIXELS, "longest_edge": REASONING_MAX_PIXELS},
            return_tensors="pt",
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sampling: dict[str, Any] = {"do_sample": False}
        if not self.greedy:
            if self.seed is not None:
                torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.processor.tokenizer.eos_token_id,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            **sampling,
        )  # [1, prompt + new]
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        reply: str = self.processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        return reply.strip()


def from_message_generator(
    generate: Callable[..., str],
) -> Callable[..., str]:
    """Adapt a `generate(messages, max_new_tokens=...)` over transformers-style chat messages
    (such as `QwenEditEncoder.generate`) into a `TextGenerator`."""

    def generate_turns(conversation: Sequence[ChatTurn], *, max_new_tokens: int) -> str:
        return generate(to_hf_messages(conversation), max_new_tokens=max_new_tokens)

    return generate_turns
