"""WaveSpeed wire models <-> EditRequest / JobView.

The wire uses EditRequest's own names (guidance_scale, num_inference_steps, ...); a seed of -1
(or none) asks for a random one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from stepedit.api.protocol import shared_options, to_request_seed
from stepedit.api.serving import Call, Submission
from stepedit.errors import InvalidInput
from stepedit.inputs import check_negative_prompt, check_prompt
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest
from stepedit.settings import Settings

from .protocol import (
    NAME,
    Prediction,
    PredictionResponse,
    PredictionStatus,
    PredictionTimings,
    PredictionUrls,
    WavespeedEditRequest,
)

SYNC_WAIT_S = 600.0  # enable_sync_mode

_STATUS: dict[JobStatus, PredictionStatus] = {
    JobStatus.QUEUED: "created",
    JobStatus.PROCESSING: "processing",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "failed",
}


class WavespeedAdapter:
    """The serving layer's converter for this flavour (`stepedit.api.serving.EditAdapter`)."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, body: WavespeedEditRequest, call: Call) -> Submission:
        if call.webhook_url and body.enable_base64_output:
            raise InvalidInput(
                "enable_base64_output cannot be combined with a webhook.",
                param="enable_base64_output",
            )
        return Submission(
            request=to_edit_request(body),
            image=body.image,
            mask=body.mask,
            webhook_url=call.webhook_url,
            wait_s=SYNC_WAIT_S if body.enable_sync_mode else None,
            raise_unless_succeeded=False,  # a failed prediction is reported in its `data`
            base64_outputs=body.enable_base64_output,
            wire_input=body.model_dump(mode="json", exclude_unset=True),  # the webhook's `input`
        )

    def to_response(
        self, body: WavespeedEditRequest, view: JobView, base64_outputs: list[str] | None
    ) -> PredictionResponse:
        """`enable_base64_output` applies to this response only (with `enable_sync_mode` the
        outputs are in it); `GET .../result` always answers with output URLs."""
        return to_response(view, base_url=self.settings.base_url, base64_outputs=base64_outputs)


def to_edit_request(body: WavespeedEditRequest) -> EditRequest:
    return EditRequest(
        prompt=check_prompt(body.prompt),
        negative_prompt=check_negative_prompt(body.negative_prompt),
        seed=to_request_seed(body.seed),
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.num_inference_steps,
        **shared_options(body),
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
    """The webhook body for wavespeed jobs, as WaveSpeedAI's webhook docs show it: the bare
    prediction object (not the `{code, message, data}` envelope) with `input`, the request as
    sent (`JobView.wire_input`; inline images are not echoed).

    Register it with `JobService.register_webhook_renderer("wavespeed", webhook_renderer(url))`.
    """

    def render(view: JobView) -> dict[str, Any]:
        prediction = to_prediction(view, base_url=base_url).model_dump(mode="json")
        head = {"id": prediction.pop("id"), "model": prediction.pop("model")}
        return {**head, "input": view.wire_input or {}, **prediction}

    return render
