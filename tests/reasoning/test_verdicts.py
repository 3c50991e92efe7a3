"""Reading real-looking MLLM answers: tagged verdicts, consistency JSON, selection scores.

What the reference cannot read (and so asks again) must be unreadable here too, and what it
reads must read the same: the parity harness compares the resulting control flow.
"""

from __future__ import annotations

import pytest

from stepedit.reasoning.verdicts import (
    extract_json_object,
    no_verdict,
    parse_consistency,
    parse_score_pair,
    parse_verdict,
    unscored,
)

from .scripted import (
    CONSISTENCY_JSON,
    FAILED,
    OTHERS,
    RETRY,
    RETRY_INSTRUCTION,
    SUCCESS,
    score_json,
)


def test_success_verdict() -> None:
    verdict = parse_verdict(SUCCESS)
    assert verdict.kind == "success"
    assert verdict.is_tagged_success
    assert verdict.thought.startswith("The hat is present")
    assert verdict.instruction is None
    assert verdict.raw == SUCCESS


def test_reflection_verdict_carries_the_corrected_instruction_verbatim() -> None:
    verdict = parse_verdict(RETRY)
    assert verdict.kind == "retry"
    assert verdict.instruction == RETRY_INSTRUCTION  # leading space kept, as the reference
    assert "blue instead of red" in verdict.thought
    assert not verdict.is_tagged_success


def test_failed_verdict() -> None:
    verdict = parse_verdict(FAILED)
    assert verdict.kind == "failed"
    assert verdict.instruction is None


def test_others_ends_the_rounds_but_is_not_a_tagged_success() -> None:
    verdict = parse_verdict(OTHERS)
    assert verdict.kind == "success"
    assert not verdict.is_tagged_success


def test_chatter_before_think_is_dropped_and_the_instruction_is_kept_as_written() -> None:
    text = "Sure, my review:\n```\n<#Think> Looks fine.\n\n<#Reflection>\nMake the sky bluer.\n```"
    verdict = parse_verdict(text)
    assert verdict.kind == "retry"
    assert verdict.thought == "Looks fine."
    assert verdict.instruction == "\nMake the sky bluer.\n```"


def test_two_think_tags_read_as_failed_not_asked_again() -> None:
    """The reference's check accepts it, then its `format_text` cannot read it: a restart."""
    verdict = parse_verdict("<#Think> a <#Think> b <#Success>")
    assert verdict.kind == "failed" and verdict.is_readable
    assert verdict.problem is not None and "more than one <#Think>" in verdict.problem
    assert verdict.is_tagged_success  # the selection's tie-break still sees the tag


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "missing <#Think>"),
        ("The edit looks good. <#Success>", "missing <#Think>"),
        ("<#Think> fine <#Think> fine", "found 0"),
        ("<#Think> I am not sure what to say.", "found 0"),
        ("<#Think> half done <#Success> <#Reflection> add a hat", "found 2"),
        ("<#Think> x <#Reflection> a <#Reflection> b", "more than once"),
        ("<#Success> <#Think> ok", "before <#Think>"),
        # deviation "blank-reflection": the reference would edit with an empty instruction
        ("<#Think> needs more work <#Reflection>", "without an instruction"),
        ("<#Think> needs more work <#Reflection>   ", "without an instruction"),
    ],
)
def test_unreadable_verdicts_never_raise_and_keep_the_raw_text(text: str, problem: str) -> None:
    verdict = parse_verdict(text)
    assert verdict.kind == "malformed" and not verdict.is_readable
    assert verdict.raw == text
    assert verdict.problem is not None and problem in verdict.problem


def test_no_verdict_is_the_references_failed_fallback() -> None:
    verdict = no_verdict("no readable verdict in 20 asks", "hmm")
    assert verdict.kind == "failed" and verdict.raw == "hmm"
    assert not verdict.is_tagged_success


def test_consistency_caps_follow_the_reference() -> None:
    partial = parse_consistency(CONSISTENCY_JSON)
    assert partial is not None
    assert partial.score == 5.0  # "partial" caps 6.5 at 5
    assert partial.reason.startswith("The hat is added")

    perfect = parse_consistency('{"meets_instruction": "yes", "raw_score": 9.6, "reason": "ok"}')
    assert perfect is not None and perfect.score == 9.6

    one_conflict = parse_consistency(
        'Result:\n{"meets_instruction": "yes", "major_conflicts": 1, "raw_score": 9.5}'
    )
    assert one_conflict is not None and one_conflict.score == 8.0

    fraction = parse_consistency('{"meets_instruction": "yes", "omissions": 2, "raw_score": 0.9}')
    assert fraction is not None
    assert fraction.raw_score == 9.0 and fraction.score == 7.0

    refused = parse_consistency('{"meets_instruction": "no", "raw_score": 8}')
    assert refused is not None and refused.score == 2.0

    capped = parse_consistency('{"meets_instruction": "yes", "raw_score": 14}')
    assert capped is not None and capped.score == 10.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no json here",
        '{"raw_score": 7',
        '{"raw_score": "high"}',
        '{"major_conflicts": "x"}',
        '{"raw_score": 7, "minor_conflicts": "a few"}',  # the reference reads it too
        '{"raw_score": null}',
    ],
)
def test_unreadable_consistency_is_none(text: str) -> None:
    assert parse_consistency(text) is None


@pytest.mark.parametrize(
    "text",
    [
        score_json(7, 4),
        '{"score": [7, 4], "reasoning": "x"}',
        '```\n{"score": [7, 4], "reasoning": "x"}\n```',
    ],
)
def test_score_pair_bare_or_fenced(text: str) -> None:
    pair = parse_score_pair(text)
    assert pair is not None and pair.is_parsed
    assert pair.values == (7.0, 4.0)
    assert pair.worst == 4.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"score": [7, 8]}',  # no reasoning
        '{"score": 7, "reasoning": "x"}',  # not a list
        'Here you go: {"score": [6, 8], "reasoning": "fine"}',  # chatter: the reference re-asks
        '```json\n{"score": [7, 8], "reasoning": "cut off',
        # the reference accepts these, then crashes on them in its selection
        '{"score": [], "reasoning": "x"}',
        '{"score": ["good", 3], "reasoning": "x"}',
    ],
)
def test_unreadable_score_pair_is_none(text: str) -> None:
    assert parse_score_pair(text) is None


def test_unscored_is_zero_zero() -> None:
    pair = unscored("no readable edit score in 20 asks", "eight")
    assert pair.values == (0.0, 0.0) and not pair.is_parsed and pair.raw == "eight"


def test_extract_json_object_rejects_arrays() -> None:
    assert extract_json_object("[1, 2]") is None
