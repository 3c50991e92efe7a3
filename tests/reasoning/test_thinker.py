"""The passes: what each one sends to the MLLM and how answers become decisions."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from stepedit.reasoning import prompts
from stepedit.reasoning.thinker import MLLM_MAX_SIDE, Thinker, TokenBudget, enhance_prompt

from .scripted import RETRY, ScriptedMLLM, score_json


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
    assert mllm.calls[0][2] == TokenBudget().rewrite


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


def test_unreadable_consistency_primes_with_the_reference_fallbacks(
    scripted: Callable[..., ScriptedMLLM], source: Image.Image
) -> None:
    mllm = scripted(consistency=["I think it's about a 7"])
    judgement = Thinker(mllm).judge(source, source, "Add a hat.")
    assert judgement.consistency is None
    reflect_text = str(mllm.seen[2][1].parts[-1])
    assert "- Score: N/A\n" in reflect_text and "- Reason: 无\n" in reflect_text


def test_large_images_are_shrunk_for_the_mllm(scripted: Callable[..., ScriptedMLLM]) -> None:
    mllm = scripted()
    big = Image.new("RGB", (2048, 1024))
    Thinker(mllm).rewrite(big, "add a hat")
    shown = mllm.seen[0][1].parts[0]
    assert isinstance(shown, Image.Image)
    assert shown.size == (MLLM_MAX_SIDE, MLLM_MAX_SIDE // 2)
    assert big.size == (2048, 1024)
