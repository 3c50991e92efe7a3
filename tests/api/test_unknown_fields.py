"""Unknown fields are accepted on every flavour and logged once per request with the flavour's
name, whether they came in JSON or as multipart form fields (the `openai` client sends
`extra_body` entries either way)."""

from __future__ import annotations

import base64
import io
import logging

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

LOGGER = "stepedit.api.protocol"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png()).decode()


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def post_json(client: TestClient, path: str, **fields: object) -> httpx.Response:
    return client.post(path, json={"prompt": "p", "image": data_uri(), "colour": "red", **fields})


def post_form(client: TestClient, path: str, **fields: str) -> httpx.Response:
    files = {"image": ("a.png", png(), "image/png")}
    return client.post(path, data={"prompt": "p", "colour": "red", **fields}, files=files)


SENDERS = {
    "wavespeed json": lambda c: post_json(c, "/api/v3/wavespeed-ai/step1x-edit"),
    "generations json": lambda c: post_json(
        c, "/v1/images/generations", model="stepfun-ai/step1x-edit"
    ),
    "reasoning json": lambda c: post_json(c, "/v1/image/edit/"),
    "reasoning form": lambda c: post_form(c, "/v1/image/edit/", model="step1x-edit"),
    "openai_edits form": lambda c: post_form(c, "/v1/images/edits", model="step-1x-edit"),
    "native json": lambda c: post_json(c, "/v1/jobs"),
    "native form": lambda c: post_form(c, "/v1/jobs"),
}


@pytest.mark.parametrize("case", list(SENDERS))
def test_unknown_fields_are_logged_once_with_the_flavour(
    client: TestClient, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    response = SENDERS[case](client)
    assert response.status_code in (200, 202), response.text
    # the image file is read apart from the fields: never reported as unknown
    flavour = case.split()[0]
    assert logged(caplog) == [f"{flavour}: ignoring unknown fields ['colour']"]


def test_known_fields_are_not_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    response = client.post(
        "/v1/images/edits",
        data={"model": "step-1x-edit", "prompt": "p", "steps": "3"},
        files={"image[]": ("a.png", png(), "image/png")},
    )
    assert response.status_code == 200, response.text
    assert logged(caplog) == []
