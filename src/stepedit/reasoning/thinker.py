"""The MLLM passes of v1.2 reasoning, driven by any text-generation callable.

`Thinker.rewrite` is the thinking pass (reference `Step1XEditThinker.think` ->
`ImageEditEvaluator_EN.prompt_reformat`); `Thinker.judge` is one reflection pass (reference
`Step1XEditThinker.reflect`: `run_full_pipeline` = describe -> consistency score -> tagged verdict,
then `run_best_pipeline` = the two selection scores). Five generations per judged candidate,
as in the reference. Model-free: the callable does the generating, so tests can script it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from stepedit.reasoning import prompts
from stepedit.reasoning.verdicts import (
    Consistency,
    ScorePair,
    Verdict,
    parse_consistency,
    parse_score_pair,
    parse_verdict,
)

logger = logging.getLogger(__name__)

# The reference shrinks every image it shows the MLLM to at most 1024 px a side
# (`image_to_data_url(max_side=1024)`) before its processor's own pixel bounds apply.
MLLM_MAX_SIDE = 1024


class TextGenerator(Protocol):
    """Answer a chat with at most `max_new_tokens` new tokens; deterministic (greedy) by default."""

    def __call__(self, conversation: Sequence[prompts.ChatTurn], *, max_new_tokens: int) -> str: ...


@dataclass(frozen=True)
class TokenBudget:
    """Upper bounds on new tokens per pass: the `max_tokens` each reference call site asks for.

    (The reference's client ignores them and always generates at most 128 tokens; a verdict's
    <#Think> reasoning does not always fit in 128, so we keep the per-call values.)
    """

    rewrite: int = 512
    describe: int = 768
    consistency: int = 1024
    reflect: int = 768
    score: int = 768


def to_mllm_image(image: Image.Image) -> Image.Image:
    """RGB, at most MLLM_MAX_SIDE a side, aspect kept (PIL thumbnail, as the reference)."""
    rgb = image.convert("RGB")
    if max(rgb.size) > MLLM_MAX_SIDE:
        rgb = rgb.copy()
        rgb.thumbnail((MLLM_MAX_SIDE, MLLM_MAX_SIDE))
    return rgb


@dataclass(frozen=True)
class Rewrite:
    """The thinking pass's output: the instruction the DiT is conditioned on."""

    instruction: str
    raw: str
    is_changed: bool


@dataclass(frozen=True)
class Judgement:
    """Everything the reflection pass said about one candidate."""

    verdict: Verdict
    description: str
    consistency: Consistency | None  # None: the consistency JSON could not be read
    edit_score: ScorePair  # [editing success, over-editing]
    quality_score: ScorePair  # [naturalness, artifacts]
    seconds: float

    @property
    def selection_score(self) -> float:
        """min(score1) * min(score2): the reference's candidate ranking (v1p2 `__call__`)."""
        return self.edit_score.worst * self.quality_score.worst


class Thinker:
    """Runs the reasoning passes through `generate`."""

    def __init__(self, generate: TextGenerator, budget: TokenBudget | None = None) -> None:
        self.generate = generate
        self.budget = budget or TokenBudget()

    def _ask(self, conversation: Sequence[prompts.ChatTurn], max_new_tokens: int) -> str:
        return self.generate(conversation, max_new_tokens=max_new_tokens).strip()

    def rewrite(self, image: Image.Image | None, instruction: str) -> Rewrite:
        """Vague instruction -> concrete edit instruction; an empty answer keeps the original."""
        shown = None if image is None else to_mllm_image(image)
        raw = self._ask(prompts.rewrite_conversation(shown, instruction), self.budget.rewrite)
        if not raw:
            logger.warning("thinking pass returned nothing; keeping the instruction as given")
            return Rewrite(instruction, raw, is_changed=False)
        return Rewrite(raw, raw, is_changed=raw != instruction)

    def judge(self, source: Image.Image, edited: Image.Image, instruction: str) -> Judgement:
        """The reflection pass on one candidate, against the source and the instruction."""
        started = time.perf_counter()
        source, edited = to_mllm_image(source), to_mllm_image(edited)
        description = self._ask(
            prompts.describe_conversation(source, instruction), self.budget.describe
        )
        consistency_text = self._ask(
            prompts.consistency_conversation(edited, instruction, description),
            self.budget.consistency,
        )
        consistency = parse_consistency(consistency_text)
        if consistency is None:
            logger.warning("consistency answer unreadable: %.200r", consistency_text)
            prior_score: float | str = prompts.MISSING_PRIOR_SCORE
            prior_reason = prompts.MISSING_PRIOR_REASON
        else:
            prior_score, prior_reason = consistency.score, consistency.reason
        verdict = parse_verdict(
            self._ask(
                prompts.reflect_conversation(
                    source, edited, instruction, prior_score, prior_reason
                ),
                self.budget.reflect,
            )
        )
        edit_score = parse_score_pair(
            self._ask(
                prompts.edit_score_conversation(source, edited, instruction), self.budget.score
            )
        )
        quality_score = parse_score_pair(
            self._ask(prompts.quality_score_conversation(edited), self.budget.score)
        )
        return Judgement(
            verdict=verdict,
            description=description,
            consistency=consistency,
            edit_score=edit_score,
            quality_score=quality_score,
            seconds=time.perf_counter() - started,
        )


def enhance_prompt(
    generate: TextGenerator,
    image: Image.Image | None,
    prompt: str,
    *,
    max_new_tokens: int = TokenBudget.rewrite,
) -> str:
    """The prompt enhancer, for every model version: a vague instruction made specific.

    We use the v1.2 thinking template (an edit-instruction rewriter that looks at the image)
    rather than the v1.0/v1.1 encoder's "Enhanced prompt" prefix: that prefix asks for a
    detailed description of a whole picture for text-to-image generation, it never sees the edit
    as an edit and is only ever used as conditioning context, never decoded. The rewriter is a
    plain instruction-following chat for Qwen2.5-VL-7B-Instruct (the v1.0/v1.1 MLLM) and the
    trained interface of the v1.2 MLLM. An empty answer returns `prompt` unchanged.
    """
    thinker = Thinker(generate, TokenBudget(rewrite=max_new_tokens))
    return thinker.rewrite(image, prompt).instruction
