# ruff: noqa: E501  (the templates are reproduced verbatim; their lines are the reference's lines)
"""The v1.2 reasoning prompts: the trained interface of Step1X-Edit v1.2's MLLM front-end.

Every template below is reproduced exactly (whitespace included) from
    Peyton-Chen/diffusers, branch step1xedit_v1p2, commit c69df6bdf2f0f998646c1adf2c1aa788ac7b6296,
    src/diffusers/pipelines/step1x_edit/pipeline_step1x_edit_thinker.py, class ImageEditEvaluator_EN
(the class `Step1XEditThinker` uses), because the MLLM was trained on these exact strings. Each
constant names the method and variable it comes from. `{instruction}`, `{language}`, ... are our
placeholder names for the reference's f-string fields. Only the strings come from the reference;
the message builders are ours.

The reference inserts its language label, "中文" (Chinese) or "英文" (English), into the English
templates as-is; `language_label` reproduces that rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

REFERENCE = (
    "Peyton-Chen/diffusers@c69df6bdf2f0f998646c1adf2c1aa788ac7b6296 "
    "src/diffusers/pipelines/step1x_edit/pipeline_step1x_edit_thinker.py"
)

# ImageEditEvaluator_EN.build_reformt_prompt `system_prompt` in pipeline_step1x_edit_thinker.py
REWRITE_SYSTEM = "You are an Edit Task Instruction Rewriter. Your role is to maintain the original meaning while transforming vague, colloquial, or imprecise instructions into clear, standardized, and actionable ones. If the instructions are already sufficiently clear, they should be returned without modification."

# ImageEditEvaluator_EN.build_reformt_prompt `user_text` in pipeline_step1x_edit_thinker.py
REWRITE_USER = "\n".join(
    (
        "You are an 'editing task instruction rewriter'. Your task is:",
        "While keeping the meaning completely unchanged, convert the user's vague, colloquial, or informal editing instruction into a clear, standard, and actionable instruction.",
        "When the user's input contains complex meanings, break it down into two to three simple, clear editing instructions. Ensure these instructions do not conflict with each other and retain only the meaningful ones. Output only the rewritten content.",
        "The final editing instruction should preferably contain only one editing action. If the meaning is too complex to be described with a single action, the total number of actions must not exceed three.",
        "If the input includes explicit text modifications, enclose the text to be changed in double quotes.",
        "Editing types mainly include: object addition, object replacement, object deletion, color modification, background replacement, style change, material change, and text replacement.",
        "Where possible, the final instruction should include the editing location, the action (see the editing types), and the object being edited. Follow natural-language conventions; numbering is not allowed—use natural-language sequencing instead.",
        "If the user's input requires understanding and reasoning, think about where the final image will change based on the user's description, rather than returning a result prior to such reasoning.",
        "Rewrite in the style of the following examples.",
        "Example 1: User input: 'Symptoms of potassium deficiency in leaves' → Rewritten: 'Leaves turn yellow, and the tips dry out.'",
        "Example 2: User input: 'Make the bread look over-fried' → Rewritten: 'Change the bread’s color to a dark, toasted brown.'",
        "Example 3: User input: 'Photoshop me a boyfriend; make it a two-person photo' → Rewritten: 'Add a man next to the woman.'",
        "Example 4: User input: 'Improve this image, remove the distant power lines, keep a realistic style' → Rewritten: 'Remove the power lines.'",
        "Example 5: User input: 'Change “TOFEL” in the image to “IELTS”' → Rewritten: 'Replace the text \"TOFEL\" with \"IELTS\".'",
        "Example 6: User input: 'Make it an ID photo.' → Rewritten: 'Replace the background with white.'",
        "Example 7: User input: 'Change the tie to black.' → Rewritten: 'Change the tie color to black.'",
        "Example 8: User input: 'Remove the watermark in the bottom-right corner.' → Rewritten: 'Remove the bottom-right watermark.'",
        "Example 9: User input: 'Increase hair volume. Change the hairstyle to long hair. Make the person look gentler.' → Rewritten: 'Increase the amount of hair to make the person look gentler.'",
        "User input instruction:{instruction}",
        "Your returned instruction must be in {language}. Your returned instruction must be in {language}. Your returned instruction must be in {language}.",
        "The returned instruction is:",
    )
)

# ImageEditEvaluator_EN.build_descriptions_messages `system_prompt` in pipeline_step1x_edit_thinker.py
DESCRIBE_SYSTEM = "You are a precise visual-to-text describer. Your goal is to produce a concise, factual {language} description of the **final target image** that would be obtained after applying the edit instruction to the input image. Only describe what is explicitly visible in the final target image."

# ImageEditEvaluator_EN.build_descriptions_messages `user_text` in pipeline_step1x_edit_thinker.py
DESCRIBE_USER = "\n".join(
    (
        "You will see an input image and an editing instruction. Please generate a {language} description of the **target image**, strictly following these principles:",
        "1. **Strictly execute instruction modifications**: Any content explicitly required by the instruction must be accurately reflected in the description, without omission or substitution that conflicts with the instruction.",
        "2. **Unmodified parts**: Should remain consistent with the input image, but if keeping them causes conflict with the instruction, they must be replaced with a reasonable and concise form in line with the instruction’s intent (e.g., if the instruction requires an ID photo, the background must follow ID photo standards, and the original scene must not be retained).",
        "3. **No hallucination**: Do not add, speculate, substitute, or embellish any elements not explicitly present in the instruction or input image (including location, environment, time, lighting, character identity, clothing details, object materials, etc.).",
        "4. **Keep it concise**: Provide one clear {language} description of the target image, accurately conveying the key visible people, objects, poses, background, and colors; avoid phrases like “original image,” “remains unchanged,” or “required by the instruction.”",
        "5. **Faithfulness first**: If there is a conflict between the input image and the instruction, follow the instruction; do not mix in elements that contradict it.",
        "",
        "Editing Instruction: {instruction}",
        "Please directly provide the description of the target image:",
    )
)

# ImageEditEvaluator_EN._build_scoring_messages `sys_prompt` in pipeline_step1x_edit_thinker.py
CONSISTENCY_SYSTEM = (
    "You are a strict image-text consistency evaluator, and you should only output strict JSON."
)

# ImageEditEvaluator_EN._build_scoring_messages `user_prompt` in pipeline_step1x_edit_thinker.py
CONSISTENCY_USER = "\n".join(
    (
        "Under the premise of satisfying the [editing instruction], evaluate the consistency between the [image] and the [text description].",
        "            Please output only one JSON object containing the following keys:",
        '            - meets_instruction: "yes" | "partial" | "no"',
        "            - major_conflicts: Non-negative integer",
        "            - minor_conflicts: Non-negative integer",
        "            - omissions:       Non-negative integer",
        "            - raw_score:       Floating-point number from 0 to 10",
        "            - reason:          Brief reasoning in {language}: first state whether the instruction is satisfied, then point out the main consistencies/inconsistencies.",
        "            Judgment points:",
        "            1) Instruction satisfaction takes priority;",
        "            2) Obvious contradictions count as major_conflicts; minor discrepancies count as minor_conflicts;",
        "            3) If the description omits key elements present in the image, count them as omissions;",
        "            4) raw_score should follow the 0..10 scale, but do not include any extra text.",
        "",
        "            [Editing Instruction]",
        "            {instruction}",
        "",
        "            [Text Description]",
        "            {description}",
        "            ",
    )
)

# ImageEditEvaluator_EN._build_reflection_messages `sys` in pipeline_step1x_edit_thinker.py
REFLECT_SYSTEM = "You are a strict image editing result reviewer and must strictly adhere to the output format requirements provided by the user."

# ImageEditEvaluator_EN._build_reflection_messages `prior_text` in pipeline_step1x_edit_thinker.py
REFLECT_USER = "\n".join(
    (
        "",
        '        The first image is the input; the second image is the result after applying the image "edit instruction".',
        "        The current edit instruction is: ",
        "            {instruction}",
        "            I hope you can determine, based on the content of the second image and the editing instruction, whether the edited result meets the requirements, and return strictly in one of the following formats:",
        "        ```",
        "        <#Think> ...",
        "        <#Reflection> ...",
        "        ```",
        "        or",
        "        ```",
        "        <#Think> ...",
        "        <#Failed>",
        "        ```",
        "        or",
        "        ```",
        "        <#Think> ...",
        "        <#Success>",
        "        ```",
        '        After <#Think>, include the reasoning process; if <#Reflection> appears, it means the image did not fully follow the instruction and further modification is needed—append a "secondary editing instruction" after <#Reflection>; if <#Failed> appears, it is impossible to further modify the current result to meet the instruction; if <#Success> appears, the editing is successful.',
        "        Now check the image and the instruction using the following criteria:",
        "        1. Strictly check for obvious breakage or artifacts; if none are present, remove any mention of breakage from the above description; in particular, remove hand-related breakage/artifacts unless they are very severe.",
        "        2. If the semantic change of the background is basically correct and no obvious distortion appears, the corrected result must not contain the corresponding descriptions.",
        "        3. Ensure regions not mentioned by the instruction remain unchanged; if the second image introduces unexpected changes that drastically alter regions that should not change, making it impossible to continue editing based on the second image, return <#Failed> and state that a compliant editing instruction cannot be generated.",
        "        4. Ensure the reflection instruction after <#Reflection> is significantly different from the original instruction; if they are essentially the same, discard the case as the model lacks true editing ability.",
        "        5. Ensure the reflection content and any new editing instruction you return are correct.",
        "        6. <#Reflection> and <#Failed> may appear only once and must come after <#Think>.",
        "        7. In the new instruction after <#Reflection>, remove content already successfully edited in the current result to reduce duplication with the original instruction.",
        "        Emphasis: the instruction after <#Reflection> must be based on the second image and must not rely on information from the first image.",
        "        Then:",
        "        1. If compliant data can be obtained by further editing the current result, return only the reflection content and the secondary editing instruction in the format: <#Think>...<#Reflection>..., and nothing else.",
        "        2. If compliant data cannot be generated, return only the reflection content and <#Failed> in the format: <#Think>...<#Failed>, and nothing else.",
        "        3. If the editing is already successful, return only in the format: <#Think>...<#Success>, and nothing else.",
        "",
        "        [Historical Prior (from the previous independent scoring for reference only, not mandatory)]",
        "        - Score: {prior_score}",
        "        - Reason: {prior_reason}",
        "        Please fully refer to the prior information, but still base your judgment strictly on the actual content of the two images and the editing instruction, and provide rigorous and actionable conclusions and editing suggestions.",
    )
)

# ImageEditEvaluator_EN._build_score1_messages `sys` in pipeline_step1x_edit_thinker.py
EDIT_SCORE_SYSTEM = "You are an expert critic of AI-generated image edits. Provide a professional, objective, and concise assessment based on the user's rules. Strictly adhere to the requested JSON output format."

# ImageEditEvaluator_EN._build_score1_messages `PROMPT_PART_1` in pipeline_step1x_edit_thinker.py
SCORE_FORMAT = "\n".join(
    (
        "You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image(s) based on given rules.",
        "        All the input images are AI-generated. All human in the images are AI-generated too. so you need not worry about the privacy confidentials.",
        "",
        "        You will have to give your output in this way (Keep your reasoning concise and short.):",
        "        {",
        '        "score" : [...],',
        '        "reasoning" : "..."',
        "        }",
    )
)

# ImageEditEvaluator_EN._build_score1_messages `PROMPT_PART_2_RULES` in pipeline_step1x_edit_thinker.py
EDIT_SCORE_RULES = "\n".join(
    (
        "RULES:",
        "",
        "        Two images will be provided: The first being the original AI-generated image and the second being an edited version of the first.",
        "        The objective is to evaluate how successfully the editing instruction has been executed in the second image.",
        "",
        "        Note that sometimes the two images might look identical due to the failure of image edit.",
        "        ",
    )
)

# ImageEditEvaluator_EN._build_score1_messages `PROMPT_PART_3_SCALE` in pipeline_step1x_edit_thinker.py
EDIT_SCORE_SCALE = "\n".join(
    (
        "From scale 0 to 10: ",
        "        A score from 0 to 10 will be given based on the success of the editing. (0 indicates that the scene in the edited image does not follow the editing instruction at all. 10 indicates that the scene in the edited image follow the editing instruction text perfectly.)",
        "        A second score from 0 to 10 will rate the degree of overediting in the second image. (0 indicates that the scene in the edited image is completely different from the original. 10 indicates that the edited image can be recognized as a minimal edited yet effective version of original.)",
        "        Put the score in a list such that output score = [score1, score2], where 'score1' evaluates the editing success and 'score2' evaluates the degree of overediting.",
        "",
        "        Editing instruction: <instruction>",
        "        ",
    )
)

# ImageEditEvaluator_EN._build_score2_messages `sys` in pipeline_step1x_edit_thinker.py
QUALITY_SCORE_SYSTEM = "You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image based on given rules. Strictly adhere to the requested JSON output format."

# ImageEditEvaluator_EN._build_score2_messages `PROMPT_PART_2_RULES` in pipeline_step1x_edit_thinker.py
QUALITY_SCORE_RULES = "\n".join(
    (
        "RULES:",
        "",
        "        The image is an AI-generated image.",
        "        The objective is to evaluate how successfully the image has been generated.",
        "",
        "        From scale 0 to 10: ",
        "        A score from 0 to 10 will be given based on image naturalness. ",
        "        (",
        "            0 indicates that the scene in the image does not look natural at all or give a unnatural feeling such as wrong sense of distance, or wrong shadow, or wrong lighting. ",
        "            10 indicates that the image looks natural.",
        "        )",
        "        A second score from 0 to 10 will rate the image artifacts. ",
        "        (",
        "            0 indicates that the image contains a large portion of distortion, or watermark, or scratches, or blurred faces, or unusual body parts, or subjects not harmonized. ",
        "            10 indicates the image has no artifacts.",
        "        )",
        "        Put the score in a list such that output score = [naturalness, artifacts]",
        "        ",
    )
)

# analyze_text() in pipeline_step1x_edit_thinker.py: more than one CJK character means Chinese.
LANGUAGE_CHINESE = "中文"
LANGUAGE_ENGLISH = "英文"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def language_label(text: str) -> str:
    """The label the reference writes into its templates for the language of `text`."""
    return LANGUAGE_CHINESE if len(_CJK.findall(text)) > 1 else LANGUAGE_ENGLISH


ChatPart = str | Image.Image


@dataclass(frozen=True)
class ChatTurn:
    """One chat message: text and images in the order the model reads them."""

    role: Literal["system", "user"]
    parts: tuple[ChatPart, ...]


Conversation = Sequence[ChatTurn]


def _conversation(system: str, *parts: ChatPart) -> list[ChatTurn]:
    return [ChatTurn("system", (system,)), ChatTurn("user", parts)]


def rewrite_conversation(image: Image.Image | None, instruction: str) -> list[ChatTurn]:
    """Thinking pass / prompt enhancer: vague instruction -> concrete edit instruction."""
    text = REWRITE_USER.format(instruction=instruction, language=language_label(instruction))
    if image is None:  # the enhance endpoint may be called without an image
        return _conversation(REWRITE_SYSTEM, text)
    return _conversation(REWRITE_SYSTEM, image, text)


def describe_conversation(source: Image.Image, instruction: str) -> list[ChatTurn]:
    """Reflection step 1: describe the target image the instruction should produce."""
    language = language_label(instruction)
    return _conversation(
        DESCRIBE_SYSTEM.format(language=language),
        source,
        DESCRIBE_USER.format(language=language, instruction=instruction),
    )


def consistency_conversation(
    edited: Image.Image, instruction: str, description: str
) -> list[ChatTurn]:
    """Reflection step 2: score the edited image against that description (JSON answer)."""
    text = CONSISTENCY_USER.format(
        language=language_label(instruction), instruction=instruction, description=description
    )
    # The reference puts the text before the image in this one message.
    return _conversation(CONSISTENCY_SYSTEM, text, edited)


def reflect_conversation(
    source: Image.Image,
    edited: Image.Image,
    instruction: str,
    prior_score: float,
    prior_reason: str,
) -> list[ChatTurn]:
    """Reflection step 3: the tagged verdict (<#Think> ... <#Success>/<#Reflection>/<#Failed>)."""
    text = REFLECT_USER.format(
        instruction=instruction, prior_score=prior_score, prior_reason=prior_reason
    )
    return _conversation(REFLECT_SYSTEM, source, edited, text)


def edit_score_conversation(
    source: Image.Image, edited: Image.Image, instruction: str
) -> list[ChatTurn]:
    """Selection score 1: [editing success, over-editing], each 0..10 (JSON answer)."""
    scale = EDIT_SCORE_SCALE.replace("<instruction>", instruction)
    text = f"{SCORE_FORMAT}\n\n{EDIT_SCORE_RULES}\n\n{scale}"
    return _conversation(EDIT_SCORE_SYSTEM, source, edited, text)


def quality_score_conversation(edited: Image.Image) -> list[ChatTurn]:
    """Selection score 2: [naturalness, artifacts], each 0..10 (JSON answer)."""
    text = f"{SCORE_FORMAT}\n\n{QUALITY_SCORE_RULES}"
    return _conversation(QUALITY_SCORE_SYSTEM, edited, text)
