"""Step1X-Edit v1.2 reasoning: thinking, reflection rounds, and the prompt enhancer.

The control flow and the decoding are the v1.2 reference's (`loop`, `thinker`, `chat`): the MLLM
samples (temperature 0.7, top-p 0.9, at most 128 new tokens per answer), an unreadable answer is
asked again (at most 20 times), and the diffusion rounds of a run continue one random stream.
On top of that every random draw is seeded from the request's seed: the MLLM draws from a CPU
`torch.Generator` seeded with it when the edit starts, the rounds from another, so one seed
reproduces the whole run (on the same hardware and software). The reference behaviours we do
not reproduce are named in `DEVIATIONS`.

Torch-free apart from `stepedit.reasoning.chat` (the Qwen2.5-VL text generator), which is not
imported here: the passes only need a `TextGenerator` callable.
"""

from stepedit.reasoning.loop import (
    DEFAULT_MAX_ROUNDS,
    DEVIATIONS,
    CandidateMaker,
    ReasoningOptions,
    ReasoningResult,
    Round,
    run_reasoning_edit,
    select_best,
)
from stepedit.reasoning.prompts import ChatTurn
from stepedit.reasoning.thinker import (
    MAX_ASKS,
    REFERENCE_MAX_NEW_TOKENS,
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
    "DEVIATIONS",
    "MAX_ASKS",
    "REFERENCE_MAX_NEW_TOKENS",
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
