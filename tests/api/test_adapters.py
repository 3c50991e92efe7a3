"""Adapters and error mapping with no engine and no server: wire -> EditRequest -> wire."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from stepedit.api import errors, serving
from stepedit.api.app import FALLBACK, FLAVOURS
from stepedit.api.flavours import FlavourRegistry
from stepedit.api.generations import adapter as generations
from stepedit.api.generations.protocol import GenerationRequest
from stepedit.api.openai_edits import adapter as openai_edits
from stepedit.api.openai_edits.protocol import ImageEditForm
from stepedit.api.reasoning import adapter as reasoning
from stepedit.api.reasoning.protocol import ReasoningEditRequest
from stepedit.api.wavespeed import adapter as wavespeed
from stepedit.api.wavespeed.protocol import WavespeedEditRequest
from stepedit.errors import (
    ImageFetchError,
    InsufficientStorage,
    InvalidInput,
    JobCanceled,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import ErrorView, JobView, OutputView, ProgressView, TimingsView
from stepedit.request import VERSIONS, EditRequest, Pass
from stepedit.settings import Settings

CREATED = datetime(2023, 4, 1, 12, 34, 56, 789_123, tzinfo=UTC)


def job(
    request: EditRequest,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    outputs: int = 1,
    nsfw: bool = False,
    passes: tuple[str, ...] = (Pass.DIFFUSION,),
    error: ErrorView | None = None,
) -> JobView:
    seed = request.seed if request.seed is not None else 1234
    return JobView(
        id="job1",
        status=status,
        flavour="test",
        owner=None,
        request=request,
        seed=seed,
        created_at=CREATED,
        started_at=CREATED,
        finished_at=CREATED + timedelta(seconds=2),
        progress=ProgressView(),
        outputs=tuple(
            OutputView(
                token=f"tok{i}",
                url=f"http://testserver/files/tok{i}.png",
                seed=seed + i,
                nsfw=nsfw,
                format="png",
                width=64,
                height=64,
                expires_at=CREATED + timedelta(days=7),
            )
            for i in range(outputs if status is JobStatus.SUCCEEDED else 0)
        ),
        prompt_used=request.prompt,
        passes=passes,
        error=error,
        timings=TimingsView(inference_ms=1234.6, queue_ms=5.0, total_ms=2000.0),
        attempt=1,
        webhook_url=None,
    )


# --- wavespeed ------------------------------------------------------------------------------


def test_wavespeed_defaults_and_round_trip() -> None:
    body = WavespeedEditRequest.model_validate({"prompt": "add sunglasses", "image": "aGk="})
    request = wavespeed.to_edit_request(body)
    assert request == EditRequest(
        prompt="add sunglasses", seed=None, guidance_scale=4.0, num_inference_steps=30
    )
    data = wavespeed.to_prediction(job(request), base_url="http://h:1/")
    assert data.model_dump() == {
        "id": "job1",
        "model": "wavespeed-ai/step1x-edit",
        "outputs": ["http://testserver/files/tok0.png"],
        "urls": {"get": "http://h:1/api/v3/predictions/job1/result"},
        "has_nsfw_contents": [False],
        "status": "completed",
        "created_at": "2023-04-01T12:34:56.789Z",
        "error": "",
        "timings": {"inference": 1235},
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (JobStatus.QUEUED, "created"),
        (JobStatus.PROCESSING, "processing"),
        (JobStatus.SUCCEEDED, "completed"),
        (JobStatus.FAILED, "failed"),
        (JobStatus.CANCELED, "failed"),
    ],
)
def test_wavespeed_status_mapping(status: JobStatus, expected: str) -> None:
    data = wavespeed.to_prediction(job(EditRequest(prompt="x"), status), base_url="http://h")
    assert data.status == expected
    if expected != "completed":
        assert data.outputs == [] and data.has_nsfw_contents == []


def test_wavespeed_failure_text_and_base64_outputs() -> None:
    failed = job(EditRequest(prompt="x"), JobStatus.FAILED, error=ErrorView("internal", "boom"))
    assert wavespeed.to_prediction(failed, base_url="h").error == "boom"
    canceled = job(EditRequest(prompt="x"), JobStatus.CANCELED)
    assert wavespeed.to_prediction(canceled, base_url="h").error == "canceled"
    done = job(EditRequest(prompt="x"), nsfw=True)
    data = wavespeed.to_prediction(done, base_url="h", base64_outputs=["QUJD"])
    assert data.outputs == ["QUJD"] and data.has_nsfw_contents == [True]


def test_wavespeed_seed_and_extras() -> None:
    body = WavespeedEditRequest.model_validate(
        {"prompt": "p", "image": "x", "seed": 7, "enhance_prompt": True, "whatever": 1}
    )
    request = wavespeed.to_edit_request(body)
    assert request.seed == 7 and request.enhance_prompt is True
    assert wavespeed.to_edit_request(body.model_copy(update={"seed": -1})).seed is None
    assert wavespeed.to_edit_request(body.model_copy(update={"seed": None})).seed is None


def test_wavespeed_webhook_renderer_is_the_bare_prediction_with_its_input() -> None:
    view = dataclasses.replace(job(EditRequest(prompt="x")), wire_input={"prompt": "x"})
    rendered = wavespeed.webhook_renderer("http://h")(view)
    prediction = wavespeed.to_prediction(view, base_url="http://h").model_dump(mode="json")
    assert rendered == {**prediction, "input": {"prompt": "x"}}
    assert list(rendered)[:3] == ["id", "model", "input"]


def test_created_at_naive_is_utc() -> None:
    naive = datetime(2024, 1, 2, 3, 4, 5, 6000)
    assert wavespeed.format_created_at(naive) == "2024-01-02T03:04:05.006Z"


@pytest.mark.parametrize(
    "fields",
    [{"seed": -2}, {"guidance_scale": 21}, {"num_inference_steps": 51}, {"seed": 2**31}],
)
def test_wavespeed_ranges(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WavespeedEditRequest.model_validate({"prompt": "p", "image": "x", **fields})


# --- openai edits (seed 002) ----------------------------------------------------------------


def test_openai_edits_defaults_and_round_trip() -> None:
    form = ImageEditForm.model_validate({"model": "step-1x-edit", "prompt": "cat"})
    request = openai_edits.to_edit_request(form)
    assert request == EditRequest(
        prompt="cat",
        seed=None,
        guidance_scale=6.0,
        num_inference_steps=28,
        size_level=512,
        output_size="working",
    )
    response = openai_edits.to_response(job(request))
    assert response.model_dump(exclude_none=True) == {
        "created": int(CREATED.timestamp()),
        "data": [
            {"seed": 1234, "finish_reason": "success", "url": "http://testserver/files/tok0.png"}
        ],
    }


def test_openai_edits_form_strings_seed_zero_and_b64() -> None:
    form = ImageEditForm.model_validate(
        {"model": "step-1x-edit", "prompt": "p", "seed": "0", "steps": "20", "cfg_scale": "10.0"}
    )
    request = openai_edits.to_edit_request(form)
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (None, 20, 10.0)
    filtered = openai_edits.to_response(job(request, nsfw=True), base64_outputs=["QUJD"])
    item = filtered.model_dump(exclude_none=True)["data"][0]
    assert item == {"seed": 1234, "finish_reason": "content_filtered", "b64_json": "QUJD"}


def test_openai_edits_unknown_model() -> None:
    form = ImageEditForm.model_validate({"model": "dall-e-2", "prompt": "p"})
    with pytest.raises(InvalidInput) as info:
        openai_edits.to_edit_request(form)
    assert info.value.param == "model"


@pytest.mark.parametrize("size", ["768x768", "1024x1024"])
def test_openai_edits_size(size: str) -> None:
    form = ImageEditForm.model_validate({"model": "step-1x-edit", "prompt": "p", "size": size})
    assert openai_edits.to_edit_request(form).size_level == int(size.split("x")[0])


# --- generations (seed 003) -----------------------------------------------------------------


def test_generations_defaults_and_round_trip() -> None:
    body = GenerationRequest.model_validate(
        {"model": "stepfun-ai/step1x-edit", "prompt": "sketch", "image": "x"}
    )
    request = generations.to_edit_request(body)
    assert request == EditRequest(
        prompt="sketch",
        seed=None,
        guidance_scale=2.5,
        num_inference_steps=20,
        num_images=1,
        strength=0.8,
    )
    response = generations.to_response(job(request, outputs=2))
    assert response.model_dump() == {
        "created": int(CREATED.timestamp()),
        "data": [
            {"url": "http://testserver/files/tok0.png", "b64_json": None},
            {"url": "http://testserver/files/tok1.png", "b64_json": None},
        ],
        "usage": {"input_tokens_details": {}},
    }
    b64 = generations.to_response(job(request), base64_outputs=["QUJD"])
    assert b64.data[0].b64_json == "data:image/png;base64,QUJD" and b64.data[0].url is None


def test_generations_n_seed_strength() -> None:
    body = GenerationRequest.model_validate(
        {
            "model": "stepfun-ai/step1x-edit",
            "prompt": "p",
            "image": "x",
            "n": 4,
            "seed": 9,
            "strength": 0.3,
            "negative_prompt": "blurry",
        }
    )
    request = generations.to_edit_request(body)
    assert (request.num_images, request.seed, request.strength) == (4, 9, 0.3)
    assert request.negative_prompt == "blurry"


# --- reasoning (seed 004) -------------------------------------------------------------------


def test_reasoning_defaults_and_round_trip() -> None:
    body = ReasoningEditRequest.model_validate({"model": "step1x-edit", "prompt": "fix it"})
    request = reasoning.to_edit_request(body)
    assert request == EditRequest(prompt="fix it", num_inference_steps=50, guidance_scale=6.0)
    assert request.enable_thinking is None and request.enable_reflection is None
    passes = ("thinking", "diffusion_1", "reflection_1", "diffusion_2", "reflection_2")
    view = dataclasses.replace(
        job(request, passes=passes), prompt_used="fix the left hand's fingers"
    )
    response = reasoning.to_response(view, operation="img2img", tokens=2000)
    assert response.passes == list(passes)
    assert response.thinking.ran and response.reflection.ran
    assert response.thinking.requested is None
    assert response.prompt == "fix it" and response.prompt_used == "fix the left hand's fingers"
    assert response.seed == 1234 and response.data[0].seed == 1234
    assert response.timings["inference_ms"] == 1234.6
    assert response.usage == {"tokens": 2000}


def test_reasoning_passes_not_run_are_reported() -> None:
    body = ReasoningEditRequest.model_validate(
        {"prompt": "p", "enable_thinking": "true", "enable_reflection": "false"}
    )
    request = reasoning.to_edit_request(body)
    response = reasoning.to_response(job(request), operation="img2img", tokens=1)
    assert response.thinking.model_dump() == {"requested": True, "ran": False}
    assert response.reflection.model_dump() == {"requested": False, "ran": False}


@pytest.mark.parametrize(
    "operation", ["img2img", "edit", "style_transfer", "IMG2IMG", "inpaint", "outpaint"]
)
def test_reasoning_operations(operation: str) -> None:
    assert reasoning.check_operation(operation) == operation.lower()


@pytest.mark.parametrize("operation", ["upscale", "teleport"])
def test_reasoning_refused_operations(operation: str) -> None:
    with pytest.raises(InvalidInput) as info:
        reasoning.check_operation(operation)
    assert info.value.param == "operation"


# --- submissions and the release check ----------------------------------------------------


def test_refusals_name_the_wire_field() -> None:
    body = GenerationRequest.model_validate(
        {"model": "stepfun-ai/step1x-edit", "prompt": "p", "image": "x", "n": 2}
    )
    submission = generations.GenerationsAdapter(Settings()).to_submission(
        body, serving.Call(owner=None)
    )
    assert serving.check_runnable(submission.request, VERSIONS["v1.1"], submission.wire_names)
    with pytest.raises(errors.InvalidField) as info:  # v1.2 reflects by default: one image
        serving.check_runnable(submission.request, VERSIONS["v1.2"], submission.wire_names)
    assert info.value.param == "n" and info.value.message.startswith("n: must be 1")


@pytest.mark.parametrize(
    ("wire_names", "model"),
    [
        (openai_edits.WIRE_NAMES, ImageEditForm),
        (generations.WIRE_NAMES, GenerationRequest),
        (reasoning.WIRE_NAMES, ReasoningEditRequest),
    ],
)
def test_wire_names_name_real_fields(wire_names: dict[str, str], model: type[Any]) -> None:
    request_fields = {f.name for f in dataclasses.fields(EditRequest)}
    for internal, wire in wire_names.items():
        assert internal in request_fields and wire in model.model_fields


def test_wavespeed_submission() -> None:
    adapter = wavespeed.WavespeedAdapter(Settings())
    body = WavespeedEditRequest.model_validate(
        {"prompt": "p", "image": "aGk=", "enable_sync_mode": True, "enable_base64_output": True}
    )
    submission = adapter.to_submission(body, serving.Call(owner=None))
    assert submission.wait_s == wavespeed.SYNC_WAIT_S and submission.base64_outputs
    assert not submission.raise_unless_succeeded  # a failed prediction is reported in `data`
    with pytest.raises(InvalidInput) as info:
        adapter.to_submission(body, serving.Call(owner=None, webhook_url="https://h/hook"))
    assert info.value.param == "enable_base64_output"


def test_openai_edits_submission_uses_the_seed_rules() -> None:
    form = ImageEditForm.model_validate(
        {"model": "step-1x-edit", "prompt": "p", "response_format": "b64_json"}
    )
    submission = openai_edits.OpenAIEditsAdapter(Settings()).to_submission(
        form, serving.Call(owner=None)
    )
    assert submission.image_rules.max_side == 1728 and submission.base64_outputs
    assert submission.wait_s is not None and submission.image is None  # the upload: none here


# --- error mapping ---------------------------------------------------------------------------

FLAVOUR_REGISTRY = FlavourRegistry(FLAVOURS, fallback=FALLBACK)


def shape(name: str) -> Any:
    return FLAVOUR_REGISTRY[name].errors


@pytest.mark.parametrize(
    ("exc", "flavour", "status"),
    [
        (InvalidInput("x"), "wavespeed", 400),
        (PayloadTooLarge("x"), "openai_edits", 413),
        (UnsupportedMediaType("x"), "openai_edits", 400),
        (UnsupportedMediaType("x"), "generations", 400),
        (UnsupportedMediaType("x"), "wavespeed", 400),
        (UnsupportedMediaType("x"), "reasoning", 415),
        (UnsupportedMediaType("x"), "native", 415),
        (errors.InvalidField("x"), "native", 422),
        (errors.InvalidField("x"), "reasoning", 400),
        (errors.InvalidField("x"), "generations", 400),
        (ImageFetchError("x"), "wavespeed", 400),
        (Unauthorized("x"), "reasoning", 401),
        (NotFound("x"), "wavespeed", 404),
        (QueueFull("x"), "generations", 429),
        (ServiceUnavailable("x"), "native", 503),
        (InsufficientStorage("x"), "wavespeed", 507),
        (JobCanceled("x"), "openai_edits", 409),
        (errors.SyncTimeout("x"), "openai_edits", 504),
        (errors.JobFailed("x"), "openai_edits", 500),
        (RuntimeError("secret detail"), "wavespeed", 500),
    ],
)
def test_status_mapping(exc: Exception, flavour: str, status: int) -> None:
    error = errors.to_http_error(exc)
    assert shape(flavour).status(error.status) == status
    if isinstance(exc, RuntimeError):
        assert "secret" not in error.message


def test_retry_after_on_busy() -> None:
    assert errors.to_http_error(QueueFull("busy")).headers == {"Retry-After": "5"}
    assert errors.to_http_error(InsufficientStorage("full")).headers == {"Retry-After": "60"}


def test_error_bodies_per_flavour() -> None:
    error = errors.to_http_error(InvalidInput("bad steps", param="steps"))
    assert shape("wavespeed").body(error, "req_1") == {"code": 400, "message": "bad steps"}
    assert shape("openai_edits").body(error, "req_1") == {
        "error": {
            "message": "bad steps",
            "type": "invalid_request_error",
            "param": "steps",
            "code": "invalid_request",
        }
    }
    assert shape("generations").body(error, "req_1")["error"]["param"] == "req_1"
    for flavour in ("reasoning", "native"):
        assert shape(flavour).body(error, "req_1") == {
            "error": {"code": "invalid_request", "message": "bad steps", "param": "steps"}
        }


def test_wavespeed_body_carries_the_status_it_answers() -> None:
    error = errors.to_http_error(errors.InvalidField("steps: too many", param="steps"))
    assert error.status == 422
    assert shape("wavespeed").body(error, "req_1") == {"code": 400, "message": "steps: too many"}


def test_validation_errors_name_the_field() -> None:
    try:
        WavespeedEditRequest.model_validate({"prompt": "p", "image": "x", "seed": -5})
    except ValidationError as exc:
        validation = RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        )
    error = errors.to_http_error(validation)
    assert (error.status, error.param) == (422, "seed")
    assert error.message.startswith("seed: ")
    assert shape("wavespeed").status(error.status) == 400
    assert shape("native").status(error.status) == 422


@pytest.mark.parametrize(
    ("path", "flavour"),
    [
        ("/api/v3/wavespeed-ai/step1x-edit", "wavespeed"),
        ("/api/v3/predictions/x/result", "wavespeed"),
        ("/v1/images/edits", "openai_edits"),
        ("/v1/images/generations", "generations"),
        ("/v1/image/edit/", "reasoning"),
        ("/v1/image/edit", "reasoning"),
        ("/v1/jobs", "native"),
        ("/v1/prompt/enhance", "native"),
        ("/files/abc.png", "native"),
        ("/health", "native"),
        ("/v1/images/editsX", "native"),
    ],
)
def test_flavour_for_path(path: str, flavour: str) -> None:
    assert FLAVOUR_REGISTRY.for_path(path).name == flavour


def test_the_registry_refuses_two_flavours_on_one_prefix() -> None:
    twin = dataclasses.replace(FLAVOUR_REGISTRY["wavespeed"], name="wavespeed_twin")
    with pytest.raises(ValueError, match="share"):
        FlavourRegistry([*FLAVOURS, twin], fallback=FALLBACK)


def test_job_failure() -> None:
    assert isinstance(serving.job_failure("payload_too_large", "big"), PayloadTooLarge)
    assert isinstance(serving.job_failure("invalid_request", "bad"), InvalidInput)
    failed = serving.job_failure("internal_error", "the edit failed")
    assert isinstance(failed, errors.JobFailed) and failed.code == "internal_error"
    canceled = serving.job_failure(None, None, canceled=True)
    assert isinstance(canceled, JobCanceled) and "canceled" in canceled.message


@pytest.mark.parametrize(
    ("code", "message", "param", "wire_message"),
    [
        # the worker's InvalidInput messages start with the EditRequest field...
        ("invalid_request", "prompt: too long for v1.2", "prompt", "prompt: too long for v1.2"),
        # ...named as the flavour names it
        ("invalid_request", "num_inference_steps: at most 50", "steps", "steps: at most 50"),
        # image errors name the image
        ("unsupported_media_type", "Image format 'gif' is not supported.", "image", None),
        ("payload_too_large", "The image is too large.", "image", None),
    ],
)
def test_a_job_failed_for_its_input_names_the_field(
    code: str, message: str, param: str, wire_message: str | None
) -> None:
    error = serving.job_failure(code, message, wire_names={"num_inference_steps": "steps"})
    assert isinstance(error, InvalidInput)
    assert error.param == param
    assert error.message == (wire_message or message)


@pytest.mark.parametrize(
    ("loc", "error_type", "param"),
    [
        (("body", "seed"), "int_parsing", "seed"),
        (("body", "loras", 0, "scale"), "float_parsing", "loras.0.scale"),
        (("query", "limit"), "greater_than_equal", "limit"),
        (("header", "idempotency-key"), "string_too_long", "idempotency-key"),
        (("path", "job_id"), "string_too_long", "job_id"),
        (("body",), "missing", "body"),
        (("body", 17), "json_invalid", "body"),
    ],
)
def test_every_validation_error_names_its_param(
    loc: tuple[Any, ...], error_type: str, param: str
) -> None:
    error = errors.from_validation_errors([{"loc": loc, "type": error_type, "msg": "bad"}])
    assert error.param == param
    assert error.message.startswith(f"{param}: ")
