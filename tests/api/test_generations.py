"""`POST /v1/images/generations` (seed 003) through the app, with the real `openai` client."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

URL = "/v1/images/generations"


def make_png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes | None = None) -> str:
    return "data:image/png;base64," + base64.b64encode(data or make_png()).decode()


def body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "stepfun-ai/step1x-edit",
        "prompt": "Convert to quick pencil sketch",
        "image": data_uri(),
        **fields,
    }


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    # Seed 003: error.param is the request id.
    assert error["param"] == response.headers["x-request-id"]
    return error


def test_seed_example_with_the_openai_client(client: TestClient, fake_editor: FakeEditor) -> None:
    image_base64_string = base64.b64encode(make_png()).decode()
    client_ = openai.OpenAI(base_url="http://testserver/v1", api_key="key", http_client=client)
    response = client_.images.generate(
        model="stepfun-ai/step1x-edit",
        prompt="Convert to quick pencil sketch",
        extra_body={
            "image": f"data:image/png;base64,{image_base64_string}",
            "negative_prompt": "blurry, low quality",
        },
    )
    assert response.data and response.data[0].url
    assert client.get(response.data[0].url).status_code == 200
    sent = fake_editor.calls[-1]
    assert sent.negative_prompt == "blurry, low quality"
    assert (sent.num_inference_steps, sent.guidance_scale, sent.strength) == (20, 2.5, 0.8)
    assert sent.num_images == 1


def test_b64_json_and_n(client: TestClient, fake_editor: FakeEditor) -> None:
    response = client.post(URL, json=body(n=2, response_format="b64_json", seed=7))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert set(payload) == {"created", "data", "usage"}
    assert len(payload["data"]) == 2
    for item in payload["data"]:
        assert item["url"] is None
        prefix, encoded = item["b64_json"].split(",", 1)
        assert prefix == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)
    assert fake_editor.calls[-1].seed == 7


def test_unknown_fields_accepted(client: TestClient) -> None:
    response = client.post(URL, json=body(size="1024x1024", quality="hd", enable_thinking=False))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 0},
        {"n": 5},
        {"strength": 1.5},
        {"strength": -0.1},
        {"seed": -2},
        {"steps": 51},
        {"guidance_scale": 0.5},
        {"guidance_scale": 11},
        {"response_format": "png"},
        {"model": "dall-e-3"},
        {"image": "not an image"},
        {"image": data_uri(b"not a png at all")},
        {"prompt": ""},
        {"prompt": "x" * 5000},
        {"steps": "many"},
    ],
)
def test_bad_input_is_400_in_seed_shape(client: TestClient, fields: dict[str, Any]) -> None:
    error = assert_error(client.post(URL, json=body(**fields)), 400)
    assert error["type"] == "invalid_request_error"


def test_missing_image_is_400(client: TestClient) -> None:
    payload = body()
    del payload["image"]
    error = assert_error(client.post(URL, json=payload), 400)
    assert "image" in error["message"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(URL, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_callers_request_id_is_echoed(client: TestClient) -> None:
    response = client.post(URL, json=body(n=9), headers={"x-request-id": "abc-123"})
    assert assert_error(response, 400)["param"] == "abc-123"


def test_private_image_url_blocked(client: TestClient) -> None:
    error = assert_error(client.post(URL, json=body(image="http://127.0.0.1:1/cat.png")), 400)
    assert error["code"] == "image_fetch_failed"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = make_png(80, 48)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


def test_private_url_allowed_with_the_setting(
    settings: Settings, client: TestClient, image_server: str
) -> None:
    assert_error(client.post(URL, json=body(image=image_server)), 400)
    settings.allow_private_urls = True
    response = client.post(URL, json=body(image=image_server))
    assert response.status_code == 200, response.text


def test_unreachable_url(settings: Settings, client: TestClient) -> None:
    settings.allow_private_urls = True
    error = assert_error(client.post(URL, json=body(image="http://127.0.0.1:9/x.png")), 400)
    assert error["code"] == "image_fetch_failed"


def test_openai_client_error(client: TestClient) -> None:
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="key", http_client=client)
    with pytest.raises(openai.BadRequestError):
        api.images.generate(model="stepfun-ai/step1x-edit", prompt="x", extra_body={"n": 10})


# --- end to end: `stepedit serve` in a subprocess, the real openai client -------------------
# The seed's example runs 20 steps at a 1024x1024 working size: minutes on 2 CPU cores even with
# the tiny random model, so this server runs the fake editor; the tiny model is exercised end to
# end by the seed-002 and wavespeed tests.


@pytest.mark.slow
def test_seed_example_against_a_real_server(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(model="fake:0.001")
    image_base64_string = base64.b64encode(make_png(64, 64)).decode()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="$MODELVERSE_API_KEY")
    response = client.images.generate(
        model="stepfun-ai/step1x-edit",
        prompt="Convert to quick pencil sketch",
        extra_body={
            "image": f"data:image/png;base64,{image_base64_string}",
            "negative_prompt": "blurry, low quality",
        },
    )
    url = response.data[0].url if response.data else None
    assert url and url.startswith(server.base_url)
    downloaded = httpx.get(url)
    assert downloaded.status_code == 200
    assert Image.open(io.BytesIO(downloaded.content)).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(
            model="stepfun-ai/step1x-edit", prompt="x", extra_body={"image": "http://127.0.0.1/"}
        )
    assert info.value.body["param"] == info.value.response.headers["x-request-id"]  # type: ignore[index]


def test_queue_full_is_429_with_retry_after(settings: Settings, client: TestClient) -> None:
    settings.max_queue = 0
    response = client.post(URL, json=body())
    assert assert_error(response, 429)["code"] == "queue_full"
    assert int(response.headers["retry-after"]) > 0


def test_a_job_canceled_while_waited_for_is_409(
    settings: Settings, job_service: JobService
) -> None:
    # No worker: the job waits in the queue until its owner cancels it.
    answers: list[httpx.Response] = []
    with TestClient(create_app(settings, job_service)) as client:
        caller = threading.Thread(target=lambda: answers.append(client.post(URL, json=body())))
        caller.start()
        deadline = time.monotonic() + 30
        while not job_service.list_sync(None) and time.monotonic() < deadline:
            time.sleep(0.02)
        (job,) = job_service.list_sync(None)
        job_service.cancel_sync(job.id, None)
        caller.join(30)
    error = assert_error(answers[0], 409)
    assert error["code"] == "canceled" and "canceled" in error["message"]
