"""`POST /v1/image/edit/` (seed 004) through the app: JSON and multipart, Bearer auth, the
passes report, and bad inputs in the seed-004 error shape."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.engine import FakeEditor
from stepedit.settings import Settings

URL = "/v1/image/edit/"


def make_png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def body(**fields: Any) -> dict[str, Any]:
    image = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    return {"model": "step1x-edit", "prompt": "fix the hand", "image": image, **fields}


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"}
    if param is not None:
        assert error["param"] == param
    return error["message"]  # type: ignore[no-any-return]


def test_json_edit_reports_the_passes_that_ran(client: TestClient, fake_editor: FakeEditor) -> None:
    response = client.post(URL, json=body())
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "image.edit" and payload["operation"] == "img2img"
    assert payload["passes"] == ["diffusion"]  # the fake editor runs no reasoning pass
    assert payload["thinking"] == {"requested": None, "ran": False}
    assert payload["reflection"] == {"requested": None, "ran": False}
    assert payload["prompt"] == "fix the hand" and payload["prompt_used"] == "fix the hand"
    (image,) = payload["data"]
    assert image["seed"] == payload["seed"] and client.get(image["url"]).status_code == 200
    assert payload["usage"]["tokens"] > 0
    sent = fake_editor.calls[-1]
    assert (sent.num_inference_steps, sent.guidance_scale) == (50, 6.0)
    assert sent.enable_thinking is None and sent.enable_reflection is None


def test_multipart_with_flags(client: TestClient, fake_editor: FakeEditor) -> None:
    response = client.post(
        URL,
        data={
            "model": "step1x-edit",
            "prompt": "make this look like a memory",
            "operation": "style_transfer",
            "enable_thinking": "false",
            "enable_reflection": "true",
            "steps": "12",
            "response_format": "b64_json",
        },
        files={"image": ("photo.png", make_png(), "image/png")},
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["thinking"] == {"requested": False, "ran": False}
    assert payload["reflection"] == {"requested": True, "ran": False}
    assert Image.open(io.BytesIO(base64.b64decode(payload["data"][0]["b64_json"]))).size == (64, 64)
    sent = fake_editor.calls[-1]
    assert (sent.enable_thinking, sent.enable_reflection, sent.num_inference_steps) == (
        False,
        True,
        12,
    )


def test_path_without_trailing_slash(client: TestClient) -> None:
    response = client.post("/v1/image/edit", json=body(), follow_redirects=False)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("operation", "param", "named"),
    [
        ("teleport", "operation", "img2img, edit, style_transfer, inpaint, outpaint"),
        ("inpaint", "mask", "needs a mask"),  # inpaint without a mask
        ("outpaint", "outpaint_padding", "outpaint_aspect_ratio"),  # without padding or ratio
    ],
)
def test_operations_without_their_inputs_are_refused_clearly(
    client: TestClient, operation: str, param: str, named: str
) -> None:
    message = assert_error(client.post(URL, json=body(operation=operation)), 400, param)
    assert named in message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 1000}, "steps"),
        ({"guidance_scale": 99}, "guidance_scale"),
        ({"enable_thinking": "maybe"}, "enable_thinking"),
        ({"model": "qwen-image-edit"}, "model"),
        ({"prompt": ""}, "prompt"),
        ({"image": "not base64!"}, "image"),
        ({"image": None}, "image"),
        ({"image": "http://10.0.0.1/x.png"}, "image"),
    ],
)
def test_bad_json_fields(client: TestClient, fields: dict[str, Any], param: str) -> None:
    assert_error(client.post(URL, json=body(**fields)), 400, param)


def test_not_json_and_not_an_object(client: TestClient) -> None:
    assert_error(client.post(URL, content=b"{", headers={"content-type": "application/json"}), 400)
    assert_error(client.post(URL, json=[1, 2]), 400)


def test_wrong_format_upload_is_415(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="BMP")
    response = client.post(
        URL,
        data={"model": "step1x-edit", "prompt": "x"},
        files={"image": ("a.bmp", buffer.getvalue(), "image/bmp")},
    )
    assert_error(response, 415, "image")


def test_oversized_json_body_is_413(client: TestClient) -> None:
    huge = base64.b64encode(b"\0" * (10 * 1024 * 1024 + 1)).decode()
    assert_error(client.post(URL, json=body(image=huge)), 413)


def test_bearer_auth(settings: Settings, client: TestClient) -> None:
    settings.api_keys = ["sk-free-1"]
    assert_error(client.post(URL, json=body()), 401)
    ok = client.post(URL, json=body(), headers={"Authorization": "Bearer sk-free-1"})
    assert ok.status_code == 200, ok.text


def test_failed_edit_is_500_in_seed_shape(client: TestClient, fake_editor: FakeEditor) -> None:
    fake_editor.fail_with = RuntimeError("boom")
    assert_error(client.post(URL, json=body()), 500)


# --- end to end: `stepedit serve` in a subprocess, httpx -------------------------------------


@pytest.mark.slow
def test_seed_curl_against_a_real_server(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server("--api-key", "sk-free-test", model="fake:0.001")
    headers = {"Authorization": "Bearer sk-free-test"}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        response = http.post(URL, headers=headers, json=body())
        assert response.status_code == 200, response.text
        assert response.json()["passes"] == ["diffusion"]
        multipart = http.post(
            URL,
            headers=headers,
            data={
                "model": "step1x-edit",
                "prompt": "warm it up",
                "operation": "img2img",
                "enable_thinking": "false",
                "enable_reflection": "false",
                "steps": "4",
            },
            files={"image": ("a.png", make_png(), "image/png")},
        )
        assert multipart.status_code == 200, multipart.text
        assert http.get(multipart.json()["data"][0]["url"]).status_code == 200
        assert_error(http.post(URL, json=body()), 401)
        assert_error(http.post(URL, headers=headers, json=body(operation="inpaint")), 400)


def test_text_that_is_not_unicode_is_400(client: TestClient) -> None:
    raw = b'{"model": "step1x-edit", "prompt": "\\ud800", "image": "x"}'
    response = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "prompt")
    raw = json.dumps(body(negative_prompt="a\ud800")).encode()  # ensure_ascii keeps the escape
    response = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "negative_prompt")


def test_queue_full_is_429_with_retry_after(settings: Settings, client: TestClient) -> None:
    settings.max_queue = 0
    response = client.post(URL, json=body())
    assert_error(response, 429)
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.slow
def test_reasoning_passes_on_the_tiny_v12_model(live_server) -> None:  # type: ignore[no-untyped-def]
    """The real server with the tiny random v1.2 model: the seed-004 endpoint reports which
    passes ran and each round's verdict; /v1/prompt/enhance answers with a string."""
    server = live_server(model="dummy:tiny-v1.2", ready_timeout_s=180)
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        assert http.get("/health").json()["model_version"] == "v1.2"
        response = http.post(URL, json=body(steps=1, seed=3))
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["passes"][:3] == ["thinking", "diffusion_1", "reflection_1"]
        assert payload["thinking"]["ran"] and payload["reflection"]["ran"]
        assert payload["rounds"] and payload["rounds"][0]["verdict"] in (
            "success", "retry", "failed",
        )  # fmt: skip
        assert isinstance(payload["prompt_used"], str) and payload["best_round"] >= 1
        job = http.get(f"/v1/jobs/{payload['id']}").json()
        assert job["reasoning"]["rounds"] == payload["rounds"]
        enhanced = http.post("/v1/prompt/enhance", json={"prompt": "make it pop"})
        assert enhanced.status_code == 200, enhanced.text
        assert isinstance(enhanced.json()["enhanced_prompt"], str)
