"""The request-body limit answers oversized bodies before any route reads them: 413 in the
flavour's shape, whether the body says its length or comes in chunks, as JSON or multipart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from stepedit.api.app import create_app
from stepedit.api.limits import body_limit_for
from stepedit.jobs.service import JobService
from stepedit.settings import Settings


def test_oversized_json_body_is_refused_in_the_flavours_shape(
    client: TestClient, settings: Settings
) -> None:
    too_big = "A" * (body_limit_for(settings.max_upload_bytes) + 1)
    response = client.post(
        "/v1/images/generations",
        json={"model": "stepfun-ai/step1x-edit", "prompt": "x", "image": too_big},
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_oversized_wavespeed_body_gets_the_wavespeed_shape(
    client: TestClient, settings: Settings
) -> None:
    too_big = "A" * (body_limit_for(settings.max_upload_bytes) + 1)
    response = client.post(
        "/api/v3/wavespeed-ai/step1x-edit", json={"prompt": "x", "image": too_big}
    )
    assert response.status_code == 413
    assert response.json()["code"] == 413


def test_a_body_just_under_the_limit_reaches_the_route(
    client: TestClient, settings: Settings
) -> None:
    # Not an image, so the route itself answers 400: the limit let it through.
    almost = "A" * (settings.max_upload_bytes)
    response = client.post(
        "/v1/images/generations",
        json={"model": "stepfun-ai/step1x-edit", "prompt": "x", "image": almost},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] != "payload_too_large"


# ----------------------------------------------------------------- bodies without a length

SMALL_UPLOAD_BYTES = 32 * 1024  # a limit of about 300 kB: quick to pass on two cores
JSON_ROUTES = {
    "wavespeed": ("/api/v3/wavespeed-ai/step1x-edit", {}),
    "generations": ("/v1/images/generations", {"model": "stepfun-ai/step1x-edit"}),
    "reasoning": ("/v1/image/edit/", {"model": "step1x-edit"}),
    "native": ("/v1/jobs", {}),
}
FORM_ROUTES = {
    "openai_edits": ("/v1/images/edits", {"model": "step-1x-edit"}),
    "reasoning": ("/v1/image/edit/", {"model": "step1x-edit"}),
    "native": ("/v1/jobs", {}),
}


@pytest.fixture
def small_limit_client(tmp_path: Path) -> Iterator[TestClient]:
    """An app whose body limit is small (no worker: nothing over the limit reaches the queue)."""
    settings = Settings(
        model="fake",
        data_dir=tmp_path / "small",
        safety_checker=False,
        public_base_url="http://testserver",
        max_upload_bytes=SMALL_UPLOAD_BYTES,
    )
    service = JobService(settings)
    with TestClient(create_app(settings, service), raise_server_exceptions=True) as client:
        yield client
    service.close()


def chunked(*parts: bytes, filler: int) -> Iterator[bytes]:
    """A body sent in chunks with no Content-Length: `parts[0]`, `filler` bytes of "A" in 64 kB
    chunks, then the other parts."""
    yield parts[0]
    for start in range(0, filler, 64 * 1024):
        yield b"A" * min(64 * 1024, filler - start)
    yield from parts[1:]


def json_body(fields: dict[str, Any], filler: int) -> Iterator[bytes]:
    head = json.dumps({**fields, "prompt": "x"})[:-1].encode() + b', "image": "'
    return chunked(head, b'"}', filler=filler)


def form_body(fields: dict[str, Any], filler: int) -> tuple[Iterator[bytes], str]:
    boundary = "stepedit-limit-test"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in {**fields, "prompt": "x"}.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return chunked(head, tail, filler=filler), f"multipart/form-data; boundary={boundary}"


def assert_too_large(response: httpx.Response, flavour: str) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["connection"] == "close"
    body = response.json()
    if flavour == "wavespeed":
        assert body == {"code": 413, "message": body["message"]}
        return
    error = body["error"]
    assert error["code"] == "payload_too_large"
    if flavour == "generations":  # seed 003: param is the request id
        assert error["param"] == response.headers["x-request-id"]
    else:
        assert error["param"] == "image"


@pytest.mark.parametrize("flavour", list(JSON_ROUTES))
def test_a_chunked_json_body_over_the_limit_is_413_in_the_flavours_shape(
    small_limit_client: TestClient, flavour: str
) -> None:
    path, fields = JSON_ROUTES[flavour]
    limit = body_limit_for(SMALL_UPLOAD_BYTES)
    response = small_limit_client.post(
        path,
        content=json_body(fields, filler=limit + 1),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_too_large(response, flavour)


@pytest.mark.parametrize("flavour", list(FORM_ROUTES))
def test_a_chunked_multipart_body_over_the_limit_is_413_in_the_flavours_shape(
    small_limit_client: TestClient, flavour: str
) -> None:
    path, fields = FORM_ROUTES[flavour]
    body, content_type = form_body(fields, filler=body_limit_for(SMALL_UPLOAD_BYTES) + 1)
    response = small_limit_client.post(path, content=body, headers={"content-type": content_type})
    assert_too_large(response, flavour)


def test_a_chunked_body_under_the_limit_reaches_the_route(small_limit_client: TestClient) -> None:
    # "AAAA..." is no image: the route itself refuses it, so the limit let the body through
    response = small_limit_client.post(
        "/v1/images/generations",
        content=json_body({"model": "stepfun-ai/step1x-edit"}, filler=SMALL_UPLOAD_BYTES),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] != "payload_too_large"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flavour", "form"), [("wavespeed", False), ("openai_edits", True), ("reasoning", False)]
)
def test_a_real_chunked_upload_over_the_limit_is_413_and_the_server_carries_on(
    live_server: Callable[..., Any], flavour: str, form: bool
) -> None:
    server = live_server(env={"STEPEDIT_MAX_UPLOAD_BYTES": str(SMALL_UPLOAD_BYTES)})
    routes = FORM_ROUTES if form else JSON_ROUTES
    path, fields = routes[flavour]
    filler = 4 * body_limit_for(SMALL_UPLOAD_BYTES)  # far past it: the rest is never read
    if form:
        body, content_type = form_body(fields, filler=filler)
    else:
        body, content_type = json_body(fields, filler=filler), "application/json"
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post(path, content=body, headers={"content-type": content_type})
        assert_too_large(response, flavour)
        assert "request_id=" + response.headers["x-request-id"] in wait_for_log(
            server, "status=413"
        )
        assert client.get("/health").status_code == 200  # a new connection is served
    assert "Traceback" not in server.log()


def wait_for_log(server: Any, text: str, timeout_s: float = 30) -> str:
    """The server's log once it holds `text` (log lines are written after the response)."""
    deadline = time.monotonic() + timeout_s
    while text not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log()
