"""Seed 004 wire models <-> EditRequest / JobView.

The wire's names: `steps` is EditRequest's num_inference_steps. img2img, edit and
style_transfer are instruction edits, inpaint one confined to its mask, outpaint one that
extends the canvas; the response says which passes (`stepedit.request.Pass`) ran.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepedit.api.protocol import shared_options, to_request_seed
from stepedit.api.serving import Call, Submission
from stepedit.errors import InvalidInput
from stepedit.inputs import check_negative_prompt, check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest, Pass
from stepedit.settings import Settings

from .protocol import (
    INPAINT,
    MODEL_ID,
    NAME,
    OPERATIONS,
    OUTPAINT,
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
        mask = call.mask_upload if call.mask_upload is not None else body.mask
        check_operation_inputs(check_operation(body.operation), body, has_mask=bool(mask))
        return Submission(
            request=to_edit_request(body),
            image=call.upload if call.upload is not None else body.image,
            mask=mask,
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
    if name in OPERATIONS:
        return name
    raise InvalidInput(
        f"Unknown operation {operation!r}; use one of: {', '.join(OPERATIONS)}.",
        param="operation",
    )


def check_operation_inputs(operation: str, body: ReasoningEditRequest, *, has_mask: bool) -> None:
    """A mask comes with inpaint and only with it; outpaint fields with outpaint and only it."""
    if operation == INPAINT and not has_mask:
        raise InvalidInput(
            "operation 'inpaint' needs a mask (white = may change): a file part, a URL, a data "
            "URI or base64.",
            param="mask",
        )
    if operation != INPAINT and has_mask:
        raise InvalidInput(
            f"a mask is taken with operation 'inpaint', not {operation!r}.", param="mask"
        )
    has_outpaint = body.outpaint_padding is not None or body.outpaint_aspect_ratio is not None
    if operation == OUTPAINT and not has_outpaint:
        raise InvalidInput(
            "operation 'outpaint' needs outpaint_padding (pixels added left, top, right, "
            "bottom) or outpaint_aspect_ratio (e.g. 16:9).",
            param="outpaint_padding",
        )
    if operation != OUTPAINT and has_outpaint:
        param = "outpaint_padding" if body.outpaint_padding is not None else "outpaint_aspect_ratio"
        raise InvalidInput(
            f"{param} is taken with operation 'outpaint', not {operation!r}.", param=param
        )


def to_edit_request(body: ReasoningEditRequest) -> EditRequest:
    if body.model != MODEL_ID:
        raise InvalidInput(
            f"The model {body.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    operation = check_operation(body.operation)
    return EditRequest(
        prompt=check_prompt(body.prompt, allow_empty=operation == OUTPAINT),
        negative_prompt=check_negative_prompt(body.negative_prompt),
        seed=to_request_seed(body.seed),
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.steps,
        outpaint_padding=body.outpaint_padding,
        outpaint_aspect_ratio=body.outpaint_aspect_ratio,
        **shared_options(body),
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
