"""The reasoning control flow with a scripted MLLM and a fake diffusion step."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable

import pytest
from PIL import Image

from stepedit.reasoning import (
    MAX_ASKS,
    Judgement,
    ReasoningOptions,
    ReasoningResult,
    Round,
    Thinker,
    run_reasoning_edit,
)
from stepedit.reasoning.loop import select_best
from stepedit.reasoning.prompts import REFLECT_SYSTEM

from .scripted import (
    FAILED,
    MALFORMED,
    NOT_JSON,
    OTHERS,
    RETRY,
    RETRY_INSTRUCTION,
    SUCCESS,
    ScriptedMLLM,
    score_json,
)

REWRITTEN = "Add a red straw hat on the table next to the apple."


class FakeDiffusion:
    """A deterministic 'edit': the output colour is a hash of (input pixels, instruction, noise),
    the noise drawn from one stream seeded once, as the pipeline's rounds draw theirs."""

    def __init__(self, seed: int = 0) -> None:
        self.stream = random.Random(seed)
        self.calls: list[tuple[bytes, str, int]] = []  # (input pixels, instruction, noise)

    def __call__(self, image: Image.Image, instruction: str) -> Image.Image:
        noise = self.stream.getrandbits(64)
        self.calls.append((image.tobytes(), instruction, noise))
        digest = hashlib.sha256(image.tobytes() + instruction.encode() + noise.to_bytes(8)).digest()
        return Image.new("RGB", image.size, tuple(digest[:3]))


def run(
    mllm: ScriptedMLLM,
    source: Image.Image,
    seed: int = 42,
    max_rounds: int = 3,
) -> tuple[FakeDiffusion, ReasoningResult]:
    diffusion = FakeDiffusion(seed)
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
    assert rounds[1].instruction == RETRY_INSTRUCTION  # verbatim, leading space included
    assert diffusion.calls[1][1] == RETRY_INSTRUCTION
    assert rounds[1].edits == "previous"
    assert diffusion.calls[1][0] == rounds[0].image.tobytes()  # round 2 edits round 1's output
    # Every verdict is judged against the source and the thinking instruction.
    reflect_prompts = [c[1].parts[-1] for c in mllm.seen if c[0].parts[0] == REFLECT_SYSTEM]
    assert all(REWRITTEN in str(text) for text in reflect_prompts)
    assert [r.seed for r in rounds] == [42, 42]  # the run's seed: one stream for all rounds


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
    assert diffusion.calls[1][:2] == diffusion.calls[0][:2]  # same image, same instruction
    # ... but the stream has moved on: a different candidate.
    assert rounds[1].image.tobytes() != rounds[0].image.tobytes()


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


def tie(first: str, second: str, scripted: Callable[..., ScriptedMLLM], source: Image.Image) -> int:
    """select_best over two equally scored one-round runs whose verdicts are `first`, `second`."""
    _, a = run(scripted(reflect=[first]), source, max_rounds=1)
    _, b = run(scripted(reflect=[second]), source, max_rounds=1)
    rounds = [a.rounds[0], dataclasses.replace(b.rounds[0], index=1)]
    assert judged(rounds[0]).selection_score == judged(rounds[1]).selection_score
    return select_best(rounds)


def test_a_success_tie_beats_a_later_plain_one(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    assert tie(SUCCESS, RETRY, scripted, source) == 0
    assert tie(SUCCESS, SUCCESS, scripted, source) == 1


def test_others_does_not_win_ties(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    """<#Others> ends the rounds like <#Success>, but only <#Success> wins a tie (reference)."""
    assert tie(OTHERS, RETRY, scripted, source) == 1
    assert tie(RETRY, OTHERS, scripted, source) == 1


def test_scores_below_minus_one_never_win(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    """The reference starts its best score at -1: a lower score cannot displace candidate 0."""
    mllm = scripted(reflect=[RETRY], edit_score=[score_json(-3, 3), score_json(-2, -2)])
    _, result = run(mllm, source, max_rounds=2)
    assert [judged(r).selection_score for r in result.rounds] == [-21.0, -14.0]
    assert result.best_index == 0


def test_an_unreadable_verdict_is_asked_again_in_the_same_round(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[MALFORMED, RETRY, SUCCESS])
    diffusion, result = run(mllm, source)
    assert len(diffusion.calls) == 2
    assert [judged(r).verdict.kind for r in result.rounds] == ["retry", "success"]
    assert mllm.count("reflect") == 3


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The edit is fine.",
        "<#Think> hmm",
        "<#Think> a <#Success> <#Failed>",
        "<#Think> <#Reflection>",
    ],
)
def test_no_readable_verdict_starts_over_from_the_source(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image, answer: str
) -> None:
    mllm = scripted(reflect=[answer, answer], edit_score=[NOT_JSON], quality_score=[""])
    diffusion, result = run(mllm, source, max_rounds=2)
    assert mllm.count("reflect") == 2 * MAX_ASKS
    assert mllm.count("edit_score") == 2 * MAX_ASKS
    first = judged(result.rounds[0])
    assert first.verdict.kind == "failed" and first.verdict.raw == answer
    assert first.selection_score == 0.0
    assert result.rounds[1].edits == "source"
    assert diffusion.calls[1][0] == source.tobytes()


def test_no_readable_consistency_fails_the_round_without_a_verdict(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(consistency=[NOT_JSON])
    diffusion, result = run(mllm, source)
    assert len(result.rounds) == 3  # every round <#Failed>, each restarting from the source
    assert mllm.count("reflect") == 0
    assert mllm.count("consistency") == 3 * MAX_ASKS
    assert all(call[0] == source.tobytes() for call in diffusion.calls)


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
    # deviation "empty-thinking": nothing to rewrite with, the instruction stays
    assert diffusion.calls[0][1] == "hat pls"
    assert [judged(r).verdict.kind for r in result.rounds] == ["failed"] * 3


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
