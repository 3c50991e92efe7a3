"""Text generation on the loaded Qwen2.5-VL for the reasoning passes (a `TextGenerator`).

Mirrors how the reference's reasoning client feeds the MLLM and decodes (Peyton-Chen/diffusers@
c69df6bd, pipeline_step1x_edit_thinker.py, `QwenGenerativeAIClient.call_model`): the chat
template without "Picture N:" labels, each image resized as qwen_vl_utils does and then bounded
by the processor to 262144..802816 pixels; sampling with temperature 0.7 and top-p 0.9 over the
model's own generation settings (its top-k, transformers' 50 when it sets none; its repetition
penalty), at most `max_new_tokens` new tokens (the passes ask 128, the reference's cap).

One difference in mechanism, none in distribution: transformers samples from the global RNG,
which the reference never seeds. Here the draws come from `generator`, a CPU `torch.Generator`
that the pipeline seeds with the request's seed, so one seed reproduces the answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from stepedit.encoder import vision_utils_size
from stepedit.reasoning.prompts import ChatTurn

logger = logging.getLogger(__name__)

# The reference client: `AutoProcessor.from_pretrained(..., min_pixels=262144, max_pixels=802816)`
REASONING_MIN_PIXELS = 262144
REASONING_MAX_PIXELS = 802816
# ... and `generate(do_sample=True, top_p=0.9, temperature=0.7)`.
REFERENCE_TEMPERATURE = 0.7
REFERENCE_TOP_P = 0.9
TRANSFORMERS_DEFAULT_TOP_K = 50  # what generate() uses when the model's config sets no top_k


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


class SeededSampling(LogitsProcessor):
    """Draws the next token with `generator` after `warpers`, and leaves it the only candidate,
    so that generate()'s greedy step takes it: sampling without the global RNG."""

    def __init__(self, warpers: LogitsProcessorList, generator: torch.Generator) -> None:
        self.warpers = warpers
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(input_ids, scores)  # [batch, vocab]
        probs = torch.softmax(scores.float(), dim=-1).cpu()
        chosen = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


class QwenChat:
    """`TextGenerator` over a Qwen2.5-VL model and its processor (the ones already loaded),
    sampling as the reference does, with the draws from `generator` (a CPU generator; one seeded
    with 0 when none is given)."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        processor: Qwen2_5_VLProcessor,
        *,
        generator: torch.Generator | None = None,
        temperature: float = REFERENCE_TEMPERATURE,
        top_p: float = REFERENCE_TOP_P,
    ) -> None:
        self.model = model
        self.processor = processor
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        top_k = getattr(model.generation_config, "top_k", None)
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
        top_k = TRANSFORMERS_DEFAULT_TOP_K if top_k is None else top_k
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        warpers.append(TopPLogitsWarper(top_p))
        self.sampling = SeededSampling(LogitsProcessorList(warpers), self.generator)

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
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,  # SeededSampling has drawn the token; greedy takes it
            logits_processor=LogitsProcessorList([self.sampling]),
            eos_token_id=self.processor.tokenizer.eos_token_id,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )  # [1, prompt + new]
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        reply: str = self.processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        return reply.strip()
