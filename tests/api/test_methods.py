"""A path an API route serves, asked with another method: 405 naming the methods it takes, in
the flavour's error shape (not the playground's file lookup, mounted at `/`, answering 404 or
its own 405)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

WRONG_METHODS = [
    # (method, path, flavour, Allow)
    ("GET", "/v1/images/edits", "openai_edits", "POST"),
    ("DELETE", "/v1/jobs", "native", "GET, POST"),
    ("PUT", "/api/v3/wavespeed-ai/step1x-edit", "wavespeed", "POST"),
    ("GET", "/v1/images/generations", "generations", "POST"),
    ("GET", "/v1/image/edit/", "reasoning", "POST"),
    ("GET", "/v1/jobs/0123/cancel", "native", "POST"),
    ("POST", "/v1/jobs/0123", "native", "GET"),
    ("DELETE", "/api/v3/predictions/0123/result", "wavespeed", "GET"),
    ("HEAD", "/v1/jobs", "native", "GET, POST"),
    ("POST", "/health", "native", "GET"),
    ("POST", "/files/abc.png", "native", "GET"),
]


def assert_shape(body: dict[str, Any], flavour: str, status: int) -> None:
    if flavour == "wavespeed":
        assert body["code"] == status and set(body) == {"code", "message"}
    elif flavour in ("openai_edits", "generations"):
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        assert set(body["error"]) == {"code", "message", "param"}


@pytest.mark.parametrize(("method", "path", "flavour", "allow"), WRONG_METHODS)
def test_a_wrong_method_is_405_with_allow(
    client: TestClient, method: str, path: str, flavour: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    assert response.headers["x-request-id"]
    if method != "HEAD":
        body = response.json()
        assert_shape(body, flavour, 405)
        if flavour != "wavespeed":
            assert body["error"]["code"] == "method_not_allowed"


def test_the_openai_405_is_an_invalid_request_error(client: TestClient) -> None:
    error = client.get("/v1/images/edits").json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "POST" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "flavour"),
    [
        ("GET", "/v1/nothing-here", "native"),
        ("POST", "/v1/nothing-here", "native"),
        ("DELETE", "/api/v3/nothing", "wavespeed"),
        ("GET", "/v1/images/edits/extra", "openai_edits"),
    ],
)
def test_a_path_under_an_api_prefix_that_no_route_serves_is_404(
    client: TestClient, method: str, path: str, flavour: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 404, response.text
    assert_shape(response.json(), flavour, 404)


def test_the_playground_is_still_served_at_the_root(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert client.get("/app.js").status_code == 200
    assert client.get("/no-such-file.js").status_code == 404
