"""Seed 003 wire models <-> EditRequest / JobView.

The wire's names: `steps` is EditRequest's num_inference_steps, `n` its num_images. Seed 003's
`strength` is the img2img strength: 1.0 starts from pure noise, lower values start from the
noised source image.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepedit.api.protocol import shared_options, to_request_seed
from stepedit.api.serving import Call, Submission
from stepedit.errors import InvalidInput
from stepedit.inputs import check_negative_prompt, check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest
from stepedit.settings import Settings

from .protocol import MODEL_ID, NAME, GenerationData, GenerationRequest, GenerationResponse

SYNC_WAIT_S = 600.0
WIRE_NAMES = {"num_inference_steps": "steps", "num_images": "n"}


class GenerationsAdapter:
    """The serving layer's converter for this flavour (`stepedit.api.serving.EditAdapter`)."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, body: GenerationRequest, call: Call) -> Submission:
        return Submission(
            request=to_edit_request(body),
            image=body.image,
            mask=body.mask,
            wait_s=SYNC_WAIT_S,
            base64_outputs=body.response_format == "b64_json",
            wire_names=WIRE_NAMES,
        )

    def to_response(
        self, body: GenerationRequest, view: JobView, base64_outputs: list[str] | None
    ) -> GenerationResponse:
        return to_response(view, base64_outputs=base64_outputs)


def to_edit_request(body: GenerationRequest) -> EditRequest:
    if body.model != MODEL_ID:
        raise InvalidInput(
            f"The model {body.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    return EditRequest(
        prompt=check_prompt(body.prompt),
        negative_prompt=check_negative_prompt(body.negative_prompt),
        seed=to_request_seed(body.seed),
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.steps,
        num_images=body.n,
        strength=body.strength,
        **shared_options(body),
    )


def to_response(
    view: JobView, *, base64_outputs: Sequence[str] | None = None
) -> GenerationResponse:
    """A succeeded job -> the seed's response: `url` items, or (response_format=b64_json) data
    URIs in `b64_json`, the seed's example form. Both keys are always present."""
    data = []
    for index, output in enumerate(view.outputs):
        if base64_outputs is not None:
            media_type = f"image/{output.format}"
            data.append(
                GenerationData(b64_json=f"data:{media_type};base64,{base64_outputs[index]}")
            )
        else:
            data.append(GenerationData(url=output.url))
    return GenerationResponse(created=int(view.created_at.timestamp()), data=data)
