"""The steps every edit endpoint takes, written once (as vLLM's serving layer).

A flavour's router fetches its handler (`EditServing` over the flavour's adapter) and calls
`edit(body, call)`, which runs:

    1. convert      the adapter reads the wire request: an EditRequest, the image (and mask)
                    source, the webhook, and how to answer (wait or not, base64 outputs or URLs)
    2. validate     against the release this server (or the fleet's route) runs, and the LoRA
                    adapters it loaded: a request it cannot run is refused now, in the
                    flavour's error shape with `param` set, before anything is fetched, queued
                    or charged to a quota
    3. inputs       the webhook URL checked, the image fetched/decoded under the flavour's rules,
                    the mask and an outpaint's canvas checked against it (`check_edit_area`)
    4. submit       one queued job
    5. wait         synchronous answers wait for it; a job that did not succeed is an error
                    response (wavespeed's sync mode reports it in its body instead)
    6. outputs      read inline as base64 where the caller asked for them
    7. respond      the adapter's response
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Depends, Header
from starlette.datastructures import UploadFile

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import InvalidField, JobFailed, SyncTimeout
from stepedit.errors import (
    ImageFetchError,
    InvalidInput,
    JobCanceled,
    PayloadTooLarge,
    StepEditError,
    UnsupportedMediaType,
)
from stepedit.inputs import (
    DEFAULT_RULES,
    DecodedImage,
    FetchPolicy,
    ImageRules,
    check_callback_url,
    check_edit_area,
    decode_image,
    fetch_policy_from_settings,
    read_source,
    rules_from_settings,
)
from stepedit.jobs.service import JobService
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest, VersionSpec
from stepedit.settings import Settings

# An image as it arrives: a string (URL, data URI, base64), an uploaded file, bytes the
# adapter made itself, or None when the caller sent none.
ImageSource = str | UploadFile | bytes | None

WireT = TypeVar("WireT")
ResponseT = TypeVar("ResponseT")
WireT_contra = TypeVar("WireT_contra", contravariant=True)
ResponseT_co = TypeVar("ResponseT_co", covariant=True)


@dataclass(frozen=True)
class Call:
    """What an edit call brings besides its fields: who asks, and what came beside the body."""

    owner: str | None
    idempotency_key: str | None = None
    upload: UploadFile | None = None  # the multipart image file
    mask_upload: UploadFile | None = None  # the multipart mask file
    webhook_url: str | None = None  # a webhook given outside the body (wavespeed's ?webhook=)


@dataclass(frozen=True)
class Submission:
    """A wire request as its adapter reads it: what to run, on which image, how to answer."""

    request: EditRequest
    image: ImageSource
    image_rules: ImageRules = DEFAULT_RULES  # the flavour's; the settings may tighten them
    mask: ImageSource = None  # white = may change (docs/regions.md); checked as images are
    webhook_url: str | None = None
    webhook_param: str = "webhook"  # the wire field that carried it
    wait_s: float | None = None  # synchronous: wait this long for the job; None: answer now
    raise_unless_succeeded: bool = True  # after waiting: a failed job is an error response
    base64_outputs: bool = False
    # EditRequest field -> the wire's name for it, where they differ (for `param` in errors)
    wire_names: Mapping[str, str] = field(default_factory=dict)
    # The request as the client sent it, stored with the job for flavours that echo it
    # (wavespeed's webhook `input`); JobView.wire_input gives it back.
    wire_input: Mapping[str, Any] | None = None


class EditAdapter(Protocol[WireT_contra, ResponseT_co]):
    """A flavour's converter between its wire models and EditRequest / JobView."""

    @property
    def flavour(self) -> str: ...

    def to_submission(self, body: WireT_contra, call: Call) -> Submission: ...

    def to_response(
        self, body: WireT_contra, view: JobView, base64_outputs: list[str] | None
    ) -> ResponseT_co: ...


class EditServing(Generic[WireT, ResponseT]):
    """One flavour's edit handler: the steps above, over its adapter."""

    def __init__(
        self, adapter: EditAdapter[WireT, ResponseT], jobs: JobService, settings: Settings
    ) -> None:
        self.adapter = adapter
        self.jobs = jobs
        self.settings = settings

    async def edit(self, body: WireT, call: Call) -> ResponseT:
        submission = self.adapter.to_submission(body, call)
        view = await self.submit(submission, call)
        if submission.wait_s is not None:
            view = await self.jobs.wait(view.id, call.owner, submission.wait_s)
            if submission.raise_unless_succeeded:
                raise_unless_succeeded(view, submission.wait_s, submission.wire_names)
        outputs = None
        if submission.base64_outputs and view.status is JobStatus.SUCCEEDED:
            outputs = await outputs_base64(self.jobs, view)
        return self.adapter.to_response(body, view, outputs)

    async def submit(self, submission: Submission, call: Call) -> JobView:
        """Steps 2 to 4: validate, check the inputs, queue."""
        request = check_runnable(
            submission.request, self.jobs.version_spec(submission.request), submission.wire_names
        )
        self.jobs.check_loras(request)
        policy = fetch_policy_from_settings(self.settings)
        webhook_url = None
        if submission.webhook_url:
            webhook_url = await check_callback_url(
                submission.webhook_url, policy, param=submission.webhook_param
            )
        rules = rules_from_settings(self.settings, submission.image_rules)
        image = await load_image(submission.image, rules, policy)
        sent_mask = await read_sent(submission.mask, rules.max_bytes, policy, param="mask")
        mask = await asyncio.to_thread(check_edit_area, image.size, request, sent_mask, rules)
        return await self.jobs.submit(
            request,
            await asyncio.to_thread(image.to_png_bytes),
            mask=mask,
            owner=call.owner,
            flavour=self.adapter.flavour,
            webhook_url=webhook_url,
            idempotency_key=call.idempotency_key,
            wire_input=submission.wire_input,
        )


def check_runnable(
    request: EditRequest, spec: VersionSpec | None, wire_names: Mapping[str, str]
) -> EditRequest:
    """`request` validated against the release `spec` (None: not known yet, so only the
    release-independent rules); a refusal names the wire's field."""
    try:
        return request.validate(spec)
    except InvalidInput as exc:
        param, message = in_wire_names(exc.param, exc.message, wire_names)
        raise InvalidField(message, param=param) from None


def in_wire_names(
    param: str | None, message: str, wire_names: Mapping[str, str]
) -> tuple[str | None, str]:
    """An error's field and message ("guidance_scale: ...") under the wire's name for the field
    ("cfg_scale: ...")."""
    if param is None or param not in wire_names:
        return param, message
    wire = wire_names[param]
    if message.startswith(f"{param}:"):
        message = wire + message[len(param) :]
    return wire, message


async def load_image(source: ImageSource, rules: ImageRules, policy: FetchPolicy) -> DecodedImage:
    """The image decoded and checked under `rules`."""
    data = await read_sent(source, rules.max_bytes, policy, param="image")
    if data is None:
        raise InvalidInput("An image is required (a file, URL, data URI or base64).", param="image")
    return await asyncio.to_thread(decode_image, data, rules, param="image")


async def read_sent(
    source: ImageSource, max_bytes: int, policy: FetchPolicy, *, param: str
) -> bytes | None:
    """The bytes of an image or mask as sent: an upload, or a URL (fetched under `policy`), data
    URI or base64 string; at most `max_bytes`, not decoded yet. None when none was sent."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return None
    if isinstance(source, str):
        return await read_source(source, max_bytes, policy, param=param)
    if isinstance(source, bytes):
        return source
    return await read_upload(source, max_bytes, param=param)


async def read_upload(upload: UploadFile, max_bytes: int, *, param: str = "image") -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The {param} is larger than the limit of {max_bytes} bytes.", param=param
        )
    return data


_PARAM_PREFIX = re.compile(r"([a-z_][a-z0-9_]*): ")  # InvalidInput messages name their field
_INPUT_ERRORS: dict[str, type[InvalidInput]] = {
    cls.code: cls for cls in (InvalidInput, UnsupportedMediaType, PayloadTooLarge, ImageFetchError)
}


def raise_unless_succeeded(
    view: JobView, waited_s: float, wire_names: Mapping[str, str] | None = None
) -> None:
    """For synchronous answers: raise unless `view` (after waiting `waited_s`) succeeded."""
    if view.status is JobStatus.SUCCEEDED:
        return
    if not view.is_terminal:
        raise SyncTimeout(f"The edit did not finish within {waited_s:g} s (job {view.id}).")
    raise job_failure(
        view.error.code if view.error else None,
        view.error.message if view.error else None,
        canceled=view.status is JobStatus.CANCELED,
        wire_names=wire_names or {},
    )


def job_failure(
    code: str | None,
    message: str | None,
    *,
    canceled: bool = False,
    wire_names: Mapping[str, str] | None = None,
) -> StepEditError:
    """The exception for a job that did not succeed: canceled by its owner (409), the input's
    fault when the worker said so (400, the field named as the wire names it), otherwise a
    failure of the service (500)."""
    if canceled:
        return JobCanceled("The job was canceled before it finished.")
    error_class = _INPUT_ERRORS.get(code or "")
    if error_class is not None:
        param, text = in_wire_names(
            failed_param(error_class, message), message or "Invalid input.", wire_names or {}
        )
        return error_class(text, param=param)
    error = JobFailed(message or "The edit failed.")
    if code:
        error.code = code
    return error


def failed_param(error_class: type[InvalidInput], message: str | None) -> str | None:
    """The field a worker refused: a job keeps its error's code and message, not its `param`,
    so it is read back from the message ("prompt: ..."); an image error names the image."""
    match = _PARAM_PREFIX.match(message or "")
    if match:
        return match.group(1)
    return None if error_class is InvalidInput else "image"


def read_outputs_base64(jobs: JobService, view: JobView) -> list[str]:
    """The job's output files, base64-encoded, in output order (blocking file reads)."""
    return [
        base64.b64encode(jobs.output_path(output.token).read_bytes()).decode()
        for output in view.outputs
    ]


async def outputs_base64(jobs: JobService, view: JobView) -> list[str]:
    return await asyncio.to_thread(read_outputs_base64, jobs, view)


# ------------------------------------------------------------------ FastAPI dependencies


async def read_call(
    owner: Owner, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
) -> Call:
    return Call(owner=owner, idempotency_key=idempotency_key)


CallDep = Annotated[Call, Depends(read_call)]


def handler_for(
    make_adapter: Callable[[Settings], EditAdapter[WireT, ResponseT]],
) -> Callable[[JobService, Settings], EditServing[WireT, ResponseT]]:
    """A dependency giving a route its flavour's handler."""

    def handler(jobs: Jobs, settings: AppSettings) -> EditServing[WireT, ResponseT]:
        return EditServing(make_adapter(settings), jobs, settings)

    return handler
