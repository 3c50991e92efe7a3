"""Reading the MLLM's answers in the reasoning passes. Never raises on model output.

The rules are the v1.2 reference's (Peyton-Chen/diffusers@c69df6bd,
pipeline_step1x_edit_thinker.py): `_validate_reflection_response`, then `validate_string` and
`Step1XEditThinker.format_text` for verdicts; `_parse_json_block` and
`_apply_score_caps_and_finalize` for the consistency JSON; `_validate_score1_response` for the
selection scores. An answer the reference rejects reads here as unreadable (a "malformed"
verdict, or None), and the caller asks again, as the reference does (`stepedit.reasoning.thinker`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

THINK_TAG = "<#Think>"
SUCCESS_TAG = "<#Success>"
FAILED_TAG = "<#Failed>"
REFLECTION_TAG = "<#Reflection>"
OTHERS_TAG = "<#Others>"
_OUTCOME_TAGS = (REFLECTION_TAG, FAILED_TAG, SUCCESS_TAG, OTHERS_TAG)

# "success" (<#Success> or <#Others>): keep this candidate and stop. "retry" (<#Reflection>): edit
# this candidate again with `instruction`. "failed": start again from the source image.
# "malformed": the answer broke the format; the reflection pass is asked again.
VerdictKind = Literal["success", "retry", "failed", "malformed"]


@dataclass(frozen=True)
class Verdict:
    """The reflection pass's decision on one candidate."""

    kind: VerdictKind
    thought: str  # the text after <#Think>, the model's reasoning
    # The corrected instruction of a "retry": everything after <#Reflection>, verbatim (its
    # leading space included, as the reference conditions the next round on it).
    instruction: str | None
    raw: str  # the model's answer, unchanged ("" when no answer was read)
    tag: str | None = None  # the outcome tag the answer carries
    problem: str | None = None  # why the answer was not taken at its word

    @property
    def is_readable(self) -> bool:
        return self.kind != "malformed"

    @property
    def is_tagged_success(self) -> bool:
        """<#Success> itself: the selection's tie-break. <#Others> also ends the rounds but
        does not count there (the reference tests `"<#Success>" in` the answer)."""
        return self.tag == SUCCESS_TAG


def _malformed(raw: str, problem: str) -> Verdict:
    return Verdict("malformed", "", None, raw, problem=problem)


def parse_verdict(text: str) -> Verdict:
    """Read `<#Think> reasoning <#Success | #Failed | #Reflection new instruction | #Others>`.

    Malformed: no <#Think>; not exactly one of the outcome tags, once, after the first <#Think>
    (text before <#Think> is dropped). One deviation from the reference (`blank-reflection` in
    `stepedit.reasoning.loop.DEVIATIONS`): a <#Reflection> with nothing after it is malformed,
    where the reference would edit the candidate with an empty instruction.
    """
    think = text.find(THINK_TAG)
    if think < 0:
        return _malformed(text, "missing <#Think>")
    present = [tag for tag in _OUTCOME_TAGS if tag in text]
    if len(present) != 1:
        return _malformed(text, f"expected exactly one outcome tag, found {len(present)}")
    tag = present[0]
    if text.count(tag) > 1:
        return _malformed(text, f"{tag} appears more than once")
    if text.find(tag) < think:
        return _malformed(text, f"{tag} before <#Think>")
    body = text[think:].strip()
    thought, after = body[len(THINK_TAG) :].split(tag, 1)
    thought = thought.strip()
    if body.count(THINK_TAG) != 1:
        # Accepted by the reference's check, then not understood by its `format_text`: neither a
        # success nor a correction, so the next round starts over from the source.
        return Verdict("failed", thought, None, text, tag, "more than one <#Think>")
    if tag == REFLECTION_TAG:
        if not after.strip():
            return _malformed(text, "<#Reflection> without an instruction")
        return Verdict("retry", thought, after, text, tag)
    if tag == FAILED_TAG:
        return Verdict("failed", thought, None, text, tag)
    return Verdict("success", thought, None, text, tag)  # <#Success> or <#Others>


def no_verdict(problem: str, raw: str = "") -> Verdict:
    """What a candidate gets when no readable verdict came: <#Failed>, as the reference's
    fallback after its retries (`failure_result` in `run_full_pipeline`)."""
    return Verdict("failed", "", None, raw, FAILED_TAG, problem)


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The outermost {...} in `text` (code fences and chatter around it allowed), or None."""
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match is None:
        return None
    try:
        obj = json.loads(match.group(0))
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class Consistency:
    """The capped image-vs-description consistency score that primes the reflection prompt."""

    score: float  # 0..10 after the caps
    raw_score: float
    meets_instruction: str
    reason: str
    caps: tuple[str, ...] = field(default=())


def _count(obj: dict[str, Any], key: str) -> int:
    return int(obj.get(key, 0) or 0)


def parse_consistency(text: str) -> Consistency | None:
    """Score the consistency JSON with the reference's caps; None when it cannot be read.

    Caps (from `_apply_score_caps_and_finalize`): a raw score in [0, 1] is read as a fraction of
    10; "no" caps at 2, "partial" at 5; two or more major conflicts cap at 5, one at 8;
    hallucinations or omissions cap at 7; any of these problems keeps the score below 9.
    """
    obj = extract_json_object(text)
    if obj is None:
        return None
    try:
        met = str(obj.get("meets_instruction", "")).strip().lower()
        major = _count(obj, "major_conflicts")
        _count(obj, "minor_conflicts")  # unused, but an unreadable count rejects the answer
        hallucinations = _count(obj, "hallucinations")
        omissions = _count(obj, "omissions")
        raw = float(obj.get("raw_score", 0))
        reason = str(obj.get("reason", "")).strip()
    except (TypeError, ValueError, OverflowError):
        return None
    if 0 <= raw <= 1.0000001:
        raw *= 10.0
    raw = max(0.0, min(10.0, raw))
    caps: list[tuple[float, str]] = []
    if met == "no":
        caps.append((2.0, "instruction not met"))
    elif met == "partial":
        caps.append((5.0, "instruction partly met"))
    if major >= 2:
        caps.append((5.0, "several major conflicts"))
    elif major == 1:
        caps.append((8.0, "one major conflict"))
    if hallucinations > 0 or omissions > 0:
        caps.append((7.0, "hallucinations or omissions"))
    if met != "yes" or major > 0 or hallucinations > 0 or omissions > 0:
        caps.append((8.99, "visible problems"))
    score = min([raw, *(limit for limit, _ in caps)])
    return Consistency(
        score=float(f"{score:.4f}"),
        raw_score=raw,
        meets_instruction=met,
        reason=reason,
        caps=tuple(why for _, why in caps),
    )


@dataclass(frozen=True)
class ScorePair:
    """A JSON score list: [edit success, over-editing] or [naturalness, artifacts]."""

    values: tuple[float, ...]
    reasoning: str
    raw: str
    is_parsed: bool = True  # False: no readable answer came, scored [0, 0]

    @property
    def worst(self) -> float:
        return min(self.values)


def parse_score_pair(text: str) -> ScorePair | None:
    """Read `{"score": [a, b], "reasoning": "..."}`, bare or in a ``` / ```json fence, as the
    reference's `_validate_score1_response` does (no chatter around it); None when unreadable.

    The reference takes any list; an empty one or one with non-numbers then crashes its
    selection (`min`, a product), so those are unreadable here and asked again.
    """
    content = text.strip()
    if content.startswith("```json"):
        content = content[7:-3].strip()
    elif content.startswith("```"):
        content = content[3:-3].strip()
    try:
        obj = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("score"), list) and "reasoning" in obj):
        return None
    numbers = obj["score"]
    if not numbers or not all(isinstance(v, int | float) for v in numbers):
        return None
    try:
        values = tuple(float(v) for v in numbers)
    except OverflowError:
        return None
    return ScorePair(values, str(obj["reasoning"]), text)


def unscored(problem: str, raw: str = "") -> ScorePair:
    """[0, 0]: the reference's score when no readable answer came (`run_best_pipeline`)."""
    return ScorePair((0.0, 0.0), problem, raw, is_parsed=False)
