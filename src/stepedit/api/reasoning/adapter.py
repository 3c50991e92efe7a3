"""Seed 004 wire models <-> EditRequest / JobView.

The wire's names: `steps` is EditRequest's num_inference_steps. Every accepted operation is an
instruction edit; the response says which passes (`stepedit.request.Pass`) ran.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepedit.api.serving import Call, Submission
from stepedit.errors import InvalidInput
from stepedit.inputs import check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest, Pass
from stepedit.settings import Settings

from .protocol import (
    INSTRUCTION_OPERATIONS,
    MODEL_ID,
    NAME,
    UNSUPPORTED_OPERATIONS,
    PassReport,
    ReasoningEditRequest,
    ReasoningEditResponse,
    ReasoningImage,
)

SYNC_WAIT_S = 900.0  # thinking + reflection rounds take several diffusion runs
WIRE_NAMES = {"num_inference_steps": "steps"}


class ReasoningAdapter:
    """The serving layer's converter for this flavour (`stepedit.api.serving.EditAdapter`)."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, body: ReasoningEditRequest, call: Call) -> Submission:
        return Submission(
            request=to_edit_request(body),
            image=call.upload if call.upload is not None else body.image,
            wait_s=SYNC_WAIT_S,
            base64_outputs=body.response_format == "b64_json",
            wire_names=WIRE_NAMES,
        )

    def to_response(
        self, body: ReasoningEditRequest, view: JobView, base64_outputs: list[str] | None
    ) -> ReasoningEditResponse:
        return to_response(
            view,
            operation=check_operation(body.operation),
            tokens=view.tokens,  # as charged at submit, with the passes the release runs
            base64_outputs=base64_outputs,
        )


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


def to_edit_request(body: ReasoningEditRequest) -> EditRequest:
    if body.model != MODEL_ID:
        raise InvalidInput(
            f"The model {body.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    check_operation(body.operation)
    return EditRequest(
        prompt=check_prompt(body.prompt),
        negative_prompt=check_prompt(
            body.negative_prompt, param="negative_prompt", allow_empty=True
        ),
        seed=None if body.seed is None or body.seed < 0 else body.seed,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.steps,
        enable_thinking=body.enable_thinking,
        enable_reflection=body.enable_reflection,
        enhance_prompt=body.enhance_prompt,
    )


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
            requested=view.request.enable_thinking, ran=Pass.ran(view.passes, Pass.THINKING)
        ),
        reflection=PassReport(
            requested=view.request.enable_reflection, ran=Pass.ran(view.passes, Pass.REFLECTION)
        ),
        rounds=list((view.reasoning or {}).get("rounds", [])),
        best_round=(view.reasoning or {}).get("best_round"),
        timings=timings,
        usage={"tokens": tokens},
    )
