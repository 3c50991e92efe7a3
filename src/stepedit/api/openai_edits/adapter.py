"""Seed 002 wire models <-> EditRequest / JobView."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stepedit.errors import InvalidInput
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest

from .protocol import MODEL_ID, ImageEditData, ImageEditForm, ImageEditResponse

logger = logging.getLogger(__name__)


def to_edit_request(form: ImageEditForm, prompt: str) -> EditRequest:
    """`prompt` is the validated (stripped, non-empty) prompt.

    Seed 002's size rule ("1:1 input -> exactly size; otherwise the input's aspect ratio with an
    area of about size*size") is the pipeline's working-size rule at `size_level`, returned at
    the working size rather than resized back to the input.
    """
    if form.model != MODEL_ID:
        raise InvalidInput(
            f"The model {form.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    if form.model_extra:
        logger.info("openai_edits: ignoring unknown fields %s", sorted(form.model_extra))
    return EditRequest(
        prompt=prompt,
        seed=form.seed or None,  # 0 or omitted: random
        guidance_scale=form.cfg_scale,
        num_inference_steps=form.steps,
        size_level=int(form.size.split("x", 1)[0]),
        output_size="working",
        enable_thinking=form.enable_thinking,
        enable_reflection=form.enable_reflection,
        enhance_prompt=form.enhance_prompt,
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
