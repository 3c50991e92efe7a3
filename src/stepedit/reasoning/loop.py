"""The v1.2 reasoning control flow: thinking, candidate rounds with reflection, best pick.

Facts from the reference (Peyton-Chen/diffusers@c69df6bd, pipeline_step1x_edit_v1p2.py,
`Step1XEditPipelineV1P2.__call__`):
- thinking rewrites the instruction once, before any round; every reflection judges against that
  (rewritten) instruction and the original source image;
- at most `max_try_cnt` = 3 rounds; <#Success>/<#Others> stop; <#Reflection> edits the *latest
  candidate* with the corrected instruction; anything else (<#Failed>, no readable verdict)
  starts over from the source image with the thinking instruction;
- one random stream for the whole run: the same `generator` goes to every round's
  `prepare_latents`, so round r continues where round r - 1 stopped (the candidate maker owns
  that stream; every round reports the run's seed);
- the returned image is the candidate with the highest min(score1) * min(score2), starting from
  -1; on a tie a <#Success> candidate (not <#Others>) beats one without, otherwise the later
  candidate wins.
Where stepedit departs from it on purpose is listed in `DEVIATIONS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

from stepedit.reasoning.thinker import Judgement, Thinker
from stepedit.request import Pass

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROUNDS = 3  # `max_try_cnt: int = 3` in Step1XEditPipelineV1P2.__call__

# The reference behaviours stepedit does not reproduce, by name (the parity harness reports its
# scenarios that meet one as such). Each would condition the DiT on an empty instruction.
DEVIATIONS: dict[str, str] = {
    "empty-thinking": (
        "an empty thinking answer keeps the user's instruction; the reference conditions every "
        "round, and judges every candidate, on the empty string"
    ),
    "blank-reflection": (
        "a <#Reflection> with no instruction after it is unreadable and asked again; the "
        "reference edits the candidate with an empty instruction"
    ),
}


class CandidateMaker(Protocol):
    """One diffusion edit: `image` edited by `instruction`. Successive calls in one run draw
    from one random stream, seeded once, as the reference's rounds do."""

    def __call__(self, image: Image.Image, instruction: str) -> Image.Image: ...


@dataclass(frozen=True)
class ReasoningOptions:
    enable_thinking: bool = True
    enable_reflection: bool = True
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {self.max_rounds}")


@dataclass(frozen=True)
class Round:
    """One candidate: what it was made from, and what the reflection pass said about it."""

    index: int  # 0-based
    instruction: str  # the instruction the DiT was conditioned on in this round
    edits: Literal["source", "previous"]  # which image this round edited
    seed: int  # the run's seed: every round draws from the one stream it seeds
    image: Image.Image
    diffusion_seconds: float
    judgement: Judgement | None  # None when reflection is off


@dataclass
class ReasoningResult:
    image: Image.Image  # the chosen candidate
    best_index: int
    instruction: str  # the instruction after thinking (the user's when thinking is off)
    original_instruction: str
    rounds: list[Round]
    passes: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    thinking_raw: str | None = None  # the thinking pass's answer, verbatim

    @property
    def candidates(self) -> list[Image.Image]:
        return [r.image for r in self.rounds]


def select_best(rounds: Sequence[Round]) -> int:
    """Index of the candidate to return (the reference's rule; see the module docstring)."""
    best, best_score, best_success = 0, -1.0, False
    for r in rounds:
        if r.judgement is None:
            continue
        score = r.judgement.selection_score
        success = r.judgement.verdict.is_tagged_success
        if score > best_score or (score == best_score and (success or not best_success)):
            best, best_score, best_success = r.index, score, success
    return best


def _timings(thinking: float | None, rounds: Sequence[Round], total: float) -> dict[str, float]:
    timings: dict[str, float] = {}
    if thinking is not None:
        timings[Pass.THINKING] = thinking
    timings[Pass.DIFFUSION] = sum(r.diffusion_seconds for r in rounds)
    for r in rounds:
        timings[Pass.DIFFUSION.round(r.index + 1)] = r.diffusion_seconds
    judged = [r for r in rounds if r.judgement is not None]
    if judged:
        timings[Pass.REFLECTION] = sum(r.judgement.seconds for r in judged if r.judgement)
        for r in judged:
            assert r.judgement is not None
            timings[Pass.REFLECTION.round(r.index + 1)] = r.judgement.seconds
    timings["total"] = total
    return timings


def run_reasoning_edit(
    thinker: Thinker,
    make_candidate: CandidateMaker,
    source: Image.Image,
    instruction: str,
    seed: int,
    options: ReasoningOptions | None = None,
    on_pass: Callable[[str], None] | None = None,
) -> ReasoningResult:
    """Thinking -> candidate -> reflection -> (retry)... -> best candidate.

    `seed` is the run's, recorded on every round (the caller seeds both the candidates' random
    stream and the MLLM's with it). `on_pass(name)` is called as each pass starts ("thinking",
    "diffusion_1", "reflection_1", ...), for progress reporting.
    """
    options = options or ReasoningOptions()
    notify = on_pass or (lambda _name: None)
    started = time.perf_counter()
    passes: list[str] = []

    # 1. Thinking: the instruction every round and every verdict is based on.
    thinking_seconds: float | None = None
    thinking_raw: str | None = None
    base_instruction = instruction
    if options.enable_thinking:
        notify(Pass.THINKING)
        passes.append(Pass.THINKING)
        t0 = time.perf_counter()
        rewrite = thinker.rewrite(source, instruction)
        thinking_seconds = time.perf_counter() - t0
        base_instruction, thinking_raw = rewrite.instruction, rewrite.raw
        logger.info("thinking: %r -> %r", instruction, base_instruction)

    # 2. Rounds: a candidate, then (with reflection) a verdict that decides the next round.
    max_rounds = options.max_rounds if options.enable_reflection else 1
    rounds: list[Round] = []
    current_image, current_instruction = source, base_instruction
    edits: Literal["source", "previous"] = "source"
    for index in range(max_rounds):
        notify(Pass.DIFFUSION.round(index + 1))
        passes.append(Pass.DIFFUSION.round(index + 1))
        t0 = time.perf_counter()
        candidate = make_candidate(current_image, current_instruction)
        diffusion_seconds = time.perf_counter() - t0

        judgement = None
        if options.enable_reflection:
            notify(Pass.REFLECTION.round(index + 1))
            passes.append(Pass.REFLECTION.round(index + 1))
            judgement = thinker.judge(source, candidate, base_instruction)
            logger.info(
                "round %d verdict %s, score %.3f",
                index + 1,
                judgement.verdict.kind,
                judgement.selection_score,
            )
        rounds.append(
            Round(
                index,
                current_instruction,
                edits,
                seed,
                candidate,
                diffusion_seconds,
                judgement,
            )
        )
        if judgement is None:
            break
        verdict = judgement.verdict
        if verdict.kind == "success":
            break
        if verdict.kind == "retry":
            assert verdict.instruction is not None
            current_image, current_instruction, edits = candidate, verdict.instruction, "previous"
        else:
            current_image, current_instruction, edits = source, base_instruction, "source"

    # 3. Selection.
    best = select_best(rounds)
    return ReasoningResult(
        image=rounds[best].image,
        best_index=best,
        instruction=base_instruction,
        original_instruction=instruction,
        rounds=rounds,
        passes=passes,
        timings=_timings(thinking_seconds, rounds, time.perf_counter() - started),
        thinking_raw=thinking_raw,
    )
