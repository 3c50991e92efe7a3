"""Scripted MLLM replies for the v1.2 reasoning check (imported on both sides).

Both sides get the same script: for each reasoning pass a list of replies, used in turn (the last
one repeats). Which pass is asking is read from the system turn, by a phrase of each pass's
system prompt, the same way on both sides, so a pass that one side asks for and the other does
not shows up in the recorded call sequence.

A scenario that meets one of stepedit's documented departures from the reference names it
(`deviation`, a key of `stepedit.reasoning.DEVIATIONS`); the table reports its differing rows as
that deviation instead of a failure. This module is imported by both venvs: it names the
deviation, it does not import stepedit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A phrase of each pass's system prompt (ImageEditEvaluator_EN in the fork's thinker).
PASS_PHRASES: tuple[tuple[str, str], ...] = (
    ("rewrite", "Edit Task Instruction Rewriter"),
    ("describe", "visual-to-text describer"),
    ("consistency", "image-text consistency evaluator"),
    ("reflect", "image editing result reviewer"),
    ("edit_score", "expert critic of AI-generated image edits"),
    ("quality_score", "evaluate the effectiveness of the AI-generated image based on given rules"),
)

DESCRIPTION = "A red apple on a wooden table, a straw hat beside it, soft window light."
CONSISTENCY = (
    '{"meets_instruction": "partial", "major_conflicts": 0, "minor_conflicts": 1, '
    '"omissions": 0, "raw_score": 6.5, "reason": "The hat is added but it is blue."}'
)
SUCCESS = "<#Think> The hat is present and red; the rest is unchanged.<#Success>"
RETRY = "<#Think> The hat is blue instead of red.<#Reflection> Change the color of the hat to red."
RETRY_2 = "<#Think> The hat is now red but too small.<#Reflection> Make the hat larger."
FAILED = "<#Think> The whole background was replaced; it cannot be repaired.<#Failed>"
MALFORMED = "The edit looks fine to me."
BLANK_RETRY = "<#Think> The hat is blue instead of red.<#Reflection>"
NOT_JSON = "I would give it an eight."
ASKS = 20  # the reference's max_retries: how often an unreadable answer is asked
REWRITTEN = "Add a red straw hat on the table next to the apple."


def score(a: float, b: float) -> str:
    return f'```json\n{{\n"score" : [{a}, {b}],\n"reasoning" : "Edit applied."\n}}\n```'


def pass_of(system_text: str) -> str:
    for name, phrase in PASS_PHRASES:
        if phrase in system_text:
            return name
    return "unknown"


@dataclass(frozen=True)
class Scenario:
    name: str
    thinking: bool
    replies: dict[str, list[str]]
    what: str  # what the scenario exercises
    deviation: str | None = None  # the stepedit deviation it meets (stepedit.reasoning)

    def all_replies(self) -> dict[str, list[str]]:
        base = {
            "rewrite": [REWRITTEN],
            "describe": [DESCRIPTION],
            "consistency": [CONSISTENCY],
            "reflect": [SUCCESS],
            "edit_score": [score(8, 9)],
            "quality_score": [score(9, 7)],
        }
        base.update(self.replies)
        return base


@dataclass
class ScriptedReplies:
    """Answers by pass; records (pass, reply) for every call."""

    replies: dict[str, list[str]]
    calls: list[str] = field(default_factory=list)

    def answer(self, system_text: str) -> str:
        name = pass_of(system_text)
        self.calls.append(name)
        queue = self.replies.get(name, [""])
        return queue[0] if len(queue) == 1 else queue.pop(0)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("thinking-success", True, {}, "thinking rewrite, <#Success> in round 1"),
    Scenario(
        "retry-success",
        False,
        {"reflect": [RETRY, SUCCESS], "edit_score": [score(6, 9), score(8, 9)]},
        "<#Reflection> edits the previous candidate with the corrected instruction",
    ),
    Scenario(
        "failed-success",
        True,
        {"reflect": [FAILED, SUCCESS], "edit_score": [score(3, 9), score(8, 9)]},
        "<#Failed> restarts from the source with the thinking instruction",
    ),
    Scenario(
        "three-rounds",
        False,
        {
            "reflect": [RETRY, RETRY_2, RETRY],
            "edit_score": [score(5, 9), score(9, 9), score(7, 9)],
        },
        "max_try_cnt rounds, best score chosen",
    ),
    Scenario(
        "tie-success",
        False,
        {"reflect": [RETRY, SUCCESS], "edit_score": [score(8, 9)]},
        "equal scores: the <#Success> candidate wins",
    ),
    Scenario(
        "tie-later",
        False,
        {"reflect": [RETRY, RETRY_2, RETRY]},
        "equal scores, none successful: the later candidate wins",
    ),
    Scenario(
        "malformed-verdict",
        False,
        {"reflect": [MALFORMED, RETRY, SUCCESS]},
        "a reflection reply without tags",
    ),
    Scenario(
        "bad-score-json",
        False,
        {
            "reflect": [RETRY, SUCCESS],
            "edit_score": [NOT_JSON, score(9, 9), score(5, 5)],
        },
        "an unreadable score reply",
    ),
    Scenario(
        "bad-consistency-json",
        False,
        {"consistency": [NOT_JSON, CONSISTENCY]},
        "an unreadable consistency reply",
    ),
    Scenario(
        "verdict-never-readable",
        False,
        {"reflect": [MALFORMED]},
        f"{ASKS} unreadable verdicts per round: <#Failed>, start over from the source",
    ),
    Scenario(
        "score-never-readable",
        False,
        {"reflect": [RETRY, FAILED], "edit_score": [NOT_JSON] * ASKS + [score(5, 5)]},
        f"{ASKS} unreadable scores: [0, 0]",
    ),
    Scenario(
        "consistency-never-readable",
        False,
        {"consistency": [NOT_JSON] * ASKS + [CONSISTENCY]},
        f"{ASKS} unreadable consistency replies: <#Failed> without asking the verdict",
    ),
    Scenario(
        "thinking-empty",
        True,
        {"rewrite": [""]},
        "the thinking pass returns nothing",
        deviation="empty-thinking",
    ),
    Scenario(
        "reflection-blank",
        False,
        {"reflect": [BLANK_RETRY, SUCCESS]},
        "<#Reflection> with nothing after it",
        deviation="blank-reflection",
    ),
)


def scenario_named(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(name)
