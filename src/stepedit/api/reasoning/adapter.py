"""Seed 004 wire models <-> EditRequest / JobView."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stepedit.errors import InvalidInput
from stepedit.inputs import DEFAULT_MAX_PROMPT_CHARS, check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest

from .protocol import (
    INSTRUCTION_OPERATIONS,
    MODEL_ID,
    UNSUPPORTED_OPERATIONS,
    PassReport,
    ReasoningEditRequest,
    ReasoningEditResponse,
    ReasoningImage,
)

logger = logging.getLogger(__name__)


def check_operation(operation: str) -> str:
    name = operation.strip().lower()
    if name in INSTRUCTION_OPERATIONS:
        return name
    supported = ", ".join(INSTRUCTION_OPERATIONS)
    if name in UNSUPPORTED_OPERATIONS:
        raise InvalidInput(
            f"operation {name!r} is not supported: {UNSUPPORTED_OPERATIONS[name]}. Describe the "
            f"change in the prompt and use one of: {supported}.",
            param="operation",
        )
    raise InvalidInput(
        f"Unknown operation {operation!r}; use one of: {supported}.", param="operation"
    )


def to_edit_request(body: ReasoningEditRequest, prompt: str) -> EditRequest:
    """`prompt` is the validated prompt. Every accepted operation is an instruction edit."""
    if body.model != MODEL_ID:
        raise InvalidInput(
            f"The model {body.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    check_operation(body.operation)
    if body.model_extra:
        logger.info("reasoning: ignoring unknown fields %s", sorted(body.model_extra))
    return EditRequest(
        prompt=prompt,
        negative_prompt=check_prompt(
            body.negative_prompt,
            DEFAULT_MAX_PROMPT_CHARS,
            param="negative_prompt",
            allow_empty=True,
        ),
        seed=None if body.seed is None or body.seed < 0 else body.seed,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.steps,
        enable_thinking=body.enable_thinking,
        enable_reflection=body.enable_reflection,
        enhance_prompt=body.enhance_prompt,
    )


def has_pass(passes: Sequence[str], name: str) -> bool:
    """Pass names are "thinking", "edit", "diffusion_<round>", "reflection_<round>"."""
    return any(p == name or p.startswith(f"{name}_") for p in passes)


def to_response(
    view: JobView,
    *,
    operation: str,
    tokens: int,
    base64_outputs: Sequence[str] | None = None,
) -> ReasoningEditResponse:
    data = [
        ReasoningImage(
            url=None if base64_outputs is not None else output.url,
            b64_json=base64_outputs[index] if base64_outputs is not None else None,
            seed=output.seed,
            nsfw=output.nsfw,
        )
        for index, output in enumerate(view.outputs)
    ]
    timings = {
        "inference_ms": view.timings.inference_ms,
        "queue_ms": view.timings.queue_ms,
        "total_ms": view.timings.total_ms,
        **{f"{stage}_ms": ms for stage, ms in view.timings.stages_ms.items()},
    }
    return ReasoningEditResponse(
        id=view.id,
        created=int(view.created_at.timestamp()),
        model=MODEL_ID,
        operation=operation,
        data=data,
        seed=view.seed,
        prompt=view.request.prompt,
        prompt_used=view.prompt_used,
        passes=list(view.passes),
        thinking=PassReport(
            requested=view.request.enable_thinking, ran=has_pass(view.passes, "thinking")
        ),
        reflection=PassReport(
            requested=view.request.enable_reflection, ran=has_pass(view.passes, "reflection")
        ),
        rounds=list((view.reasoning or {}).get("rounds", [])),
        best_round=(view.reasoning or {}).get("best_round"),
        timings=timings,
        usage={"tokens": tokens},
    )
