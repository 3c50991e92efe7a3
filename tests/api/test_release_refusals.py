"""Requests the serving release cannot run are refused at submit, in each flavour's error shape
with the field named, before anything is fetched, queued or charged to a quota.

The server declares its release (`model_version`); the fake editor stands in for the model.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

PATHS = {
    "wavespeed": "/api/v3/wavespeed-ai/step1x-edit",
    "openai_edits": "/v1/images/edits",
    "generations": "/v1/images/generations",
    "reasoning": "/v1/image/edit/",
    "native": "/v1/jobs",
}
MODEL_FIELD = {
    "openai_edits": {"model": "step-1x-edit"},
    "generations": {"model": "stepfun-ai/step1x-edit"},
    "reasoning": {"model": "step1x-edit"},
}
TOKENS_PER_EDIT = 1000


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png()).decode()


def send(
    client: TestClient,
    flavour: str,
    *,
    image: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """An edit on `flavour`, the image sent the flavour's way (a file for the multipart ones,
    unless `image` is a string to send instead)."""
    body = {**MODEL_FIELD.get(flavour, {}), "prompt": "make it blue", **fields}
    if flavour in ("openai_edits", "native") and image is None:
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
        files = {"image": ("a.png", png(), "image/png")}
        return client.post(PATHS[flavour], data=form, files=files, headers=headers)
    return client.post(PATHS[flavour], json={**body, "image": image or data_uri()}, headers=headers)


def error_of(response: httpx.Response, flavour: str, status: int) -> tuple[str | None, str]:
    """(param, message) of an error answered in `flavour`'s shape."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if flavour == "wavespeed":
        assert set(body) == {"code", "message"} and body["code"] == status
        return None, body["message"]
    error = body["error"]
    if flavour in ("openai_edits", "generations"):
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    else:
        assert set(error) == {"code", "message", "param"}
    assert error["code"] == "invalid_request"
    if flavour == "generations":  # seed 003: error.param is the request id
        assert error["param"] == response.headers["x-request-id"]
        return None, error["message"]
    return error["param"], error["message"]


def assert_refused(response: httpx.Response, flavour: str, wire_field: str, says: str = "") -> None:
    status = 422 if flavour == "native" else 400
    param, message = error_of(response, flavour, status)
    if flavour not in ("wavespeed", "generations"):  # no param; seed 003's is the request id
        assert param == wire_field
    assert message.startswith(f"{wire_field}:"), message
    assert says in message


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """`serve(version, **settings)`: a client of an app declaring that release, its queue
    served by the fake editor."""
    stack: list[tuple[TestClient, InProcessWorker, JobService]] = []

    def start(version: str, **overrides: Any) -> TestClient:
        settings = Settings(
            model="fake",
            model_version=version,
            data_dir=tmp_path / f"data-{len(stack)}",
            safety_checker=False,
            public_base_url="http://testserver",
            tokens_per_edit=TOKENS_PER_EDIT,
            **overrides,
        )
        service = JobService(settings)
        editor = FakeEditor()
        worker = InProcessWorker(service, lambda: editor, poll_s=0.05)
        worker.start()
        deadline = time.monotonic() + 5
        while not service.is_ready and time.monotonic() < deadline:
            time.sleep(0.01)
        client = TestClient(create_app(settings, service))
        client.__enter__()
        stack.append((client, worker, service))
        return client

    yield start
    for client, worker, service in stack:
        client.__exit__(None, None, None)
        worker.stop()
        service.close()


def assert_nothing_queued(client: TestClient) -> None:
    assert client.get("/v1/jobs").json()["data"] == []
    assert "stepedit_jobs_submitted_total{" not in client.get("/metrics").text


@pytest.mark.parametrize("flavour", list(PATHS))
@pytest.mark.parametrize("field", ["enable_thinking", "enable_reflection"])
def test_reasoning_passes_on_a_v11_server(
    serve: Callable[..., TestClient], flavour: str, field: str
) -> None:
    client = serve("v1.1", daily_token_quota=TOKENS_PER_EDIT)
    assert_refused(send(client, flavour, **{field: True}), flavour, field, "v1.2")
    assert_nothing_queued(client)
    # the quota is untouched: the one edit it allows still runs
    allowed = send(client, flavour, **{field: False})
    assert allowed.status_code in (200, 202), allowed.text
    assert send(client, flavour).status_code == 429  # and it is a live quota


@pytest.mark.parametrize(
    ("flavour", "wire_field"), [("generations", "n"), ("native", "num_images")]
)
def test_reflection_with_several_images_on_a_v12_server(
    serve: Callable[..., TestClient], flavour: str, wire_field: str
) -> None:
    client = serve("v1.2")
    two_images: dict[str, Any] = {wire_field: 2}
    # reflection is on by default on v1.2, and picks one image per chain
    assert_refused(send(client, flavour, **two_images), flavour, wire_field, "reflection")
    assert_nothing_queued(client)
    allowed = send(client, flavour, **two_images, enable_reflection=False)
    assert allowed.status_code in (200, 202), allowed.text


def test_a_release_the_server_does_not_run(serve: Callable[..., TestClient]) -> None:
    client = serve("v1.1")
    assert_refused(send(client, "native", model="v1.2"), "native", "model", "v1.1")
    assert_refused(send(client, "native", model="v9"), "native", "model", "names no")
    assert_nothing_queued(client)
    assert send(client, "native", model="step1x-edit-v1.1").status_code == 202


@pytest.mark.parametrize("flavour", ["wavespeed", "generations", "reasoning", "native"])
def test_refused_before_the_image_is_fetched(
    serve: Callable[..., TestClient], flavour: str
) -> None:
    client = serve("v1.1")
    # A blocked URL would be an image error; the release's refusal comes first.
    response = send(client, flavour, image="http://127.0.0.1:1/a.png", enable_thinking=True)
    assert_refused(response, flavour, "enable_thinking")


def test_a_refused_idempotency_key_stays_free(serve: Callable[..., TestClient]) -> None:
    client = serve("v1.1")
    key = {"Idempotency-Key": "order-7"}
    refused = send(client, "wavespeed", headers=key, enable_thinking=True)
    assert refused.status_code == 400
    accepted = send(client, "wavespeed", headers=key)
    assert accepted.status_code == 200, accepted.text
    job_id = accepted.json()["data"]["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["request"]["enable_thinking"] is None


def test_an_unknown_release_checks_only_the_release_free_rules(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(None)  # a model whose release is not known until it loads
    response = send(client, "native", enable_thinking=True)
    assert response.status_code == 202, response.text
