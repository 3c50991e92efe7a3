"""Step1X-Edit v1.2 reasoning: thinking, reflection rounds, and the prompt enhancer.

Torch-free apart from `stepedit.reasoning.chat` (the Qwen2.5-VL text generator), which is not
imported here: the passes only need a `TextGenerator` callable.
"""

from stepedit.reasoning.loop import (
    DEFAULT_MAX_ROUNDS,
    CandidateMaker,
    ReasoningOptions,
    ReasoningResult,
    Round,
    run_reasoning_edit,
    select_best,
)
from stepedit.reasoning.prompts import ChatTurn
from stepedit.reasoning.thinker import (
    Judgement,
    Rewrite,
    TextGenerator,
    Thinker,
    TokenBudget,
    enhance_prompt,
)
from stepedit.reasoning.verdicts import Verdict, parse_verdict

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "CandidateMaker",
    "ChatTurn",
    "Judgement",
    "ReasoningOptions",
    "ReasoningResult",
    "Rewrite",
    "Round",
    "TextGenerator",
    "Thinker",
    "TokenBudget",
    "Verdict",
    "enhance_prompt",
    "parse_verdict",
    "run_reasoning_edit",
    "select_best",
]
