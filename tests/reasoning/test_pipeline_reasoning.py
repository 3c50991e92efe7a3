"""EditPipeline on the tiny v1.2 model: plain edits, and the reasoning passes wired through it.

The MLLM passes are driven by a scripted generator (tests/reasoning/scripted.py) except where a
test says it uses the tiny random Qwen itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stepedit.encoder_v12 import V12_PREFIX_TOKENS, QwenEditEncoderV12
from stepedit.errors import InvalidInput
from stepedit.pipeline import EditOutput, EditPipeline
from stepedit.reasoning import MAX_ASKS, TokenBudget
from stepedit.request import EditRequest

from .scripted import (
    FAILED,
    MALFORMED,
    RETRY,
    RETRY_INSTRUCTION,
    SUCCESS,
    ScriptedMLLM,
    default_answers,
    score_json,
)

FAST: dict[str, Any] = {"num_inference_steps": 2, "size_level": 256}
REWRITTEN = "Add a red straw hat on the table next to the apple."


@pytest.fixture(scope="module")
def pipe() -> EditPipeline:
    return EditPipeline.from_pretrained("dummy:tiny-v1.2", device="cpu")


@pytest.fixture
def source() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def scripted(pipe: EditPipeline, **answers: list[str]) -> ScriptedMLLM:
    mllm = ScriptedMLLM(default_answers(**answers))
    pipe.text_generator = mllm
    return mllm


def edit(pipe: EditPipeline, source: Image.Image, prompt: str, **fields: Any) -> EditOutput:
    return pipe(source, EditRequest(prompt=prompt, **fields))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def plain(pipe: EditPipeline, source: Image.Image, prompt: str, seed: int) -> Image.Image:
    out = edit(
        pipe, source, prompt, seed=seed, enable_thinking=False, enable_reflection=False, **FAST
    )
    assert out.passes == ["diffusion"] and out.rounds == []
    return out.images[0]


# ---------------------------------------------------------------- plain v1.2 edits


def test_plain_v12_edit_is_deterministic_and_seed_sensitive(
    pipe: EditPipeline, source: Image.Image
) -> None:
    a = plain(pipe, source, "add a hat", 7)
    b = plain(pipe, source, "add a hat", 7)
    c = plain(pipe, source, "add a hat", 8)
    assert a.size == source.size
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_v12_conditioning_reaches_the_dit(pipe: EditPipeline, source: Image.Image) -> None:
    """Quoted text feeds text_token_mapping, and the prompt changes the image."""
    calls: list[dict[str, torch.Tensor]] = []
    handle = pipe.dit.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw), with_kwargs=True
    )
    try:
        quoted = plain(pipe, source, 'write "HI" on it', 1)
    finally:
        handle.remove()
    other = plain(pipe, source, "write HI on it", 1)
    assert not np.array_equal(pixels(quoted), pixels(other))
    positive, negative = calls[0], calls[1]  # one forward per CFG half
    assert positive["text_mask"].sum() == 2  # "H" and "I"
    assert negative["text_mask"].sum() == 0
    assert positive["llm_embedding"].shape[1] != negative["llm_embedding"].shape[1]  # unpadded
    assert positive["txt_ids"][0, -1, 0] == -1  # positions end at -1 (reference)
    assert positive["mask"].all()


def test_v12_encoder_cuts_the_prefix(pipe: EditPipeline, source: Image.Image) -> None:
    assert isinstance(pipe.encoder, QwenEditEncoderV12)
    cond = pipe.encoder.encode("add a hat", source)
    rendered = pipe.encoder.render("add a hat")
    ids, _, _, grid = pipe.encoder.tokenize(rendered, source)
    assert cond.emb.shape[1] == ids.shape[1] - V12_PREFIX_TOKENS
    vision = (cond.txt_ids[0, :, 1:] != 0).any(dim=-1).sum()
    assert vision == int(grid[0, 1] * grid[0, 2]) // 4


def test_v12_instruction_too_long_for_the_token_window_is_refused(
    pipe: EditPipeline, source: Image.Image
) -> None:
    words = " ".join(f"w{i}" for i in range(3000))
    with pytest.raises(InvalidInput) as info:
        pipe.encoder.encode(words, source)
    assert info.value.param == "prompt"


def test_guidance_at_most_one_runs_a_single_forward(
    pipe: EditPipeline, source: Image.Image
) -> None:
    calls: list[object] = []
    handle = pipe.dit.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        edit(pipe, source, "add a hat", seed=1, guidance_scale=1.0, enable_thinking=False,
             enable_reflection=False, **FAST)  # fmt: skip
    finally:
        handle.remove()
    assert len(calls) == FAST["num_inference_steps"]


# ---------------------------------------------------------------- reasoning


def test_v12_defaults_run_thinking_and_reflection(pipe: EditPipeline, source: Image.Image) -> None:
    mllm = scripted(pipe)
    out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    assert out.passes == ["thinking", "diffusion_1", "reflection_1"]
    assert out.prompt == REWRITTEN and out.original_prompt == "put a hat on it"
    assert [r.verdict for r in out.rounds] == ["success"]
    assert out.rounds[0].thought and out.rounds[0].raw == SUCCESS
    assert {"thinking", "diffusion", "diffusion_1", "reflection", "total"} <= set(out.timings)
    assert mllm.count("rewrite") == 1 and mllm.count("reflect") == 1


def test_thinking_changes_the_conditioning_text(
    pipe: EditPipeline, source: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted(pipe)
    encoded: list[str] = []
    original = pipe.encoder.encode

    def spy(prompt: str, image: Image.Image):  # type: ignore[no-untyped-def]
        encoded.append(prompt)
        return original(prompt, image)

    monkeypatch.setattr(pipe.encoder, "encode", spy)
    out = edit(pipe, source, "put a hat on it", seed=5, enable_reflection=False, **FAST)
    assert out.passes == ["thinking", "diffusion_1"]
    assert encoded[0] == REWRITTEN
    unthought = plain(pipe, source, "put a hat on it", 5)
    assert not np.array_equal(pixels(out.images[0]), pixels(unthought))
    assert np.array_equal(pixels(out.images[0]), pixels(plain(pipe, source, REWRITTEN, 5)))


def test_retry_makes_another_round_on_the_candidate(
    pipe: EditPipeline, source: Image.Image
) -> None:
    scripted(pipe, reflect=[RETRY, SUCCESS])
    out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    assert [r.verdict for r in out.rounds] == ["retry", "success"]
    assert out.rounds[1].instruction == RETRY_INSTRUCTION
    assert out.rounds[1].edits == "previous"
    assert [r.seed for r in out.rounds] == [5, 5]  # one stream for the run
    assert out.rounds[0].next_instruction == RETRY_INSTRUCTION


def test_round_limit_holds(pipe: EditPipeline, source: Image.Image) -> None:
    mllm = scripted(pipe, reflect=[RETRY])
    pipe.max_reflection_rounds = 2
    try:
        out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    finally:
        pipe.max_reflection_rounds = 3
    assert len(out.rounds) == 2 and mllm.count("reflect") == 2
    assert out.passes[-1] == "reflection_2"


def test_best_scoring_candidate_is_returned(pipe: EditPipeline, source: Image.Image) -> None:
    scripted(
        pipe,
        reflect=[FAILED, RETRY, SUCCESS],
        edit_score=[score_json(2, 2), score_json(9, 9), score_json(5, 5)],
    )
    out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    assert [r.verdict for r in out.rounds] == ["failed", "retry", "success"]
    assert out.best_round == 1 and out.seeds == [5]
    assert out.prompt == out.rounds[1].instruction == REWRITTEN


def test_rounds_continue_one_random_stream(pipe: EditPipeline, source: Image.Image) -> None:
    """Round 1 draws what a plain edit with the seed draws; round 2, restarted from the source
    with the same instruction, continues the stream: another candidate."""

    def chosen(best: int) -> np.ndarray:
        scores = [score_json(9, 9), score_json(2, 2)]
        scripted(pipe, reflect=[FAILED, SUCCESS], edit_score=scores if best == 0 else scores[::-1])
        out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
        assert [r.edits for r in out.rounds] == ["source", "source"]
        assert out.best_round == best and out.seeds == [5]
        return pixels(out.images[0])

    first, second = chosen(0), chosen(1)
    assert np.array_equal(first, pixels(plain(pipe, source, REWRITTEN, 5)))
    assert not np.array_equal(first, second)


def test_an_unreadable_verdict_is_asked_again(pipe: EditPipeline, source: Image.Image) -> None:
    mllm = scripted(pipe, reflect=[MALFORMED, SUCCESS])
    dummy_asks, pipe.reasoning_max_asks = pipe.reasoning_max_asks, MAX_ASKS
    try:
        out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    finally:
        pipe.reasoning_max_asks = dummy_asks
    assert [r.verdict for r in out.rounds] == ["success"]
    assert out.rounds[0].raw == SUCCESS and mllm.count("reflect") == 2


def test_a_dummy_models_mllm_is_asked_once(pipe: EditPipeline, source: Image.Image) -> None:
    """Its answers are random, never readable: one ask per pass, then the references's
    fallbacks (<#Failed>, a restart from the source)."""
    assert pipe.reasoning_max_asks == 1
    mllm = scripted(pipe, reflect=[MALFORMED])
    pipe.max_reflection_rounds = 2
    try:
        out = edit(pipe, source, "put a hat on it", seed=5, **FAST)
    finally:
        pipe.max_reflection_rounds = 3
    assert [r.verdict for r in out.rounds] == ["failed", "failed"]
    assert out.rounds[0].raw == MALFORMED and out.rounds[1].edits == "source"
    assert mllm.count("reflect") == 2


def test_reflection_refuses_several_images_and_v11_refuses_reasoning(
    pipe: EditPipeline, source: Image.Image
) -> None:
    with pytest.raises(InvalidInput) as info:
        edit(pipe, source, "add a hat", num_images=2, **FAST)
    assert info.value.param == "num_images"
    scripted(pipe)
    out = edit(pipe, source, "add a hat", num_images=2, seed=1, enable_reflection=False, **FAST)
    assert len(out.images) == 2 and out.seeds == [1, 2] and out.prompt == REWRITTEN


def test_enhance_prompt_rewrites_before_editing(pipe: EditPipeline, source: Image.Image) -> None:
    mllm = scripted(pipe, rewrite=["Add a wide red hat."])
    out = edit(pipe, source, "hat", seed=2, enhance_prompt=True, enable_thinking=False,
               enable_reflection=False, **FAST)  # fmt: skip
    assert out.passes == ["enhance", "diffusion"] and out.prompt == "Add a wide red hat."
    assert pipe.enhance("hat", seed=1) == "Add a wide red hat." and mllm.count("rewrite") == 2


def test_same_seed_reproduces_the_whole_run_with_the_tiny_qwen(source: Image.Image) -> None:
    """Real sampled generation on the tiny random Qwen, bounded tokens: run twice, compare."""
    pipe = EditPipeline.from_pretrained("dummy:tiny-v1.2", device="cpu")
    pipe.reasoning_budget = TokenBudget(6, 6, 6, 6, 6)
    pipe.max_reflection_rounds = 1

    def run() -> tuple[bytes, str, list[str | None]]:
        out = edit(pipe, source, "add a hat", seed=11, enhance_prompt=True, **FAST)
        assert out.passes[:3] == ["enhance", "thinking", "diffusion_1"]
        return out.images[0].tobytes(), out.prompt, [r.raw for r in out.rounds]

    assert run() == run()


def test_the_enhancer_samples_from_the_seed(pipe: EditPipeline) -> None:
    pipe.text_generator = pipe._generate_text  # the tiny Qwen itself
    budget, pipe.reasoning_budget = pipe.reasoning_budget, TokenBudget(6, 6, 6, 6, 6)
    try:
        first = pipe.enhance("add a hat", seed=11)
        assert pipe.enhance("add a hat", seed=11) == first
        assert pipe.enhance("add a hat", seed=12) != first
    finally:
        pipe.reasoning_budget = budget
