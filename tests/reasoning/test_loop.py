"""The reasoning control flow with a scripted MLLM and a fake diffusion step."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import pytest
from PIL import Image

from stepedit.reasoning import (
    Judgement,
    ReasoningOptions,
    ReasoningResult,
    Round,
    Thinker,
    run_reasoning_edit,
)
from stepedit.reasoning.loop import select_best
from stepedit.reasoning.prompts import REFLECT_SYSTEM

from .scripted import FAILED, RETRY, SUCCESS, ScriptedMLLM, score_json

REWRITTEN = "Add a red straw hat on the table next to the apple."


class FakeDiffusion:
    """A deterministic 'edit': the output colour is a hash of (input pixels, instruction, seed)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str, int]] = []

    def __call__(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        self.calls.append((image.tobytes(), instruction, seed))
        digest = hashlib.sha256(image.tobytes() + instruction.encode() + seed.to_bytes(8)).digest()
        return Image.new("RGB", image.size, tuple(digest[:3]))


def run(
    mllm: ScriptedMLLM,
    source: Image.Image,
    seed: int = 42,
    max_rounds: int = 3,
) -> tuple[FakeDiffusion, ReasoningResult]:
    diffusion = FakeDiffusion()
    options = ReasoningOptions(max_rounds=max_rounds)
    result = run_reasoning_edit(Thinker(mllm), diffusion, source, "hat pls", seed, options)
    return diffusion, result


def judged(round_: Round) -> Judgement:
    assert round_.judgement is not None
    return round_.judgement


def test_thinking_changes_the_conditioning_text(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    diffusion = FakeDiffusion()
    result = run_reasoning_edit(
        Thinker(scripted()), diffusion, source, "hat pls", 7, ReasoningOptions()
    )
    assert diffusion.calls[0][1] == REWRITTEN
    assert result.instruction == REWRITTEN
    assert result.original_instruction == "hat pls"
    assert result.thinking_raw == REWRITTEN
    assert result.passes == ["thinking", "diffusion_1", "reflection_1"]


def test_without_thinking_the_user_instruction_is_used(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted()
    diffusion = FakeDiffusion()
    result = run_reasoning_edit(
        Thinker(mllm), diffusion, source, "hat pls", 7, ReasoningOptions(enable_thinking=False)
    )
    assert diffusion.calls[0][1] == "hat pls"
    assert mllm.count("rewrite") == 0
    assert "thinking" not in result.timings
    # Reflection judges against the instruction the edit was made from.
    assert "hat pls" in str(mllm.seen[0][1].parts[-1])


def test_both_off_is_a_plain_edit(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[RETRY])
    diffusion = FakeDiffusion()
    result = run_reasoning_edit(
        Thinker(mllm),
        diffusion,
        source,
        "hat pls",
        7,
        ReasoningOptions(enable_thinking=False, enable_reflection=False),
    )
    assert mllm.calls == []
    assert len(result.rounds) == 1 and result.rounds[0].judgement is None
    assert result.image is result.rounds[0].image
    assert result.passes == ["diffusion_1"]


def test_a_retry_verdict_edits_the_candidate_again_with_the_correction(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[RETRY, SUCCESS])
    diffusion, result = run(mllm, source)
    rounds = result.rounds
    assert len(rounds) == 2
    assert [judged(r).verdict.kind for r in rounds] == ["retry", "success"]
    assert rounds[1].instruction == "Change the color of the hat to red."
    assert rounds[1].edits == "previous"
    assert diffusion.calls[1][0] == rounds[0].image.tobytes()  # round 2 edits round 1's output
    # Every verdict is judged against the source and the thinking instruction.
    reflect_prompts = [c[1].parts[-1] for c in mllm.seen if c[0].parts[0] == REFLECT_SYSTEM]
    assert all(REWRITTEN in str(text) for text in reflect_prompts)
    assert [r.seed for r in rounds] == [42, 43]


@pytest.mark.parametrize("max_rounds", [1, 2, 3, 5])
def test_the_round_limit_holds(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image, max_rounds: int
) -> None:
    mllm = scripted(reflect=[RETRY])  # never satisfied
    diffusion, result = run(mllm, source, max_rounds=max_rounds)
    assert len(diffusion.calls) == max_rounds
    assert len(result.rounds) == max_rounds
    assert mllm.count("reflect") == max_rounds


def test_default_is_three_rounds(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    diffusion, _ = run(scripted(reflect=[RETRY]), source)
    assert len(diffusion.calls) == 3


def test_failed_starts_over_from_the_source(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[FAILED, SUCCESS])
    diffusion, result = run(mllm, source)
    rounds = result.rounds
    assert rounds[1].edits == "source"
    assert rounds[1].instruction == REWRITTEN
    assert diffusion.calls[1][0] == source.tobytes()
    assert diffusion.calls[1][2] == 43  # a new seed, so a different candidate


def test_the_best_scoring_candidate_is_returned(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(
        reflect=[RETRY, RETRY, RETRY],
        edit_score=[score_json(5, 9), score_json(9, 8), score_json(7, 7)],
        quality_score=[score_json(9, 9), score_json(8, 9), score_json(9, 9)],
    )
    _, result = run(mllm, source)
    scores = [judged(r).selection_score for r in result.rounds]
    assert scores == [45.0, 64.0, 63.0]
    assert result.best_index == 1
    assert result.image is result.rounds[1].image
    assert len(result.candidates) == 3


def test_ties_prefer_success_then_the_later_candidate(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[FAILED, RETRY, FAILED], edit_score=[score_json(8, 8)])
    _, result = run(mllm, source)
    assert result.best_index == 2

    mllm = scripted(reflect=[RETRY, SUCCESS], edit_score=[score_json(8, 8)])
    _, result = run(mllm, source)
    assert result.best_index == 1


def test_a_success_tie_beats_a_later_plain_one(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    success = scripted(reflect=[SUCCESS])
    retry = scripted(reflect=[RETRY])
    _, first = run(success, source, max_rounds=1)
    _, second = run(retry, source, max_rounds=1)
    rounds = [first.rounds[0], dataclasses.replace(second.rounds[0], index=1)]
    assert judged(rounds[0]).selection_score == judged(rounds[1]).selection_score
    assert select_best(rounds) == 0


@pytest.mark.parametrize(
    "answer", ["", "The edit is fine.", "<#Think> hmm", "<#Think> a <#Success> <#Failed>"]
)
def test_a_malformed_verdict_accepts_the_current_candidate(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image, answer: str
) -> None:
    mllm = scripted(reflect=[answer], edit_score=["not json"], quality_score=[""])
    diffusion, result = run(mllm, source)
    assert len(diffusion.calls) == 1
    judgement = judged(result.rounds[0])
    assert judgement.verdict.kind == "malformed"
    assert judgement.verdict.raw == answer
    assert judgement.selection_score == 0.0
    assert result.image is result.rounds[0].image


def test_empty_answers_everywhere_do_not_crash(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    empty = [""]
    mllm = scripted(
        rewrite=empty,
        describe=empty,
        consistency=empty,
        reflect=empty,
        edit_score=empty,
        quality_score=empty,
    )
    diffusion, result = run(mllm, source)
    assert diffusion.calls[0][1] == "hat pls"  # nothing to rewrite with: the instruction stays
    assert len(result.rounds) == 1


def test_same_seed_reproduces_the_whole_run(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    def once(seed: int) -> tuple[list[bytes], list[str], int]:
        mllm = scripted(reflect=[RETRY, FAILED, SUCCESS])
        _, result = run(mllm, source, seed=seed)
        rounds = result.rounds
        return (
            [r.image.tobytes() for r in rounds],
            [judged(r).verdict.raw for r in rounds],
            result.best_index,
        )

    assert once(1234) == once(1234)
    assert once(1234)[0] != once(999)[0]


def test_timings_per_pass(scripted: Callable[..., ScriptedMLLM], source: Image.Image) -> None:
    _, result = run(scripted(reflect=[RETRY, SUCCESS]), source)
    timings = result.timings
    assert set(timings) == {
        "thinking",
        "diffusion",
        "diffusion_1",
        "diffusion_2",
        "reflection",
        "reflection_1",
        "reflection_2",
        "total",
    }
    assert all(value >= 0 for value in timings.values())
    assert timings["diffusion"] == pytest.approx(timings["diffusion_1"] + timings["diffusion_2"])


def test_progress_callback_sees_every_pass(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    seen: list[str] = []
    result = run_reasoning_edit(
        Thinker(scripted(reflect=[RETRY, SUCCESS])),
        FakeDiffusion(),
        source,
        "hat pls",
        0,
        on_pass=seen.append,
    )
    assert seen == result.passes


def test_max_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rounds"):
        ReasoningOptions(max_rounds=0)
