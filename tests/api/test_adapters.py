"""Adapters and error mapping with no engine and no server: wire -> EditRequest -> wire."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from stepedit.api import errors
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
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import ErrorView, JobView, OutputView, ProgressView, TimingsView
from stepedit.request import EditRequest

CREATED = datetime(2023, 4, 1, 12, 34, 56, 789_123, tzinfo=UTC)


def job(
    request: EditRequest,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    outputs: int = 1,
    nsfw: bool = False,
    passes: tuple[str, ...] = ("edit",),
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
    request = wavespeed.to_edit_request(body, "add sunglasses")
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
    request = wavespeed.to_edit_request(body, "p")
    assert request.seed == 7 and request.enhance_prompt is True
    assert wavespeed.to_edit_request(body.model_copy(update={"seed": -1}), "p").seed is None
    assert wavespeed.to_edit_request(body.model_copy(update={"seed": None}), "p").seed is None


def test_wavespeed_webhook_renderer_is_the_result_object() -> None:
    view = job(EditRequest(prompt="x"))
    rendered = wavespeed.webhook_renderer("http://h")(view)
    assert rendered == {
        "code": 200,
        "message": "success",
        "data": wavespeed.to_prediction(view, base_url="http://h").model_dump(mode="json"),
    }


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
    request = openai_edits.to_edit_request(form, "cat")
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
    request = openai_edits.to_edit_request(form, "p")
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (None, 20, 10.0)
    filtered = openai_edits.to_response(job(request, nsfw=True), base64_outputs=["QUJD"])
    item = filtered.model_dump(exclude_none=True)["data"][0]
    assert item == {"seed": 1234, "finish_reason": "content_filtered", "b64_json": "QUJD"}


def test_openai_edits_unknown_model() -> None:
    form = ImageEditForm.model_validate({"model": "dall-e-2", "prompt": "p"})
    with pytest.raises(InvalidInput) as info:
        openai_edits.to_edit_request(form, "p")
    assert info.value.param == "model"


@pytest.mark.parametrize("size", ["768x768", "1024x1024"])
def test_openai_edits_size(size: str) -> None:
    form = ImageEditForm.model_validate({"model": "step-1x-edit", "prompt": "p", "size": size})
    assert openai_edits.to_edit_request(form, "p").size_level == int(size.split("x")[0])


# --- generations (seed 003) -----------------------------------------------------------------


def test_generations_defaults_and_round_trip() -> None:
    body = GenerationRequest.model_validate(
        {"model": "stepfun-ai/step1x-edit", "prompt": "sketch", "image": "x"}
    )
    request = generations.to_edit_request(body, "sketch")
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
    request = generations.to_edit_request(body, "p")
    assert (request.num_images, request.seed, request.strength) == (4, 9, 0.3)
    assert request.negative_prompt == "blurry"


# --- reasoning (seed 004) -------------------------------------------------------------------


def test_reasoning_defaults_and_round_trip() -> None:
    body = ReasoningEditRequest.model_validate({"model": "step1x-edit", "prompt": "fix it"})
    request = reasoning.to_edit_request(body, "fix it")
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
    request = reasoning.to_edit_request(body, "p")
    response = reasoning.to_response(job(request), operation="img2img", tokens=1)
    assert response.thinking.model_dump() == {"requested": True, "ran": False}
    assert response.reflection.model_dump() == {"requested": False, "ran": False}


@pytest.mark.parametrize("operation", ["img2img", "edit", "style_transfer", "IMG2IMG"])
def test_reasoning_instruction_operations(operation: str) -> None:
    assert reasoning.check_operation(operation) == operation.lower()


@pytest.mark.parametrize("operation", ["inpaint", "outpaint", "upscale"])
def test_reasoning_refused_operations(operation: str) -> None:
    with pytest.raises(InvalidInput) as info:
        reasoning.check_operation(operation)
    assert info.value.param == "operation"


# --- error mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "flavour", "status"),
    [
        (InvalidInput("x"), "wavespeed", 400),
        (PayloadTooLarge("x"), "openai_edits", 413),
        (UnsupportedMediaType("x"), "openai_edits", 400),
        (UnsupportedMediaType("x"), "generations", 400),
        (UnsupportedMediaType("x"), "reasoning", 415),
        (UnsupportedMediaType("x"), "native", 415),
        (ImageFetchError("x"), "wavespeed", 400),
        (Unauthorized("x"), "reasoning", 401),
        (NotFound("x"), "wavespeed", 404),
        (QueueFull("x"), "generations", 429),
        (ServiceUnavailable("x"), "native", 503),
        (errors.SyncTimeout("x"), "openai_edits", 504),
        (errors.JobFailed("x"), "openai_edits", 500),
        (RuntimeError("secret detail"), "wavespeed", 500),
    ],
)
def test_status_mapping(exc: Exception, flavour: errors.Flavour, status: int) -> None:
    error = errors.to_http_error(exc, flavour)
    assert error.status == status
    if isinstance(exc, RuntimeError):
        assert "secret" not in error.message


def test_retry_after_on_busy() -> None:
    assert errors.to_http_error(QueueFull("busy"), "wavespeed").headers == {"Retry-After": "5"}


def test_error_bodies_per_flavour() -> None:
    error = errors.to_http_error(InvalidInput("bad steps", param="steps"), "wavespeed")
    assert errors.error_body(error, "wavespeed") == {"code": 400, "message": "bad steps"}
    assert errors.error_body(error, "openai_edits") == {
        "error": {
            "message": "bad steps",
            "type": "invalid_request_error",
            "param": "steps",
            "code": "invalid_request",
        }
    }
    assert errors.error_body(error, "generations", request_id="req_1")["error"]["param"] == "req_1"
    for flavour in ("reasoning", "native"):
        assert errors.error_body(error, flavour) == {
            "error": {"code": "invalid_request", "message": "bad steps", "param": "steps"}
        }


def test_validation_errors_name_the_field() -> None:
    try:
        WavespeedEditRequest.model_validate({"prompt": "p", "image": "x", "seed": -5})
    except ValidationError as exc:
        validation = RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        )
    error = errors.to_http_error(validation, "wavespeed")
    assert (error.status, error.param) == (400, "seed")
    assert error.message.startswith("seed: ")
    assert errors.to_http_error(validation, "native").status == 422


@pytest.mark.parametrize(
    ("path", "flavour"),
    [
        ("/api/v3/wavespeed-ai/step1x-edit", "wavespeed"),
        ("/api/v3/predictions/x/result", "wavespeed"),
        ("/v1/images/edits", "openai_edits"),
        ("/v1/images/generations", "generations"),
        ("/v1/image/edit/", "reasoning"),
        ("/v1/jobs", "native"),
    ],
)
def test_flavour_for_path(path: str, flavour: str) -> None:
    assert errors.flavour_for_path(path) == flavour


def test_job_failure() -> None:
    assert isinstance(errors.job_failure("payload_too_large", "big"), PayloadTooLarge)
    assert isinstance(errors.job_failure("invalid_request", "bad"), InvalidInput)
    failed = errors.job_failure("internal_error", "the edit failed")
    assert isinstance(failed, errors.JobFailed) and failed.code == "internal_error"
    assert "canceled" in errors.job_failure(None, None, canceled=True).message
