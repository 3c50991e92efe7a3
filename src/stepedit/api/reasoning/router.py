"""`POST /v1/image/edit/` (seed 004): JSON or multipart, synchronous, Bearer auth."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from stepedit.api.bodies import (
    form_fields,
    is_form,
    read_call_with_upload,
    read_json_object,
    validate_fields,
)
from stepedit.api.deps import AUTHENTICATED
from stepedit.api.protocol import MASK_DESCRIPTION
from stepedit.api.serving import Call, EditServing, handler_for

from .adapter import ReasoningAdapter
from .errors import ERRORS
from .protocol import ReasoningEditRequest, ReasoningEditResponse

router = APIRouter(prefix="/v1/image/edit", tags=["reasoning"], dependencies=AUTHENTICATED)
Handler = Annotated[
    EditServing[ReasoningEditRequest, ReasoningEditResponse],
    Depends(handler_for(ReasoningAdapter)),
]


async def read_edit_request(request: Request) -> ReasoningEditRequest:
    """The fields from a JSON body or from a form (whose image file the call carries)."""
    fields = await form_fields(request) if is_form(request) else await read_json_object(request)
    return validate_fields(ReasoningEditRequest, fields)


def _request_body_schema() -> dict[str, Any]:
    json_schema = ReasoningEditRequest.model_json_schema()
    form_schema = json.loads(json.dumps(json_schema))
    form_schema["properties"]["image"] = {"type": "string", "format": "binary"}
    form_schema["properties"]["mask"] = {
        "type": "string",
        "format": "binary",
        "description": MASK_DESCRIPTION + " A file part (or a URL, data URI or base64 text).",
    }
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
    "/",
    summary="Reasoning image edit (Step1X-Edit v1.2: thinking + reflection)",
    response_model=ReasoningEditResponse,
    responses=ERRORS.responses(400, 401, 413, 415, 429, 503),
    openapi_extra=_request_body_schema(),
)
async def edit_image(
    body: Annotated[ReasoningEditRequest, Depends(read_edit_request)],
    call: Annotated[Call, Depends(read_call_with_upload)],
    handler: Handler,
) -> ReasoningEditResponse:
    return await handler.edit(body, call)


# The seed's path ends in a slash; a client that drops it is served rather than redirected
# (a 307 on POST makes some clients resend without the body).
router.add_api_route(
    "",
    edit_image,
    methods=["POST"],
    response_model=ReasoningEditResponse,
    include_in_schema=False,
)
