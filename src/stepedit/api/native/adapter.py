"""Native wire models <-> EditRequest / JobView.

The native API speaks EditRequest's own names; a seed of -1 (or none) asks for a random one.
Two adapters: job creation (answered at once, 202) and the prompt enhancer alone (answered once
the enhancer ran; it goes through the queue because the MLLM lives with the worker).
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from stepedit.api.protocol import shared_options, to_request_seed
from stepedit.api.serving import Call, Submission
from stepedit.inputs import check_negative_prompt, check_prompt
from stepedit.jobs.views import JobView, to_native_dict
from stepedit.request import EditRequest, LoraChoice
from stepedit.settings import Settings

from .protocol import NAME, JobCreate, PromptEnhanceIn, PromptEnhanceOut

ENHANCE_WAIT_S = 300.0


class JobCreateAdapter:
    """`POST /v1/jobs` for the serving layer (`stepedit.api.serving.EditAdapter`)."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, body: JobCreate, call: Call) -> Submission:
        return Submission(
            request=to_edit_request(body),
            image=call.upload if call.upload is not None else body.image,
            mask=call.mask_upload if call.mask_upload is not None else body.mask,
            webhook_url=body.webhook_url,
            webhook_param="webhook_url",
        )

    def to_response(
        self, body: JobCreate, view: JobView, base64_outputs: list[str] | None
    ) -> dict[str, Any]:
        return to_job_out(view)


class PromptEnhanceAdapter:
    """`POST /v1/prompt/enhance` for the serving layer: an enhance-only job, waited for."""

    flavour = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def to_submission(self, body: PromptEnhanceIn, call: Call) -> Submission:
        request = EditRequest(
            prompt=check_prompt(body.prompt), enhance_only=True, enhance_image=bool(body.image)
        )
        return Submission(
            request=request, image=body.image or placeholder_png(), wait_s=ENHANCE_WAIT_S
        )

    def to_response(
        self, body: PromptEnhanceIn, view: JobView, base64_outputs: list[str] | None
    ) -> PromptEnhanceOut:
        return PromptEnhanceOut(prompt=body.prompt, enhanced_prompt=view.prompt_used or body.prompt)


def to_edit_request(body: JobCreate) -> EditRequest:
    is_outpaint = body.outpaint_padding is not None or body.outpaint_aspect_ratio is not None
    loras = None
    if body.loras is not None:
        loras = tuple(LoraChoice(lora.name, lora.scale) for lora in body.loras)
    return EditRequest(
        prompt=check_prompt(body.prompt, allow_empty=is_outpaint),
        negative_prompt=check_negative_prompt(body.negative_prompt),
        seed=to_request_seed(body.seed),
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.num_inference_steps,
        size_level=body.size_level,
        output_size=body.output_size,
        num_images=body.num_images,
        strength=body.strength,
        cfg_rescale=body.cfg_rescale,
        output_format=body.output_format,
        model=body.model,
        outpaint_padding=body.outpaint_padding,
        outpaint_aspect_ratio=body.outpaint_aspect_ratio,
        loras=loras,
        **shared_options(body),
    )


def to_job_out(view: JobView) -> dict[str, Any]:
    """The native JobView JSON (`JobOut`), as the job system renders it for webhooks too."""
    return to_native_dict(view)


def placeholder_png() -> bytes:
    """The image stored for an enhance job sent without one (never shown to the MLLM)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()
