"""Bad inputs on every flavour: never a 500, always the flavour's status and error shape.

One table of inputs, sent the way each flavour takes an image (a JSON string: data URI, raw
base64 or URL; or a multipart file), each answer checked for its status and body shape.
Per-flavour tests (test_<flavour>.py) cover the happy paths and seed-specific rules.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from stepedit.settings import Settings

Route = Literal[
    "wavespeed", "openai_edits", "generations", "reasoning", "reasoning_form", "native",
    "native_form",
]  # fmt: skip
ROUTES: tuple[Route, ...] = (
    "wavespeed", "openai_edits", "generations", "reasoning", "reasoning_form", "native",
    "native_form",
)  # fmt: skip
URL_ROUTES = tuple(route for route in ROUTES if route != "openai_edits")
PATHS: dict[str, str] = {
    "wavespeed": "/api/v3/wavespeed-ai/step1x-edit",
    "openai_edits": "/v1/images/edits",
    "generations": "/v1/images/generations",
    "reasoning": "/v1/image/edit/",
    "native": "/v1/jobs",
}
BASE_FIELDS: dict[str, dict[str, Any]] = {
    "wavespeed": {},
    "openai_edits": {"model": "step-1x-edit"},
    "generations": {"model": "stepfun-ai/step1x-edit"},
    "reasoning": {"model": "step1x-edit"},
    "native": {},
}
STEPS_FIELD = {"wavespeed": "num_inference_steps", "native": "num_inference_steps"}
GUIDANCE_FIELD = {"openai_edits": "cfg_scale"}


def flavour_of(route: Route) -> str:
    return route.removesuffix("_form")


def is_form(route: Route) -> bool:
    return route in ("openai_edits", "reasoning_form", "native_form")


def png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 60, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def gif_1x1() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, format="GIF")
    return buffer.getvalue()


def zip_file() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buffer.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height, with one tiny compressed row: a few
    hundred bytes that would decode to tens of gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width * 3 + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)


def as_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def submit(client: TestClient, route: Route, image: bytes | str | None, **fields: Any) -> Response:
    flavour = flavour_of(route)
    body = {**BASE_FIELDS[flavour], "prompt": "make it blue", **fields}
    if is_form(route):
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
        if isinstance(image, str):
            return client.post(PATHS[flavour], data={**form, "image": image})
        files = {"image": ("photo.png", image, "image/png")} if image is not None else None
        return client.post(PATHS[flavour], data=form, files=files)
    if isinstance(image, bytes):
        image = as_data_uri(image)
    if image is not None:
        body["image"] = image
    return client.post(PATHS[flavour], json=body)


def submit_raw_json(client: TestClient, route: Route, raw: str) -> Response:
    return client.post(
        PATHS[flavour_of(route)], content=raw, headers={"Content-Type": "application/json"}
    )


REFUSED_INPUT = (400, 413, 415, 422)  # wavespeed has no param, seed 003's is the request id


def assert_error(response: Response, flavour: str, status: int | tuple[int, ...]) -> dict[str, Any]:
    """`response` is an error with one of `status`, in `flavour`'s documented shape."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    if flavour == "wavespeed":
        assert set(body) == {"code", "message"} and body["code"] == response.status_code
        assert body["message"]
    elif flavour in ("openai_edits", "generations"):
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["message"] and body["error"]["type"]
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
        assert body["error"]["message"]
    if flavour not in ("wavespeed", "generations") and response.status_code in REFUSED_INPUT:
        assert body["error"]["param"], body  # every refused input names its field
    return body


# Format errors are 415 where the provider says so (seed 004 / native), 400 on OpenAI-style
# and wavespeed routes.
FORMAT_STATUS = {"reasoning": 415, "native": 415}


def format_status(route: Route) -> int:
    return FORMAT_STATUS.get(flavour_of(route), 400)


def validation_status(route: Route) -> int:
    """A field that fails validation: FastAPI's 422 on the native API, 400 on the providers'."""
    return 422 if flavour_of(route) == "native" else 400


BAD_FILES = {
    "truncated-png": (png()[:60], 400),
    "truncated-jpeg": (jpeg()[:200], 400),
    "gif-1x1": (gif_1x1(), None),
    "zip-as-png": (zip_file(), None),
    "pdf-as-png": (PDF, None),
    "bomb-png": (png_bomb(), (400, 413)),
    "empty": (b"", (400, 413, 415)),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_files(client: TestClient, route: Route, name: str) -> None:
    data, status = BAD_FILES[name]
    expected = format_status(route) if status is None else status
    if name == "empty" and not is_form(route):
        expected = 400  # an empty string is not an image source at all
    assert_error(submit(client, route, data), flavour_of(route), expected)


@pytest.mark.parametrize("route", URL_ROUTES)
@pytest.mark.parametrize(
    "image",
    [
        "data:image/png;base64,@@not base64@@",
        "data:image/png;base64,iVBORw0KGgo",  # base64 of a truncated header
        "data:;base64,",
        "not-a-url-nor-base64 !",
    ],
)
def test_bad_data_uris_and_base64(client: TestClient, route: Route, image: str) -> None:
    assert_error(submit(client, route, image), flavour_of(route), (400, 415))


@pytest.mark.parametrize("route", URL_ROUTES)
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cat.png",
        "http://localhost/cat.png",
        "http://10.0.0.1/cat.png",
        "file:///etc/passwd",
    ],
)
def test_private_and_loopback_urls_are_refused(client: TestClient, route: Route, url: str) -> None:
    body = assert_error(submit(client, route, url), flavour_of(route), 400)
    assert "image" in json.dumps(body).lower() or "url" in json.dumps(body).lower()


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed once the socket is


@pytest.mark.parametrize("route", URL_ROUTES)
def test_unreachable_url_with_private_urls_allowed(
    settings: Settings, client: TestClient, route: Route
) -> None:
    settings.allow_private_urls = True
    url = f"http://127.0.0.1:{closed_port()}/cat.png"
    assert_error(submit(client, route, url), flavour_of(route), 400)


@pytest.mark.parametrize("route", ROUTES)
def test_ten_thousand_character_prompt(client: TestClient, route: Route) -> None:
    response = submit(client, route, png(), prompt="a" * 10_000)
    assert_error(response, flavour_of(route), validation_status(route))


def numeric_field(route: Route, kind: str) -> str:
    flavour = flavour_of(route)
    if kind == "steps":
        return STEPS_FIELD.get(flavour, "steps")
    return GUIDANCE_FIELD.get(flavour, "guidance_scale")


JSON_ROUTES: tuple[Route, ...] = ("wavespeed", "generations", "reasoning", "native")


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_in_json(client: TestClient, route: Route, literal: str) -> None:
    field = numeric_field(route, "guidance")
    base = {**BASE_FIELDS[flavour_of(route)], "prompt": "p", "image": as_data_uri(png())}
    raw = json.dumps(base)[:-1] + f', "{field}": {literal}}}'
    assert_error(submit_raw_json(client, route, raw), flavour_of(route), (400, 422))


@pytest.mark.parametrize("route", ["openai_edits", "reasoning_form", "native_form"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_nan_and_infinity_in_forms(client: TestClient, route: Route, value: str) -> None:
    response = submit(client, route, png(), **{numeric_field(route, "guidance"): value})
    assert_error(response, flavour_of(route), (400, 422))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("steps", -1),
        ("steps", 0),
        ("steps", 10**30),
        ("steps", 2**63),
        ("seed", -2),
        ("seed", 2**64),
        ("seed", -(10**40)),
        ("guidance", -1e308),
    ],
)
def test_out_of_range_numbers(client: TestClient, route: Route, kind: str, value: int) -> None:
    field = "seed" if kind == "seed" else numeric_field(route, kind)
    response = submit(client, route, png(), **{field: value})
    assert_error(response, flavour_of(route), (400, 422))


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": 42},
        {"prompt": ["a", "b"]},
        {"prompt": None},
        {"image": 12345},
        {"image": {"url": "http://example.com/a.png"}},
        {"image": ["data:image/png;base64,AAAA"]},
        {"seed": "abc"},
        {"seed": 1.5},
        {"guidance_scale": "high"},
        {"guidance_scale": [1]},
        {"negative_prompt": {"x": 1}},
    ],
)
def test_wrong_types_in_json(client: TestClient, route: Route, fields: dict[str, Any]) -> None:
    body = {**BASE_FIELDS[flavour_of(route)], "prompt": "p", "image": as_data_uri(png())}
    body.update(fields)
    response = client.post(PATHS[flavour_of(route)], json=body)
    assert_error(response, flavour_of(route), (400, 422))


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("raw", ["[]", '"text"', "123", "null", "{", '{"prompt": }', "\xff\xfe"])
def test_json_that_is_not_an_object(client: TestClient, route: Route, raw: str) -> None:
    assert_error(submit_raw_json(client, route, raw), flavour_of(route), (400, 422))


UNKNOWN_IDS = [
    "0123456789abcdef0123456789abcdef",
    "does-not-exist",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "' OR 1=1 --",
    "x" * 5000,
]


@pytest.mark.parametrize("prediction_id", UNKNOWN_IDS)
@pytest.mark.parametrize(
    ("flavour", "method", "template"),
    [
        ("wavespeed", "GET", "/api/v3/predictions/{}/result"),
        ("wavespeed", "GET", "/api/v3/predictions/{}"),
        ("native", "GET", "/v1/jobs/{}"),
        ("native", "POST", "/v1/jobs/{}/cancel"),
        ("native", "GET", "/v1/jobs/{}/events"),
        ("native", "GET", "/files/{}"),
        ("native", "GET", "/files/{}.png"),
    ],
)
def test_unknown_prediction_ids(
    client: TestClient, flavour: str, method: str, template: str, prediction_id: str
) -> None:
    response = client.request(method, template.format(prediction_id))
    # an id with an encoded slash leaves the route: the static playground answers POST with 405
    assert_error(response, flavour, (404, 405) if "%2F" in prediction_id else 404)


@pytest.mark.parametrize("route", ["reasoning_form", "native_form"])
@pytest.mark.parametrize("second", ["file", "text"])
def test_two_images_in_one_form_are_refused(client: TestClient, route: Route, second: str) -> None:
    flavour = flavour_of(route)
    fields = {**BASE_FIELDS[flavour], "prompt": "make it blue"}
    files: list[tuple[str, Any]] = [("image", ("a.png", png(), "image/png"))]
    if second == "file":
        files.append(("image", ("b.png", png(), "image/png")))
    else:
        files.append(("image", (None, as_data_uri(png()))))
    body = assert_error(client.post(PATHS[flavour], data=fields, files=files), flavour, 400)
    assert body["error"]["param"] == "image"
    assert client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("raw", ["[]", "{", "null"])
def test_a_body_that_is_no_json_object_names_the_body(
    client: TestClient, route: Route, raw: str
) -> None:
    body = assert_error(submit_raw_json(client, route, raw), flavour_of(route), (400, 422))
    if flavour_of(route) in ("reasoning", "native"):
        assert body["error"]["param"] == "body"


def test_a_bad_header_names_the_header(client: TestClient) -> None:
    response = client.post(
        PATHS["native"],
        data={"prompt": "p"},
        files={"image": ("a.png", png(), "image/png")},
        headers={"Idempotency-Key": "k" * 300},
    )
    body = assert_error(response, "native", 422)
    assert body["error"]["param"] == "idempotency-key"
    assert body["error"]["message"].startswith("idempotency-key: ")
