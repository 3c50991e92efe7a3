"""With API keys configured, every flavour's routes answer a caller without a valid key 401 with
`WWW-Authenticate: Bearer`, in the flavour's shape, before reading the body: a bad body from a
caller without a key is still a 401, not a validation error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

KEY = "sk-test-key"
# (method, path, flavour): every route that needs a key
ROUTES = [
    ("POST", "/api/v3/wavespeed-ai/step1x-edit", "wavespeed"),
    ("GET", "/api/v3/predictions/0123/result", "wavespeed"),
    ("GET", "/api/v3/predictions/0123", "wavespeed"),
    ("GET", "/api/v3/webhook/secret", "wavespeed"),
    ("POST", "/v1/images/edits", "openai_edits"),
    ("POST", "/v1/images/generations", "generations"),
    ("POST", "/v1/image/edit/", "reasoning"),
    ("POST", "/v1/image/edit", "reasoning"),
    ("POST", "/v1/jobs", "native"),
    ("GET", "/v1/jobs", "native"),
    ("GET", "/v1/jobs/0123", "native"),
    ("POST", "/v1/jobs/0123/cancel", "native"),
    ("GET", "/v1/jobs/0123/events", "native"),
    ("POST", "/v1/prompt/enhance", "native"),
]


@pytest.fixture
def keyed_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        model="fake",
        data_dir=tmp_path / "data",
        safety_checker=False,
        public_base_url="http://testserver",
        api_keys=[KEY],
    )
    service = JobService(settings)
    editor = FakeEditor(step_delay_s=0.0)
    worker = InProcessWorker(service, lambda: editor, poll_s=0.05)
    worker.start()
    deadline = time.monotonic() + 5
    while not service.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
    with TestClient(create_app(settings, service)) as client:
        yield client
    worker.stop()
    service.close()


def assert_unauthorized(response: Any, flavour: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    if flavour == "wavespeed":
        assert body == {"code": 401, "message": body["message"]}
    elif flavour in ("openai_edits", "generations"):
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == "unauthorized"
    else:
        assert set(body["error"]) == {"code", "message", "param"}
        assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "flavour"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz"])
def test_no_valid_key_is_401_with_a_bearer_challenge(
    keyed_client: TestClient, method: str, path: str, flavour: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    assert_unauthorized(keyed_client.request(method, path, headers=headers), flavour)


@pytest.mark.parametrize(
    ("path", "flavour"),
    [
        ("/v1/image/edit/", "reasoning"),
        ("/v1/jobs", "native"),
        ("/api/v3/wavespeed-ai/step1x-edit", "wavespeed"),
        ("/v1/images/generations", "generations"),
    ],
)
@pytest.mark.parametrize("as_form", [False, True])
def test_the_key_is_checked_before_the_body(
    keyed_client: TestClient, path: str, flavour: str, as_form: bool
) -> None:
    # an invalid body (no prompt, steps out of range): without a key it is still a 401
    if as_form:
        response = keyed_client.post(path, data={"steps": "0", "num_inference_steps": "0"})
    else:
        response = keyed_client.post(path, json={"steps": 0, "num_inference_steps": 0})
    assert_unauthorized(response, flavour)


def test_the_openai_edits_form_is_checked_after_the_key(keyed_client: TestClient) -> None:
    response = keyed_client.post("/v1/images/edits", data={"model": "step-1x-edit"})
    assert_unauthorized(response, "openai_edits")


def test_a_valid_key_is_let_through(keyed_client: TestClient) -> None:
    authorized = {"Authorization": f"Bearer {KEY}"}
    assert keyed_client.get("/v1/jobs", headers=authorized).status_code == 200
    missing = keyed_client.post("/v1/image/edit/", json={}, headers=authorized)
    assert missing.status_code == 400  # past the key: the body's own error
    assert "www-authenticate" not in missing.headers


@pytest.mark.parametrize("path", ["/health", "/metrics", "/files/abc.png", "/"])
def test_routes_without_a_key_stay_open(keyed_client: TestClient, path: str) -> None:
    assert keyed_client.get(path).status_code != 401
