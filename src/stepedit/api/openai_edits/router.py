"""`POST /v1/images/edits`: synchronous, multipart, the seed 002 way."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import Flavour, check_job_succeeded, error_responses
from stepedit.api.outputs import outputs_base64
from stepedit.errors import InvalidInput, PayloadTooLarge
from stepedit.inputs import OPENAI_EDITS_RULES, check_prompt, decode_image, rules_from_settings

from .adapter import to_edit_request, to_response
from .protocol import MAX_PROMPT_CHARS, ImageEditForm, ImageEditResponse

logger = logging.getLogger(__name__)

FLAVOUR: Flavour = "openai_edits"
SYNC_WAIT_S = 600.0
MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries around the image

router = APIRouter(prefix="/v1/images", tags=["openai-edits"])


@router.post(
    "/edits",
    summary="Edit an image (StepFun step-1x-edit, OpenAI-style)",
    response_model=ImageEditResponse,
    response_model_exclude_none=True,
    responses=error_responses(FLAVOUR, 400, 401, 413, 429, 503),
    # The parameter is optional in Python only because the `openai` client may send the file
    # as `image[]`; on the wire one image file is required (seed 002).
    openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"schema": {"required": ["image"]}}}}
    },
)
async def edit_image(
    request: Request,
    form: Annotated[ImageEditForm, Form()],
    jobs: Jobs,
    owner: Owner,
    settings: AppSettings,
    image: Annotated[
        UploadFile | None, File(description="jpg/png/webp, 64-1728 px a side, at most 10 MB")
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> ImageEditResponse:
    rules = rules_from_settings(settings, OPENAI_EDITS_RULES)
    prompt = check_prompt(form.prompt, MAX_PROMPT_CHARS)
    log_unknown_form_fields(await request.form())
    edit_request = to_edit_request(form, prompt)
    upload = image or await image_from_array_field(request)
    data = await read_upload(upload, rules.max_bytes)
    decoded = await asyncio.to_thread(decode_image, data, rules, param="image")
    view = await jobs.submit(
        edit_request,
        await asyncio.to_thread(decoded.to_png_bytes),
        owner=owner,
        flavour=FLAVOUR,
        idempotency_key=idempotency_key,
    )
    view = await jobs.wait(view.id, owner, SYNC_WAIT_S)
    check_job_succeeded(view, SYNC_WAIT_S)
    base64_outputs = None
    if form.response_format == "b64_json":
        base64_outputs = await outputs_base64(jobs, view)
    return to_response(view, base64_outputs=base64_outputs)


def log_unknown_form_fields(fields: FormData) -> None:
    known = set(ImageEditForm.model_fields) | {"image", "image[]"}
    unknown = sorted(set(fields.keys()) - known)
    if unknown:
        logger.info("openai_edits: ignoring unknown form fields %s", unknown)


async def image_from_array_field(request: Request) -> StarletteUploadFile:
    """The `openai` client sends a list of images as `image[]`; seed 002 takes exactly one."""
    files = [f for f in (await request.form()).getlist("image[]") if not isinstance(f, str)]
    if not files:
        raise InvalidInput("An image file is required.", param="image")
    if len(files) > 1:
        raise InvalidInput("Exactly one image file is accepted.", param="image")
    return files[0]


async def read_upload(upload: StarletteUploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The image is larger than the limit of {max_bytes} bytes.", param="image"
        )
    return data
