"""Parsing of the MLLM's answers in the reasoning passes. Never raises on model output.

The rules follow the v1.2 reference (Peyton-Chen/diffusers@c69df6bd,
pipeline_step1x_edit_thinker.py:
`validate_string`, `_validate_reflection_response`, `Step1XEditThinker.format_text`,
`_parse_json_block`, `_apply_score_caps_and_finalize`, `_validate_score1_response`). Where the
reference raises and re-asks the model (up to 20 times, sampling), we decode greedily, so asking
again would return the same text: a malformed answer instead becomes an explicit "malformed"
result that keeps the raw text, and the caller treats it as "no change / accept current".
"""

from __future__ import annotations

import json
import logging
import math
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

# "success": keep this candidate and stop. "retry": edit this candidate again with `instruction`.
# "failed": this candidate cannot be repaired, start again from the source image.
# "malformed": the answer broke the format; treated as "accept current".
VerdictKind = Literal["success", "retry", "failed", "malformed"]


@dataclass(frozen=True)
class Verdict:
    """The reflection pass's decision on one candidate."""

    kind: VerdictKind
    thought: str  # the text after <#Think>, the model's reasoning
    instruction: str | None  # the corrected ("secondary") instruction when kind == "retry"
    raw: str  # the model's answer, unchanged
    problem: str | None = None  # why a malformed answer was rejected

    @property
    def is_success(self) -> bool:
        """True for <#Success> and <#Others>: both end the rounds in the reference (format_text)."""
        return self.kind == "success"


def _malformed(raw: str, problem: str) -> Verdict:
    logger.warning("reflection answer rejected (%s): %.200r", problem, raw)
    return Verdict("malformed", "", None, raw, problem)


def parse_verdict(text: str) -> Verdict:
    """Read `<#Think> reasoning <#Success | #Failed | #Reflection new instruction | #Others>`.

    Exactly one outcome tag, once, after a single <#Think>; text before <#Think> is ignored (the
    reference strips it). A <#Reflection> with no instruction after it is malformed: editing with
    an empty instruction is never what the model meant.
    """
    start = text.find(THINK_TAG)
    if start < 0:
        return _malformed(text, "missing <#Think>")
    body = text[start:].strip()
    if body.count(THINK_TAG) != 1:
        return _malformed(text, "more than one <#Think>")
    present = [tag for tag in _OUTCOME_TAGS if tag in body]
    if len(present) != 1:
        return _malformed(text, f"expected exactly one outcome tag, found {len(present)}")
    tag = present[0]
    if body.count(tag) != 1:
        return _malformed(text, f"{tag} appears more than once")
    thought, after = body[len(THINK_TAG) :].split(tag, 1)
    thought = thought.strip()
    if tag == REFLECTION_TAG:
        # The model sometimes echoes the prompt's ``` fence around its answer.
        instruction = after.strip().removesuffix("```").strip()
        if not instruction:
            return _malformed(text, "<#Reflection> without an instruction")
        return Verdict("retry", thought, instruction, text)
    if tag == FAILED_TAG:
        return Verdict("failed", thought, None, text)
    return Verdict("success", thought, None, text)  # <#Success> or <#Others>


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The outermost {...} in `text` (code fences and chatter around it allowed), or None."""
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match is None:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
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
        hallucinations = _count(obj, "hallucinations")
        omissions = _count(obj, "omissions")
        raw = float(obj.get("raw_score", 0))
        reason = str(obj.get("reason", "")).strip()
    except (TypeError, ValueError):
        return None
    if not math.isfinite(raw):
        return None
    if 0 <= raw <= 1.0000001:
        raw *= 10.0
    raw = min(10.0, max(0.0, raw))
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
        score=round(score, 4),
        raw_score=raw,
        meets_instruction=met,
        reason=reason,
        caps=tuple(why for _, why in caps),
    )


@dataclass(frozen=True)
class ScorePair:
    """A two-number JSON score: [edit success, over-editing] or [naturalness, artifacts]."""

    values: tuple[float, ...]
    reasoning: str
    raw: str
    is_parsed: bool

    @property
    def worst(self) -> float:
        return min(self.values)


def _strip_code_fence(text: str) -> str:
    text = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    return fenced.group(1) if fenced else text


def parse_score_pair(text: str) -> ScorePair:
    """Read `{"score": [a, b], "reasoning": "..."}`; anything else scores [0, 0] like the reference.

    The reference (`run_best_pipeline`) falls back to `[0, 0]` after failed attempts, which ranks
    an unreadable candidate last; we do the same at once.
    """
    try:
        obj = json.loads(_strip_code_fence(text))
    except json.JSONDecodeError:
        obj = extract_json_object(text)
    if isinstance(obj, dict) and isinstance(obj.get("score"), list) and "reasoning" in obj:
        try:
            values = tuple(float(v) for v in obj["score"])
        except (TypeError, ValueError):
            values = ()
        if values and all(math.isfinite(v) for v in values):
            return ScorePair(values, str(obj["reasoning"]), text, is_parsed=True)
    logger.warning("score answer unreadable, scored [0, 0]: %.200r", text)
    return ScorePair((0.0, 0.0), "", text, is_parsed=False)
