"""The generation plumbing through the real (tiny, random) Qwen2.5-VL on CPU."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.encoder import QwenEditEncoder
from stepedit.model.qwen_tiny import build_tiny_qwen
from stepedit.reasoning import ReasoningOptions, Thinker, TokenBudget, run_reasoning_edit
from stepedit.reasoning.chat import QwenChat, from_message_generator, to_hf_messages
from stepedit.reasoning.prompts import ChatTurn, rewrite_conversation

from .test_loop import FakeDiffusion

TinyQwen = tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]
BUDGET = TokenBudget(rewrite=6, describe=4, consistency=4, reflect=4, score=4)


@pytest.fixture(scope="module")
def tiny_qwen() -> TinyQwen:
    return build_tiny_qwen(seed=0)


@pytest.fixture(scope="module")
def talkative_qwen() -> TinyQwen:
    """A random tiny Qwen whose output head favours the letter "A" (a random model with tied
    embeddings otherwise repeats its last input token, a newline, which strips to nothing)."""
    model, processor = build_tiny_qwen(seed=0)
    weight = model.lm_head.weight.detach().clone()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    head.weight.data.copy_(weight)
    head.bias.data.zero_()
    head.bias.data[processor.tokenizer.convert_tokens_to_ids("A")] = 1e4
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model, processor


@pytest.fixture
def source() -> Image.Image:
    return Image.new("RGB", (96, 64), (200, 120, 40))


def test_turns_become_transformers_chat_messages(source: Image.Image) -> None:
    messages = to_hf_messages(
        [ChatTurn("system", ("Be strict.",)), ChatTurn("user", ("Before", source, "after"))]
    )
    assert messages[0] == {"role": "system", "content": "Be strict."}
    assert [item["type"] for item in messages[1]["content"]] == ["text", "image", "text"]
    assert messages[1]["content"][1]["image"] is source


def test_generation_is_bounded_and_greedy(talkative_qwen: TinyQwen, source: Image.Image) -> None:
    chat = QwenChat(*talkative_qwen)
    conversation = rewrite_conversation(source, "add a hat")
    first = chat(conversation, max_new_tokens=5)
    assert first == "AAAAA"  # exactly max_new_tokens new tokens, decoded
    assert chat(conversation, max_new_tokens=5) == first
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat(conversation, max_new_tokens=0)


def test_thinking_through_tiny_qwen_changes_the_conditioning_text(
    talkative_qwen: TinyQwen, source: Image.Image
) -> None:
    diffusion = FakeDiffusion()
    result = run_reasoning_edit(
        Thinker(QwenChat(*talkative_qwen), BUDGET),
        diffusion,
        source,
        "add a hat",
        seed=3,
        options=ReasoningOptions(max_rounds=2),
    )
    assert diffusion.calls[0][1] == "AAAAAA"
    assert result.instruction == "AAAAAA"
    judgement = result.rounds[0].judgement
    assert judgement is not None
    assert judgement.verdict.kind == "malformed"  # "AAAA" has no tags: accepted as is
    assert judgement.verdict.raw == "AAAA"
    assert len(result.rounds) == 1


def test_thinking_survives_an_empty_answer(tiny_qwen: TinyQwen, source: Image.Image) -> None:
    def once() -> tuple[str, list[bytes]]:
        diffusion = FakeDiffusion()
        result = run_reasoning_edit(
            Thinker(QwenChat(*tiny_qwen), BUDGET),
            diffusion,
            source,
            "add a hat",
            seed=5,
            options=ReasoningOptions(enable_reflection=False),
        )
        return result.instruction, [r.image.tobytes() for r in result.rounds]

    instruction, images = once()
    assert instruction == "add a hat"  # nothing usable came back: the instruction stands
    assert once() == (instruction, images)


def test_encoder_generate_can_drive_the_passes(
    talkative_qwen: TinyQwen, source: Image.Image
) -> None:
    encoder = QwenEditEncoder(*talkative_qwen)
    generate = from_message_generator(encoder.generate)
    assert Thinker(generate, BUDGET).rewrite(source, "add a hat").instruction == "AAAAAA"
