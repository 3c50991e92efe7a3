"""Parsing of real-looking MLLM answers: tagged verdicts, consistency JSON, selection scores."""

from __future__ import annotations

import pytest

from stepedit.reasoning.verdicts import (
    extract_json_object,
    parse_consistency,
    parse_score_pair,
    parse_verdict,
)

from .scripted import CONSISTENCY_JSON, FAILED, RETRY, SUCCESS, score_json


def test_success_verdict() -> None:
    verdict = parse_verdict(SUCCESS)
    assert verdict.kind == "success"
    assert verdict.is_success
    assert verdict.thought.startswith("The hat is present")
    assert verdict.instruction is None
    assert verdict.raw == SUCCESS


def test_reflection_verdict_carries_the_corrected_instruction() -> None:
    verdict = parse_verdict(RETRY)
    assert verdict.kind == "retry"
    assert verdict.instruction == "Change the color of the hat to red."
    assert "blue instead of red" in verdict.thought


def test_failed_verdict() -> None:
    verdict = parse_verdict(FAILED)
    assert verdict.kind == "failed"
    assert verdict.instruction is None


def test_others_counts_as_success_like_the_reference() -> None:
    verdict = parse_verdict("<#Think> The request is not an edit of this image.<#Others>")
    assert verdict.kind == "success"


def test_chatter_before_think_and_multiline_is_accepted() -> None:
    text = "Sure, my review:\n```\n<#Think> Looks fine.\n\n<#Reflection>\nMake the sky bluer.\n```"
    verdict = parse_verdict(text)
    assert verdict.kind == "retry"
    assert verdict.instruction == "Make the sky bluer."  # the closing code fence is not part of it


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "missing <#Think>"),
        ("The edit looks good. <#Success>", "missing <#Think>"),
        ("<#Think> fine <#Think> fine", "more than one <#Think>"),
        ("<#Think> I am not sure what to say.", "found 0"),
        ("<#Think> half done <#Success> <#Reflection> add a hat", "found 2"),
        ("<#Think> x <#Reflection> a <#Reflection> b", "more than once"),
        ("<#Think> needs more work <#Reflection>   ", "without an instruction"),
    ],
)
def test_malformed_verdicts_never_raise_and_keep_the_raw_text(text: str, problem: str) -> None:
    verdict = parse_verdict(text)
    assert verdict.kind == "malformed"
    assert verdict.raw == text
    assert verdict.problem is not None and problem in verdict.problem
    assert not verdict.is_success


def test_outcome_tag_before_think_is_malformed() -> None:
    assert parse_verdict("<#Success> <#Think> ok").kind == "malformed"


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


@pytest.mark.parametrize(
    "text",
    ["", "no json here", '{"raw_score": 7', '{"raw_score": "high"}', '{"major_conflicts": "x"}'],
)
def test_unreadable_consistency_is_none(text: str) -> None:
    assert parse_consistency(text) is None


def test_score_pair_in_a_code_fence() -> None:
    pair = parse_score_pair(score_json(7, 4))
    assert pair.is_parsed
    assert pair.values == (7.0, 4.0)
    assert pair.worst == 4.0


def test_score_pair_with_surrounding_text() -> None:
    pair = parse_score_pair('Here you go: {"score": [6, 8], "reasoning": "fine"} Thanks!')
    assert pair.is_parsed and pair.worst == 6.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"score": [7, 8]}',  # no reasoning
        '{"score": 7, "reasoning": "x"}',  # not a list
        '{"score": [], "reasoning": "x"}',
        '{"score": ["good", 3], "reasoning": "x"}',
        '```json\n{"score": [7, 8], "reasoning": "cut off',
    ],
)
def test_unreadable_score_pair_ranks_last(text: str) -> None:
    pair = parse_score_pair(text)
    assert not pair.is_parsed
    assert pair.values == (0.0, 0.0)
    assert pair.raw == text


def test_extract_json_object_rejects_arrays() -> None:
    assert extract_json_object("[1, 2]") is None
