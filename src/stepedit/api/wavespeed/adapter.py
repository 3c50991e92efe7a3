"""WaveSpeed wire models <-> EditRequest / JobView."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from stepedit.inputs import DEFAULT_MAX_PROMPT_CHARS, check_prompt
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest

from .protocol import (
    Prediction,
    PredictionResponse,
    PredictionStatus,
    PredictionTimings,
    PredictionUrls,
    WavespeedEditRequest,
)

logger = logging.getLogger(__name__)

_STATUS: dict[JobStatus, PredictionStatus] = {
    JobStatus.QUEUED: "created",
    JobStatus.PROCESSING: "processing",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "failed",
}


def to_edit_request(body: WavespeedEditRequest, prompt: str) -> EditRequest:
    """`prompt` is the validated (stripped, length-checked) prompt."""
    if body.model_extra:
        logger.info("wavespeed: ignoring unknown fields %s", sorted(body.model_extra))
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
        num_inference_steps=body.num_inference_steps,
        enable_thinking=body.enable_thinking,
        enable_reflection=body.enable_reflection,
        enhance_prompt=body.enhance_prompt,
    )


def to_status(status: JobStatus) -> PredictionStatus:
    return _STATUS[status]


def format_created_at(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as the seed shows: 2023-04-01T12:34:56.789Z."""
    if moment.tzinfo is None:  # the store keeps naive UTC
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def result_url(base_url: str, job_id: str) -> str:
    return f"{base_url.rstrip('/')}/api/v3/predictions/{job_id}/result"


def error_text(view: JobView) -> str:
    if view.status is JobStatus.CANCELED:
        return "canceled"
    return view.error.message if view.error else ""


def to_prediction(
    view: JobView, *, base_url: str, base64_outputs: Sequence[str] | None = None
) -> Prediction:
    """The seed's `data` object. `base64_outputs`: naked base64 of each output image, given when
    the request asked for `enable_base64_output`; otherwise outputs are URLs."""
    completed = view.status is JobStatus.SUCCEEDED
    outputs: list[str] = []
    if completed:
        outputs = (
            list(base64_outputs) if base64_outputs is not None else [o.url for o in view.outputs]
        )
    inference_ms = view.timings.inference_ms
    return Prediction(
        id=view.id,
        outputs=outputs,
        urls=PredictionUrls(get=result_url(base_url, view.id)),
        has_nsfw_contents=[o.nsfw for o in view.outputs] if completed else [],
        status=to_status(view.status),
        created_at=format_created_at(view.created_at),
        error=error_text(view),
        timings=PredictionTimings(inference=round(inference_ms) if inference_ms else 0),
    )


def to_response(
    view: JobView, *, base_url: str, base64_outputs: Sequence[str] | None = None
) -> PredictionResponse:
    return PredictionResponse(
        data=to_prediction(view, base_url=base_url, base64_outputs=base64_outputs)
    )


def webhook_renderer(base_url: str) -> Callable[[JobView], dict[str, Any]]:
    """The webhook body for wavespeed jobs: the same object `GET .../result` returns.

    Register it with `JobService.register_webhook_renderer("wavespeed", webhook_renderer(url))`.
    """

    def render(view: JobView) -> dict[str, Any]:
        return to_response(view, base_url=base_url).model_dump(mode="json")

    return render
