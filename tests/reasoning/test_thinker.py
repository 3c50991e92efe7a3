"""The passes: what each one sends to the MLLM and how answers become decisions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from stepedit.reasoning import prompts
from stepedit.reasoning.thinker import (
    MAX_ASKS,
    MLLM_MAX_SIDE,
    REFERENCE_MAX_NEW_TOKENS,
    Judgement,
    Thinker,
    enhance_prompt,
)

from .scripted import (
    CONSISTENCY_JSON,
    MALFORMED,
    NOT_JSON,
    RETRY,
    RETRY_INSTRUCTION,
    SUCCESS,
    ScriptedMLLM,
    score_json,
)


def test_rewrite_uses_the_reference_template_with_the_image(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted()
    rewrite = Thinker(mllm).rewrite(source, "put a hat thing there")
    assert rewrite.instruction == "Add a red straw hat on the table next to the apple."
    assert rewrite.is_changed
    conversation = mllm.seen[0]
    assert conversation[0].parts == (prompts.REWRITE_SYSTEM,)
    image, text = conversation[1].parts
    assert isinstance(image, Image.Image)
    assert isinstance(text, str) and text.endswith("The returned instruction is:")
    assert "User input instruction:put a hat thing there\n" in text
    assert "must be in 英文" in text
    assert mllm.calls[0][2] == REFERENCE_MAX_NEW_TOKENS


def test_empty_rewrite_keeps_the_instruction(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    rewrite = Thinker(scripted(rewrite=["  \n"])).rewrite(source, "add a hat")
    assert rewrite.instruction == "add a hat"
    assert not rewrite.is_changed


def test_enhance_prompt_with_and_without_image(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(rewrite=["Change the color of the car to bright red."])
    assert (
        enhance_prompt(mllm, source, "car red pls") == "Change the color of the car to bright red."
    )
    assert enhance_prompt(mllm, None, "car red pls") == "Change the color of the car to bright red."
    assert [images for _, images, _ in mllm.calls] == [1, 0]


def test_chinese_instruction_asks_for_a_chinese_answer(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted()
    Thinker(mllm).rewrite(source, "把天空变成紫色")
    assert "must be in 中文" in str(mllm.seen[0][1].parts[-1])


def test_judge_runs_the_five_reference_calls_in_order(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[RETRY], edit_score=[score_json(6, 9)])
    edited = Image.new("RGB", (64, 48), (10, 10, 200))
    judgement = Thinker(mllm).judge(source, edited, "Add a red hat.")
    assert [name for name, _, _ in mllm.calls] == [
        "describe",
        "consistency",
        "reflect",
        "edit_score",
        "quality_score",
    ]
    assert [images for _, images, _ in mllm.calls] == [1, 1, 2, 2, 1]
    assert judgement.verdict.kind == "retry"
    assert judgement.selection_score == 6.0 * 7.0
    # The capped consistency score and its reason prime the reflection prompt.
    reflect_text = str(mllm.seen[2][1].parts[-1])
    assert "- Score: 5.0\n" in reflect_text
    assert "- Reason: The hat is added but it is blue, not red." in reflect_text
    assert "The current edit instruction is: \n            Add a red hat.\n" in reflect_text


def test_every_pass_asks_for_at_most_the_references_128_tokens(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted()
    thinker = Thinker(mllm)
    thinker.rewrite(source, "add a hat")
    thinker.judge(source, source, "Add a hat.")
    assert {tokens for _, _, tokens in mllm.calls} == {REFERENCE_MAX_NEW_TOKENS}


def judge(mllm: ScriptedMLLM, source: Image.Image, max_asks: int = MAX_ASKS) -> Judgement:
    return Thinker(mllm, max_asks=max_asks).judge(source, source, "Add a hat.")


def test_an_unreadable_verdict_is_asked_again(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[MALFORMED, "<#Think> x <#Reflection>", RETRY])
    judgement = judge(mllm, source)
    assert mllm.count("reflect") == 3
    assert judgement.verdict.kind == "retry"
    assert judgement.verdict.instruction == RETRY_INSTRUCTION


def test_no_readable_verdict_in_twenty_asks_is_failed(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[MALFORMED])
    judgement = judge(mllm, source)
    assert MAX_ASKS == 20  # the reference's max_retries
    assert mllm.count("reflect") == MAX_ASKS
    assert [name for name, _, _ in mllm.calls][-2:] == ["edit_score", "quality_score"]
    assert judgement.verdict.kind == "failed"
    assert judgement.verdict.raw == MALFORMED
    assert judgement.verdict.problem == "no readable verdict in 20 asks"


def test_the_ask_bound_is_a_parameter(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[MALFORMED], edit_score=[NOT_JSON], consistency=[CONSISTENCY_JSON])
    judgement = judge(mllm, source, max_asks=3)
    assert (mllm.count("reflect"), mllm.count("edit_score")) == (3, 3)
    assert judgement.verdict.kind == "failed"
    with pytest.raises(ValueError, match="max_asks"):
        Thinker(mllm, max_asks=0)


def test_an_unreadable_consistency_answer_is_asked_again(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(consistency=["I think it's about a 7", CONSISTENCY_JSON])
    judgement = judge(mllm, source)
    assert mllm.count("consistency") == 2
    assert judgement.consistency is not None and judgement.consistency.score == 5.0
    assert "- Score: 5.0\n" in str(mllm.seen[3][1].parts[-1])  # the reflection prompt


def test_no_readable_consistency_in_twenty_asks_fails_without_asking_the_verdict(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(consistency=[NOT_JSON])
    judgement = judge(mllm, source)
    assert mllm.count("consistency") == MAX_ASKS
    assert mllm.count("reflect") == 0
    assert judgement.consistency is None
    assert judgement.verdict.kind == "failed"
    assert judgement.verdict.problem == "no readable consistency answer in 20 asks"
    assert judgement.verdict.raw == ""  # no reflection answer to keep
    # The selection scores are still asked (run_best_pipeline runs regardless).
    assert (mllm.count("edit_score"), mllm.count("quality_score")) == (1, 1)
    assert judgement.selection_score == 8.0 * 7.0


def test_an_unreadable_score_is_asked_again(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(reflect=[SUCCESS], edit_score=[NOT_JSON, score_json(9, 9)])
    judgement = judge(mllm, source)
    assert mllm.count("edit_score") == 2
    assert judgement.edit_score.values == (9.0, 9.0)
    assert judgement.selection_score == 9.0 * 7.0


def test_no_readable_score_in_twenty_asks_scores_zero(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(quality_score=['```json\n{"score": [8, 9]'])
    judgement = judge(mllm, source)
    assert mllm.count("quality_score") == MAX_ASKS
    assert not judgement.quality_score.is_parsed
    assert judgement.quality_score.values == (0.0, 0.0)
    assert judgement.selection_score == 0.0
    assert judgement.verdict.kind == "success"  # the verdict does not depend on the scores


def test_large_images_are_shrunk_for_the_mllm(scripted: Callable[..., ScriptedMLLM]) -> None:
    mllm = scripted()
    big = Image.new("RGB", (2048, 1024))
    Thinker(mllm).rewrite(big, "add a hat")
    shown = mllm.seen[0][1].parts[0]
    assert isinstance(shown, Image.Image)
    assert shown.size == (MLLM_MAX_SIDE, MLLM_MAX_SIDE // 2)
    assert big.size == (2048, 1024)
