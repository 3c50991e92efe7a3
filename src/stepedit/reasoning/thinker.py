"""The MLLM passes of v1.2 reasoning, driven by any text-generation callable.

`Thinker.rewrite` is the thinking pass (reference `Step1XEditThinker.think` ->
`ImageEditEvaluator_EN.prompt_reformat`); `Thinker.judge` is one reflection pass (reference
`Step1XEditThinker.reflect`: `run_full_pipeline` = describe -> consistency score -> tagged verdict,
then `run_best_pipeline` = the two selection scores). Model-free: the callable does the
generating, so tests can script it.

As in the reference, a pass whose answer cannot be read (`stepedit.reasoning.verdicts`) is asked
again, up to `MAX_ASKS` times in all; this only makes sense because the MLLM samples
(`stepedit.reasoning.chat`). Then: no readable consistency score gives up on the verdict
(<#Failed>, the reflection prompt is not sent), no readable verdict is <#Failed>, and no readable
score is [0, 0]. The description is taken as it comes: the reference only re-asks it when its
remote client's error convention ("错误:" at the start) shows up, which a local model never uses.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from PIL import Image

from stepedit.reasoning import prompts
from stepedit.reasoning.verdicts import (
    Consistency,
    ScorePair,
    Verdict,
    no_verdict,
    parse_consistency,
    parse_score_pair,
    parse_verdict,
    unscored,
)

logger = logging.getLogger(__name__)

# The reference shrinks every image it shows the MLLM to at most 1024 px a side
# (`image_to_data_url(max_side=1024)`) before its processor's own pixel bounds apply.
MLLM_MAX_SIDE = 1024
# `max_retries = 20` in ImageEditEvaluator_EN.run_full_pipeline and run_best_pipeline.
MAX_ASKS = 20
# `max_new_tokens=128` in QwenGenerativeAIClient.call_model, whatever `max_tokens` a pass asks.
REFERENCE_MAX_NEW_TOKENS = 128

_Read = TypeVar("_Read")


class TextGenerator(Protocol):
    """Answer a chat with at most `max_new_tokens` new tokens."""

    def __call__(self, conversation: Sequence[prompts.ChatTurn], *, max_new_tokens: int) -> str: ...


@dataclass(frozen=True)
class TokenBudget:
    """Upper bounds on new tokens per pass.

    The reference's passes ask for 512 (rewrite), 768 (describe, reflect, scores) and 1024
    (consistency) tokens, but its client generates at most 128 whatever is asked, so 128 is what
    runs, there and here. A verdict cut off before its outcome tag is unreadable and asked again.
    """

    rewrite: int = REFERENCE_MAX_NEW_TOKENS
    describe: int = REFERENCE_MAX_NEW_TOKENS
    consistency: int = REFERENCE_MAX_NEW_TOKENS
    reflect: int = REFERENCE_MAX_NEW_TOKENS
    score: int = REFERENCE_MAX_NEW_TOKENS

    def capped(self, limit: int | None) -> TokenBudget:
        """Every bound at most `limit` (None: unchanged)."""
        if limit is None:
            return self
        return TokenBudget(*(min(value, limit) for value in dataclasses.astuple(self)))


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
    # None: no readable consistency answer in `MAX_ASKS` asks (the verdict is then <#Failed>).
    consistency: Consistency | None
    edit_score: ScorePair  # [editing success, over-editing]
    quality_score: ScorePair  # [naturalness, artifacts]
    seconds: float

    @property
    def selection_score(self) -> float:
        """min(score1) * min(score2): the reference's candidate ranking (v1p2 `__call__`)."""
        return self.edit_score.worst * self.quality_score.worst


class Thinker:
    """Runs the reasoning passes through `generate`, asking a pass at most `max_asks` times."""

    def __init__(
        self, generate: TextGenerator, budget: TokenBudget | None = None, max_asks: int = MAX_ASKS
    ) -> None:
        if max_asks < 1:
            raise ValueError(f"max_asks must be at least 1, got {max_asks}")
        self.generate = generate
        self.budget = budget or TokenBudget()
        self.max_asks = max_asks

    def _ask(self, conversation: Sequence[prompts.ChatTurn], max_new_tokens: int) -> str:
        return self.generate(conversation, max_new_tokens=max_new_tokens).strip()

    def _ask_until_read(
        self,
        name: str,
        conversation: Sequence[prompts.ChatTurn],
        max_new_tokens: int,
        read: Callable[[str], _Read | None],
    ) -> tuple[_Read | None, str]:
        """(`read` of the first readable answer, or None after `max_asks`; the last answer)."""
        answer = ""
        for attempt in range(1, self.max_asks + 1):
            answer = self._ask(conversation, max_new_tokens)
            reading = read(answer)
            if reading is not None:
                return reading, answer
            logger.warning(
                "%s answer %d/%d unreadable: %.200r", name, attempt, self.max_asks, answer
            )
        return None, answer

    def rewrite(self, image: Image.Image | None, instruction: str) -> Rewrite:
        """Vague instruction -> concrete edit instruction.

        An empty answer keeps the instruction as given: deviation `empty-thinking`
        (`stepedit.reasoning.loop.DEVIATIONS`); the reference would condition every round, and
        judge every candidate, on the empty string.
        """
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
        budget = self.budget

        # 1. run_full_pipeline: what the target should look like, how well the candidate
        # matches it, then the verdict primed with that score.
        description = self._ask(prompts.describe_conversation(source, instruction), budget.describe)
        consistency, _ = self._ask_until_read(
            "consistency",
            prompts.consistency_conversation(edited, instruction, description),
            budget.consistency,
            parse_consistency,
        )
        if consistency is None:
            verdict = no_verdict(f"no readable consistency answer in {self.max_asks} asks")
        else:
            read, last = self._ask_until_read(
                "reflection",
                prompts.reflect_conversation(
                    source, edited, instruction, consistency.score, consistency.reason
                ),
                budget.reflect,
                _readable_verdict,
            )
            verdict = read or no_verdict(f"no readable verdict in {self.max_asks} asks", last)

        # 2. run_best_pipeline: the two selection scores.
        edit_score = self._score(
            "edit score", prompts.edit_score_conversation(source, edited, instruction)
        )
        quality_score = self._score("quality score", prompts.quality_score_conversation(edited))
        return Judgement(
            verdict=verdict,
            description=description,
            consistency=consistency,
            edit_score=edit_score,
            quality_score=quality_score,
            seconds=time.perf_counter() - started,
        )

    def _score(self, name: str, conversation: Sequence[prompts.ChatTurn]) -> ScorePair:
        pair, last = self._ask_until_read(name, conversation, self.budget.score, parse_score_pair)
        return pair or unscored(f"no readable {name} in {self.max_asks} asks", last)


def _readable_verdict(text: str) -> Verdict | None:
    verdict = parse_verdict(text)
    return verdict if verdict.is_readable else None


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
