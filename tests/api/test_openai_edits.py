"""`POST /v1/images/edits` (seed 002) through the app, with the real `openai` client."""

from __future__ import annotations

import base64
import io
import zlib
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.engine import FakeEditor
from stepedit.settings import Settings


def make_png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


URL = "/v1/images/edits"


def form(**fields: object) -> dict[str, str]:
    base = {"model": "step-1x-edit", "prompt": "Turn the cat into a British Shorthair."}
    base.update({k: str(v) for k, v in fields.items()})
    return base


def png_file(width: int = 64, height: int = 64) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("cat.png", make_png(width, height), "image/png")}


def assert_error(response, status: int, param: str | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error  # type: ignore[no-any-return]


def test_seed_example_with_the_openai_client(
    client: TestClient, fake_editor: FakeEditor, tmp_path: Path
) -> None:
    cat = tmp_path / "cat.jpg"
    Image.new("RGB", (96, 64), "orange").save(cat, format="JPEG")
    api = openai.OpenAI(api_key="STEP_API_KEY", base_url="http://testserver/v1", http_client=client)
    # The seed's example, only base_url changed.
    prompt = "Turn the cat into a British Shorthair."
    result = api.images.edit(
        model="step-1x-edit",
        image=open(cat, "rb"),  # noqa: SIM115 - as the seed writes it
        prompt=prompt,
        response_format="b64_json",
        extra_body={"cfg_scale": 10.0, "steps": 20, "seed": 1},
    )
    image_bytes = base64.b64decode(result.data[0].b64_json or "")
    assert Image.open(io.BytesIO(image_bytes)).format == "PNG"
    assert result.data[0].model_extra == {"seed": 1, "finish_reason": "success"}
    sent = fake_editor.calls[-1]
    assert (sent.guidance_scale, sent.num_inference_steps, sent.seed) == (10.0, 20, 1)
    assert (sent.size_level, sent.output_size) == (512, "working")


def test_defaults_and_url_response(client: TestClient, fake_editor: FakeEditor) -> None:
    response = client.post(URL, data=form(), files=png_file())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data"}
    (item,) = body["data"]
    assert set(item) == {"seed", "finish_reason", "url"}
    assert item["finish_reason"] == "success"
    assert client.get(item["url"]).status_code == 200
    sent = fake_editor.calls[-1]
    assert (sent.num_inference_steps, sent.guidance_scale, sent.size_level) == (28, 6.0, 512)
    assert sent.seed == item["seed"]  # random seed drawn and reported


def test_seed_zero_means_random_and_size_maps_to_size_level(
    client: TestClient, fake_editor: FakeEditor
) -> None:
    response = client.post(URL, data=form(seed=0, size="1024x1024"), files=png_file())
    assert response.status_code == 200, response.text
    assert fake_editor.calls[-1].size_level == 1024


def test_unknown_fields_are_accepted(client: TestClient) -> None:
    response = client.post(URL, data=form(n=1, quality="high"), files=png_file())
    assert response.status_code == 200, response.text


def test_image_array_field_is_accepted(client: TestClient) -> None:
    files = {"image[]": ("cat.png", make_png(), "image/png")}
    assert client.post(URL, data=form(), files=files).status_code == 200


@pytest.mark.parametrize(
    "names",
    [("image", "image"), ("image", "image[]"), ("image[]", "image[]"), ("image[]", "image")],
)
def test_two_image_files_are_refused(client: TestClient, names: tuple[str, str]) -> None:
    files = [(name, ("cat.png", make_png(), "image/png")) for name in names]
    error = assert_error(client.post(URL, data=form(), files=files), 400, "image")
    assert "one image" in error["message"]
    assert client.get("/v1/jobs").json()["data"] == []  # nothing was edited


def test_an_image_that_is_no_file_is_refused(client: TestClient) -> None:
    assert_error(client.post(URL, data={**form(), "image": "cat.png"}), 400, "image")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 101}, "steps"),
        ({"cfg_scale": 0.5}, "cfg_scale"),
        ({"cfg_scale": 11}, "cfg_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"size": "640x480"}, "size"),
        ({"response_format": "png"}, "response_format"),
        ({"prompt": "x" * 513}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"model": "dall-e-2"}, "model"),
    ],
)
def test_bad_fields_are_400_in_openai_shape(
    client: TestClient, fields: dict[str, object], param: str
) -> None:
    error = assert_error(client.post(URL, data=form(**fields), files=png_file()), 400, param)
    assert error["type"] == "invalid_request_error"


def test_missing_image_and_prompt(client: TestClient) -> None:
    assert_error(client.post(URL, data=form()), 400, "image")
    assert_error(client.post(URL, data={"model": "step-1x-edit"}, files=png_file()), 400, "prompt")


def test_not_an_image(client: TestClient) -> None:
    files = {"image": ("cat.png", b"this is not a picture", "image/png")}
    assert_error(client.post(URL, data=form(), files=files), 400, "image")


def test_wrong_format(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    files = {"image": ("cat.gif", buffer.getvalue(), "image/gif")}
    error = assert_error(client.post(URL, data=form(), files=files), 400, "image")
    assert error["code"] == "unsupported_media_type"


def test_truncated_file(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    files = {"image": ("cat.png", data[: len(data) // 2], "image/png")}
    assert_error(client.post(URL, data=form(), files=files), 400, "image")


def test_huge_file_is_413(client: TestClient) -> None:
    files = {"image": ("cat.png", b"\x89PNG" + b"\0" * (10 * 1024 * 1024 + 1), "image/png")}
    error = assert_error(client.post(URL, data=form(), files=files), 413, "image")
    assert error["code"] == "payload_too_large"


def test_decompression_bomb(client: TestClient) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = (50000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    files = {"image": ("bomb.png", bomb, "image/png")}
    assert_error(client.post(URL, data=form(), files=files), 400, "image")


@pytest.mark.parametrize("size", [(32, 64), (1800, 600), (1100, 1000), (600, 150)])
def test_seed_dimension_rules(client: TestClient, size: tuple[int, int]) -> None:
    assert_error(client.post(URL, data=form(), files=png_file(*size)), 400, "image")


def test_openai_client_sees_a_bad_request(client: TestClient, tmp_path: Path) -> None:
    api = openai.OpenAI(api_key="k", base_url="http://testserver/v1", http_client=client)
    with pytest.raises(openai.BadRequestError) as info:
        api.images.edit(
            model="step-1x-edit",
            image=("cat.png", make_png(), "image/png"),
            prompt="x",
            extra_body={"steps": 500},
        )
    assert "steps" in str(info.value)


def test_failed_edit_is_a_500_in_openai_shape(client: TestClient, fake_editor: FakeEditor) -> None:
    fake_editor.fail_with = RuntimeError("boom")
    error = assert_error(client.post(URL, data=form(), files=png_file()), 500)
    assert error["type"] == "server_error"


# --- end to end: `stepedit serve` with the tiny random model, the real openai client ---------


@pytest.mark.slow
def test_seed_example_against_a_real_server(live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = live_server(model="dummy:tiny-v1.1")
    Image.new("RGB", (96, 64), "orange").save(tmp_path / "cat.jpg", format="JPEG")
    client = openai.OpenAI(api_key="STEP_API_KEY", base_url=f"{server.base_url}/v1")
    prompt = "Turn the cat into a British Shorthair."
    with open(tmp_path / "cat.jpg", "rb") as image:
        result = client.images.edit(
            model="step-1x-edit",
            image=image,
            prompt=prompt,
            response_format="b64_json",
            extra_body={"cfg_scale": 10.0, "steps": 20, "seed": 1},
        )
    print(result)
    image_base64 = result.data[0].b64_json or ""
    image_bytes = base64.b64decode(image_base64)
    with open(tmp_path / "cat-on-rooftop.png", "wb") as f:
        f.write(image_bytes)
    edited = Image.open(tmp_path / "cat-on-rooftop.png")
    # Not 1:1, so the aspect ratio is kept with an area of about 512*512 (multiples of 16).
    assert edited.width * edited.height == pytest.approx(512 * 512, rel=0.1)
    assert edited.width / edited.height == pytest.approx(96 / 64, rel=0.05)
    assert result.data[0].model_extra == {"seed": 1, "finish_reason": "success"}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="step-1x-edit", image=("a.txt", b"text", "text/plain"), prompt="x")
    assert info.value.body["param"] == "image"  # type: ignore[index]


def test_queue_full_is_429_with_retry_after(settings: Settings, client: TestClient) -> None:
    settings.max_queue = 0
    response = client.post(URL, data=form(), files=png_file())
    assert assert_error(response, 429)["type"] == "rate_limit_error"
    assert int(response.headers["retry-after"]) > 0
