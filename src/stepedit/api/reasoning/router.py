"""`POST /v1/image/edit/` (seed 004): JSON or multipart, synchronous, Bearer auth."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import Flavour, check_job_succeeded, error_responses
from stepedit.api.outputs import outputs_base64
from stepedit.errors import InvalidInput, PayloadTooLarge
from stepedit.inputs import (
    DecodedImage,
    ImageRules,
    check_prompt,
    decode_image,
    fetch_policy_from_settings,
    load_image_source,
    max_prompt_chars,
    rules_from_settings,
)
from stepedit.jobs.service import tokens_for

from .adapter import check_operation, to_edit_request, to_response
from .protocol import ReasoningEditRequest, ReasoningEditResponse

logger = logging.getLogger(__name__)

FLAVOUR: Flavour = "reasoning"
SYNC_WAIT_S = 900.0  # thinking + reflection rounds take several diffusion runs
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

router = APIRouter(prefix="/v1/image", tags=["reasoning"])


def _request_body_schema() -> dict[str, Any]:
    json_schema = ReasoningEditRequest.model_json_schema()
    form_schema = json.loads(json.dumps(json_schema))
    form_schema["properties"]["image"] = {"type": "string", "format": "binary"}
    form_schema["required"] = [*form_schema.get("required", []), "image"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


@router.post(
    "/edit/",
    summary="Reasoning image edit (Step1X-Edit v1.2: thinking + reflection)",
    response_model=ReasoningEditResponse,
    responses=error_responses(FLAVOUR, 400, 401, 413, 415, 429, 503),
    openapi_extra=_request_body_schema(),
)
async def edit_image(
    request: Request,
    jobs: Jobs,
    owner: Owner,
    settings: AppSettings,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> ReasoningEditResponse:
    rules = rules_from_settings(settings)
    body, upload = await read_request(request, rules.max_bytes)
    prompt = check_prompt(body.prompt, max_prompt_chars(settings))
    edit_request = to_edit_request(body, prompt)
    image = await load_image(body, upload, rules, settings)
    view = await jobs.submit(
        edit_request,
        await asyncio.to_thread(image.to_png_bytes),
        owner=owner,
        flavour=FLAVOUR,
        idempotency_key=idempotency_key,
    )
    view = await jobs.wait(view.id, owner, SYNC_WAIT_S)
    check_job_succeeded(view, SYNC_WAIT_S)
    base64_outputs = None
    if body.response_format == "b64_json":
        base64_outputs = await outputs_base64(jobs, view)
    return to_response(
        view,
        operation=check_operation(body.operation),
        tokens=tokens_for(view.request, settings),
        base64_outputs=base64_outputs,
    )


# The seed's path ends in a slash; a client that drops it is served rather than redirected
# (a 307 on POST makes some clients resend without the body).
router.add_api_route(
    "/edit",
    edit_image,
    methods=["POST"],
    response_model=ReasoningEditResponse,
    include_in_schema=False,
)


async def read_request(
    request: Request, max_image_bytes: int
) -> tuple[ReasoningEditRequest, UploadFile | None]:
    """The fields from a JSON body or a form, and the uploaded image file if there is one."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    upload: UploadFile | None = None
    if content_type in FORM_TYPES:
        form = await request.form()
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "image":
                    upload = value
            else:
                fields[key] = value
    else:
        fields = await read_json_object(request, max_image_bytes)
    try:
        return ReasoningEditRequest.model_validate(fields), upload
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def read_json_object(request: Request, max_image_bytes: int) -> dict[str, Any]:
    # A base64 image is 4/3 of its bytes; refuse a body that cannot be within the limit.
    limit = max_image_bytes * 4 // 3 + 64 * 1024
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", param="image")
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", param="image")
    try:
        parsed = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput(
            "The body must be JSON, or multipart/form-data with an image file."
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidInput("The body must be a JSON object.")
    return parsed


async def load_image(
    body: ReasoningEditRequest, upload: UploadFile | None, rules: ImageRules, settings: Any
) -> DecodedImage:
    if upload is not None:
        data = await upload.read(rules.max_bytes + 1)
        if len(data) > rules.max_bytes:
            raise PayloadTooLarge(
                f"The image is larger than the limit of {rules.max_bytes} bytes.", param="image"
            )
        return await asyncio.to_thread(decode_image, data, rules, param="image")
    if not body.image:
        raise InvalidInput("An image is required (a file, URL, data URI or base64).", param="image")
    return await load_image_source(body.image, rules, fetch_policy_from_settings(settings))
