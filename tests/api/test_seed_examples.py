"""The seeds' own examples, as published, against a real `stepedit serve` subprocess.

Only the host changes (and a data URI stands in for a placeholder or a public URL the test
cannot reach). The servers accept the seeds' own API-key spellings as Bearer keys.

- Seeds 000/001 (wavespeed curl) run on the tiny random model `dummy:tiny-v1.1`. The seed fixes
  no size, so it runs at the default working size (about 1024x1024) with the seed's 30 steps; a
  few seconds per step on two cores.
- Seed 003 (curl and `openai` example, 28 steps at 1024x1024 twice) and seed 004 (50 steps at
  1024x1024) run on the fake editor (`fake`), as what they exercise is the HTTP contract; the
  model runs end to end behind seeds 000/001 here and seed 002 below.
- Seed 002's `openai` example runs verbatim on the tiny model in
  `test_openai_edits.py::test_seed_example_against_a_real_server` (its 512x512 default size
  keeps it fast there).
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

WAVESPEED_API_KEY = "wavespeed-test-key"
MODELVERSE_API_KEY = "$MODELVERSE_API_KEY"  # the literal default in seed 003's example
FREE_AI_KEY = "sk-free-test"
KEYS = ("--api-key", WAVESPEED_API_KEY, "--api-key", MODELVERSE_API_KEY, "--api-key", FREE_AI_KEY)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_seed_000_001_curl_submit_then_get_the_result(
    live_server: Callable[..., Any], make_image: Callable[..., bytes]
) -> None:
    server = live_server(*KEYS, model="dummy:tiny-v1.1")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {WAVESPEED_API_KEY}"}
    submit_url = f"{server.base_url}/api/v3/wavespeed-ai/step1x-edit"
    seed_body = '{\n    "guidance_scale": 4,\n    "num_inference_steps": 30\n}'

    # The curl as published has no prompt and no image, both required by its own table.
    refused = httpx.post(submit_url, headers=headers, content=seed_body)
    assert refused.status_code == 400
    assert refused.json()["code"] == 400
    assert refused.json()["message"].startswith("prompt: Field required")

    # The same body with the two required fields.
    body = {
        "guidance_scale": 4,
        "num_inference_steps": 30,
        "prompt": "Change hair color to red",
        "image": data_uri(make_image(64, 64)),
    }
    submitted = httpx.post(submit_url, headers=headers, json=body, timeout=30)
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["data"]["id"]
    result_url = f"{server.base_url}/api/v3/predictions/{request_id}/result"
    auth = {"Authorization": f"Bearer {WAVESPEED_API_KEY}"}
    deadline = time.monotonic() + 240
    while True:
        result = httpx.get(result_url, headers=auth, timeout=30)
        assert result.status_code == 200, result.text
        data = result.json()["data"]
        if data["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        assert data["status"] in ("created", "processing")
        time.sleep(0.5)

    assert result.json()["code"] == 200 and result.json()["message"] == "success"
    assert data["status"] == "completed", data
    assert data["id"] == request_id and data["error"] == ""
    assert data["urls"]["get"] == result_url
    assert isinstance(data["timings"]["inference"], int) and data["timings"]["inference"] > 0
    assert len(data["has_nsfw_contents"]) == 1
    datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
    output = httpx.get(data["outputs"][0], timeout=30)
    assert Image.open(io.BytesIO(output.content)).size == (64, 64)
    # another key does not see it
    other = httpx.get(result_url, headers={"Authorization": f"Bearer {FREE_AI_KEY}"})
    assert other.status_code == 404 and other.json()["code"] == 404


def test_seed_003_curl_and_openai_examples(
    live_server: Callable[..., Any],
    make_image: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = live_server(*KEYS, model="fake:0")
    image_base64_string = base64.b64encode(make_image(64, 48)).decode()

    # curl, with the placeholder filled in
    curl = httpx.post(
        f"{server.base_url}/v1/images/generations",
        headers={
            "Authorization": f"Bearer {MODELVERSE_API_KEY}",
            "Content-Type": "application/json",
        },
        content=(
            '{\n"model": "stepfun-ai/step1x-edit",\n"prompt": "Convert to quick pencil sketch",\n'
            f'"image": "data:image/png;base64,{image_base64_string}",\n'
            '"negative_prompt": "blurry, low quality"\n}'
        ),
        timeout=240,
    )
    assert curl.status_code == 200, curl.text
    answer = curl.json()
    assert set(answer) == {"created", "data", "usage"} and len(answer["data"]) == 1
    assert answer["data"][0]["url"].startswith(server.base_url)

    # the `openai` example, as written; BASE_URL is the variable it reads
    monkeypatch.setenv("BASE_URL", f"{server.base_url}/v1")
    monkeypatch.delenv("API_KEY", raising=False)
    from openai import OpenAI

    client = OpenAI(
        base_url=os.getenv("BASE_URL", "https://api.umodelverse.ai/v1"),
        api_key=os.getenv("API_KEY", "$MODELVERSE_API_KEY"),
    )
    response = client.images.generate(
        model="stepfun-ai/step1x-edit",
        prompt="Convert to quick pencil sketch",
        extra_body={
            "image": f"data:image/png;base64,{image_base64_string}",
            "negative_prompt": "blurry, low quality",
        },
    )
    print(response.data[0].url)  # type: ignore[index]

    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"{server.base_url}/files/")
    downloaded = httpx.get(printed, timeout=30)
    assert Image.open(io.BytesIO(downloaded.content)).size == (64, 48)

    # the example's placeholder sent as is is not an image: a clear 400 naming it
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(
            model="stepfun-ai/step1x-edit",
            prompt="Convert to quick pencil sketch",
            extra_body={"image": "data:image/png;base64,{image_base64_string}"},
        )
    assert "image" in info.value.body["message"].lower()  # type: ignore[index]


def test_seed_004_curl_and_multipart(
    live_server: Callable[..., Any], make_image: Callable[..., bytes]
) -> None:
    server = live_server(*KEYS, model="fake:0")
    url = f"{server.base_url}/v1/image/edit/"
    headers = {"Authorization": f"Bearer {FREE_AI_KEY}", "Content-Type": "application/json"}

    # The curl as published names no image: an edit needs one, so a 400 that says so.
    refused = httpx.post(
        url, headers=headers, content='{"model":"step1x-edit","prompt":"your prompt here"}'
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "image" and "image" in error["message"].lower()

    # The documented multipart form, defaults for everything optional (steps 50, guidance 6.0).
    multipart = httpx.post(
        url,
        headers={"Authorization": f"Bearer {FREE_AI_KEY}"},
        data={"model": "step1x-edit", "operation": "img2img", "prompt": "your prompt here"},
        files={"image": ("photo.png", make_image(64, 64), "image/png")},
        timeout=60,
    )
    assert multipart.status_code == 200, multipart.text
    answer = multipart.json()
    assert answer["passes"] == ["diffusion"]  # the fake runs no reasoning passes
    assert httpx.get(answer["data"][0]["url"]).status_code == 200

    # and the same with the seed's JSON plus an image
    with_image = httpx.post(
        url,
        headers=headers,
        json={
            "model": "step1x-edit",
            "prompt": "your prompt here",
            "image": data_uri(make_image(64, 64)),
        },
        timeout=60,
    )
    assert with_image.status_code == 200, with_image.text
    assert with_image.json()["data"][0]["url"].startswith(f"{server.base_url}/files/")
