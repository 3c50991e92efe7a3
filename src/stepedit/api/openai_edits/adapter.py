"""Seed 002 wire models <-> EditRequest / JobView.

The wire's names: `cfg_scale` is EditRequest's guidance_scale, `steps` its num_inference_steps,
`size` ("512x512") its size_level. Seed 002's size rule ("1:1 input -> exactly size; otherwise
the input's aspect ratio with an area of about size*size") is the pipeline's working-size rule at
`size_level`, returned at the working size rather than resized back to the input.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepedit.api.protocol import shared_options
from stepedit.api.serving import Call, Submission
from stepedit.errors import InvalidInput
from stepedit.inputs import OPENAI_EDITS_RULES, check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest
from stepedit.settings import Settings

from .protocol import (
    MAX_PROMPT_CHARS,
    MODEL_ID,
    NAME,
    ImageEditData,
    ImageEditForm,
    ImageEditResponse,
)

SYNC_WAIT_S = 600.0
WIRE_NAMES = {"guidance_scale": "cfg_scale", "num_inference_steps": "steps", "size_level": "size"}


class OpenAIEditsAdapter:
    """The serving layer's converter for this flavour (`stepedit.api.serving.EditAdapter`)."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, form: ImageEditForm, call: Call) -> Submission:
        return Submission(
            request=to_edit_request(form),
            image=call.upload,
            mask=call.mask_upload,
            image_rules=OPENAI_EDITS_RULES,
            wait_s=SYNC_WAIT_S,
            base64_outputs=form.response_format == "b64_json",
            wire_names=WIRE_NAMES,
        )

    def to_response(
        self, form: ImageEditForm, view: JobView, base64_outputs: list[str] | None
    ) -> ImageEditResponse:
        return to_response(view, base64_outputs=base64_outputs)


def to_edit_request(form: ImageEditForm) -> EditRequest:
    if form.model != MODEL_ID:
        raise InvalidInput(
            f"The model {form.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    return EditRequest(
        prompt=check_prompt(form.prompt, MAX_PROMPT_CHARS),
        seed=form.seed or None,  # 0 or omitted: random
        guidance_scale=form.cfg_scale,
        num_inference_steps=form.steps,
        size_level=int(form.size.split("x", 1)[0]),
        output_size="working",
        **shared_options(form),
    )


def to_response(view: JobView, *, base64_outputs: Sequence[str] | None = None) -> ImageEditResponse:
    """A succeeded job -> the seed's response. With `base64_outputs` (response_format=b64_json)
    each item carries `b64_json`, otherwise `url`."""
    data = []
    for index, output in enumerate(view.outputs):
        item = ImageEditData(
            seed=output.seed, finish_reason="content_filtered" if output.nsfw else "success"
        )
        if base64_outputs is not None:
            item.b64_json = base64_outputs[index]
        else:
            item.url = output.url
        data.append(item)
    return ImageEditResponse(created=int(view.created_at.timestamp()), data=data)
