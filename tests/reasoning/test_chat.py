"""The generation plumbing through the real (tiny, random) Qwen2.5-VL on CPU."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.model.qwen_tiny import build_tiny_qwen
from stepedit.reasoning import ReasoningOptions, Thinker, TokenBudget, run_reasoning_edit
from stepedit.reasoning.chat import QwenChat, to_hf_messages
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


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_generation_is_bounded(talkative_qwen: TinyQwen, source: Image.Image) -> None:
    chat = QwenChat(*talkative_qwen)
    conversation = rewrite_conversation(source, "add a hat")
    assert chat(conversation, max_new_tokens=5) == "AAAAA"  # exactly max_new_tokens tokens
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat(conversation, max_new_tokens=0)


def test_sampling_draws_from_the_given_generator_only(tiny_qwen: TinyQwen) -> None:
    """The random tiny Qwen's answers are noise: sampled, they differ by seed, and one seed
    gives one answer; transformers' global RNG is neither used nor disturbed."""
    conversation = rewrite_conversation(None, "add a hat")  # no image: a short prompt

    def answers(seed: int) -> list[str]:
        chat = QwenChat(*tiny_qwen, generator=seeded(seed))
        return [chat(conversation, max_new_tokens=6) for _ in range(2)]

    global_state = torch.random.get_rng_state()
    first = answers(1)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    torch.manual_seed(12345)  # the global RNG has no say
    assert answers(1) == first
    assert first[0] != first[1]  # the stream continues from one call to the next
    assert answers(2) != first


def test_the_models_own_top_k_applies(tiny_qwen: TinyQwen) -> None:
    """As in the reference's generate() call, the model's generation settings stay in force:
    with top_k 1 sampling keeps a single candidate, whatever the seed."""
    model, processor = tiny_qwen
    conversation = rewrite_conversation(None, "add a hat")
    saved = model.generation_config.top_k
    model.generation_config.top_k = 1
    try:
        one, two = (
            QwenChat(model, processor, generator=seeded(s))(conversation, max_new_tokens=6)
            for s in (1, 2)
        )
    finally:
        model.generation_config.top_k = saved
    assert one == two


def test_reasoning_through_tiny_qwen_changes_the_conditioning_text(
    talkative_qwen: TinyQwen, source: Image.Image
) -> None:
    diffusion = FakeDiffusion()
    result = run_reasoning_edit(
        Thinker(QwenChat(*talkative_qwen), BUDGET, max_asks=1),
        diffusion,
        source,
        "add a hat",
        seed=3,
        options=ReasoningOptions(max_rounds=1),
    )
    assert diffusion.calls[0][1] == "AAAAAA"
    assert result.instruction == "AAAAAA"
    judgement = result.rounds[0].judgement
    assert judgement is not None
    # "AAAA" is no consistency JSON: no verdict is asked, the round fails
    assert judgement.consistency is None and judgement.verdict.kind == "failed"
    assert judgement.edit_score.raw == "AAAA" and judgement.selection_score == 0.0
