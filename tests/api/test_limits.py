"""The request-body limit answers oversized bodies before any route reads them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from stepedit.api.limits import body_limit_for
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
