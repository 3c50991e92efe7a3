"""Request bodies FastAPI does not read by itself: the same fields sent as a JSON object or as
multipart form fields with the image as a file (seed 004 and the native API take both).

The whole body is already bounded by `limits.BodySizeLimit`; a form part may be as large as the
body (an image sent as a data URI in a form field).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from stepedit.api.limits import body_limit_for
from stepedit.api.serving import Call, CallDep
from stepedit.errors import InvalidInput

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
ModelT = TypeVar("ModelT", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_form(request: Request) -> bool:
    return media_type(request) in FORM_TYPES


async def read_form(request: Request) -> FormData:
    """The form (Starlette keeps it, so every reader of one request gets the same)."""
    max_upload_bytes: int = request.app.state.settings.max_upload_bytes
    return await request.form(max_part_size=body_limit_for(max_upload_bytes))


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of the form (the last of a repeated one); files are read apart."""
    form = await read_form(request)
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


async def form_file(request: Request, name: str = "image") -> UploadFile | None:
    """The file sent as `name` in a multipart body; None for any other body. `name` sent twice
    is refused, rather than one of them edited."""
    if not is_form(request):
        return None
    values = (await read_form(request)).getlist(name)
    if len(values) > 1:
        raise InvalidInput(f"Exactly one {name} is accepted; {len(values)} were sent.", param=name)
    value = values[0] if values else None
    return value if isinstance(value, UploadFile) else None


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        parsed = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput(
            "The body must be JSON, or multipart/form-data with an image file.", param="body"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidInput("The body must be a JSON object.", param="body")
    return parsed


def validate_fields(model: type[ModelT], fields: Mapping[str, Any]) -> ModelT:
    """`fields` as `model`; a validation error is reported as FastAPI reports a body's."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


async def read_call_with_upload(call: CallDep, request: Request) -> Call:
    """The call, with the multipart body's image and mask files when there are."""
    return replace(
        call, upload=await form_file(request), mask_upload=await form_file(request, "mask")
    )
