"""`POST /v1/images/edits`: synchronous, multipart, the seed 002 way."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import fastapi
from fastapi import APIRouter, Depends, File, Form, Request
from starlette.datastructures import UploadFile

from stepedit.api.bodies import form_file
from stepedit.api.deps import AUTHENTICATED
from stepedit.api.protocol import MASK_DESCRIPTION
from stepedit.api.serving import CallDep, EditServing, handler_for
from stepedit.errors import InvalidInput

from .adapter import OpenAIEditsAdapter
from .errors import ERRORS
from .protocol import ImageEditForm, ImageEditResponse

router = APIRouter(prefix="/v1/images/edits", tags=["openai-edits"], dependencies=AUTHENTICATED)
Handler = Annotated[
    EditServing[ImageEditForm, ImageEditResponse], Depends(handler_for(OpenAIEditsAdapter))
]


async def read_image_file(
    request: Request,
    image: Annotated[
        fastapi.UploadFile | None,
        File(description="jpg/png/webp, 64-1728 px a side, at most 10 MB"),
    ] = None,
) -> UploadFile:
    """The one image file: `image`, or `image[]` as the `openai` client names a list of files.
    Two of them are refused rather than one edited (`image` documents the part; the form says
    how many came)."""
    form = await request.form()
    sent = [*form.getlist("image"), *form.getlist("image[]")]
    if not sent:
        raise InvalidInput("An image file is required.", param="image")
    if len(sent) > 1:
        raise InvalidInput(
            f"Exactly one image file is accepted; {len(sent)} were sent.", param="image"
        )
    if not isinstance(sent[0], UploadFile):
        raise InvalidInput("The image must be sent as a file.", param="image")
    return sent[0]


async def read_mask_file(
    request: Request,
    mask: Annotated[
        fastapi.UploadFile | None,
        File(description=MASK_DESCRIPTION + " Same format and size limits as the image."),
    ] = None,
) -> UploadFile | None:
    """The optional mask file (`mask`, as OpenAI's image edits name it); one at most, and a file
    (a text field of that name is refused rather than ignored)."""
    form = await request.form()
    sent = form.getlist("mask")
    if any(not isinstance(value, UploadFile) for value in sent):
        raise InvalidInput("The mask must be sent as a file.", param="mask")
    return await form_file(request, "mask")


@router.post(
    "",
    summary="Edit an image (StepFun step-1x-edit, OpenAI-style)",
    response_model=ImageEditResponse,
    response_model_exclude_none=True,
    responses=ERRORS.responses(400, 401, 413, 429, 503),
    # The parameter is optional in Python only because the `openai` client may send the file
    # as `image[]`; on the wire one image file is required (seed 002).
    openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"schema": {"required": ["image"]}}}}
    },
)
async def edit_image(
    form: Annotated[ImageEditForm, Form()],
    image: Annotated[UploadFile, Depends(read_image_file)],
    mask: Annotated[UploadFile | None, Depends(read_mask_file)],
    call: CallDep,
    handler: Handler,
) -> ImageEditResponse:
    return await handler.edit(form, replace(call, upload=image, mask_upload=mask))
