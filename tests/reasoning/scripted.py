"""A scripted `TextGenerator`: answers by recognising which reasoning pass is asking."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from stepedit.reasoning import prompts
from stepedit.reasoning.prompts import ChatTurn

# Answers in the formats the reference asks for (pipeline_step1x_edit_thinker.py).
DESCRIPTION = "A red apple on a wooden table, a straw hat resting beside it, soft window light."
CONSISTENCY_JSON = (
    '{"meets_instruction": "partial", "major_conflicts": 0, "minor_conflicts": 1, '
    '"omissions": 0, "raw_score": 6.5, "reason": "The hat is added but it is blue, not red."}'
)
SUCCESS = "<#Think> The hat is present, red, and the rest of the scene is unchanged.<#Success>"
RETRY = (
    "<#Think> A hat was added but it is blue instead of red; the table and apple are intact."
    "<#Reflection> Change the color of the hat to red."
)
# What the next round is conditioned on: everything after the tag, its leading space included.
RETRY_INSTRUCTION = " Change the color of the hat to red."
FAILED = "<#Think> The whole background was replaced by a forest; it cannot be repaired.<#Failed>"
OTHERS = "<#Think> The request is not an edit of this image.<#Others>"
# Answers the reference cannot read, so it asks again.
MALFORMED = "The edit looks fine to me."
NOT_JSON = "I would give it an eight."


def score_json(a: float, b: float) -> str:
    return (
        f'```json\n{{\n"score" : [{a}, {b}],\n"reasoning" : "Edit applied; minor drift."\n}}\n```'
    )


def pass_of(conversation: Sequence[ChatTurn]) -> str:
    system = conversation[0].parts[0]
    return {
        prompts.REWRITE_SYSTEM: "rewrite",
        prompts.CONSISTENCY_SYSTEM: "consistency",
        prompts.REFLECT_SYSTEM: "reflect",
        prompts.EDIT_SCORE_SYSTEM: "edit_score",
        prompts.QUALITY_SCORE_SYSTEM: "quality_score",
    }.get(str(system), "describe")


@dataclass
class ScriptedMLLM:
    """Per pass, a list of answers used in turn (the last one repeats)."""

    answers: dict[str, list[str]]
    calls: list[tuple[str, int, int]] = field(default_factory=list)  # (pass, images, tokens)
    seen: list[Sequence[ChatTurn]] = field(default_factory=list)

    def __call__(self, conversation: Sequence[ChatTurn], *, max_new_tokens: int) -> str:
        name = pass_of(conversation)
        images = sum(isinstance(p, Image.Image) for t in conversation for p in t.parts)
        self.calls.append((name, images, max_new_tokens))
        self.seen.append(conversation)
        queue = self.answers.get(name, [""])
        answer = queue[0] if len(queue) == 1 else queue.pop(0)
        return answer

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


def default_answers(**overrides: list[str]) -> dict[str, list[str]]:
    answers = {
        "rewrite": ["Add a red straw hat on the table next to the apple."],
        "describe": [DESCRIPTION],
        "consistency": [CONSISTENCY_JSON],
        "reflect": [SUCCESS],
        "edit_score": [score_json(8, 9)],
        "quality_score": [score_json(9, 7)],
    }
    answers.update(overrides)
    return answers
