"""Masks, outpaint and the region switches on every flavour (docs/regions.md).

With the fake editor: each flavour's mask reaches the editor as the same "L" image, whatever form
it came in (a data URI, base64, a URL, a multipart file, an alpha channel); a bad mask is refused
at submit, in the flavour's own error shape, before any job exists. With the tiny random model:
a masked edit through the native API and WaveSpeed keeps every pixel outside the mask exactly,
equals `stepedit edit --mask`, and reports its region as a downloadable `region_mask_url`.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tiny_app import TINY_MODEL, download, in_process, wait_for_job  # type: ignore[import-not-found]

from stepedit.cli import main
from stepedit.engine import FakeEditor
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

WIDTH, HEIGHT = 96, 64


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def source_image(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)
    )


def left_half_mask(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """White (may change) on the left half, black (keep) on the right."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return mask


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def no_jobs(service: JobService) -> bool:
    return sum(service.count_by_status().values()) == 0


# --- one request per flavour ---------------------------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    """How one flavour sends an edit with a mask, and reads its error body."""

    send: Callable[[TestClient, bytes, bytes | None, dict[str, Any]], httpx.Response]
    error_param: Callable[[httpx.Response], str | None]  # the field its error names (or None)

    def error_text(self, response: httpx.Response) -> str:
        body = response.json()
        return str(body["error"]["message"] if "error" in body else body["message"])


def send_native_json(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    body = {"prompt": "paint it", "image": data_uri(image), "num_inference_steps": 2, **fields}
    if mask is not None:
        body["mask"] = data_uri(mask)
    response = client.post("/v1/jobs", json=body)
    return finished_native(client, response)


def send_native_form(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    files = {"image": ("a.png", image, "image/png")}
    if mask is not None:
        files["mask"] = ("m.png", mask, "image/png")
    data = {"prompt": "paint it", "num_inference_steps": "2", **fields}
    return finished_native(client, client.post("/v1/jobs", data=data, files=files))


def finished_native(client: TestClient, response: httpx.Response) -> httpx.Response:
    """The native API answers at once; the tests compare what reached the editor, so wait."""
    if response.status_code != 202:
        return response
    wait_for_job(client, response.json()["id"])
    return client.get(f"/v1/jobs/{response.json()['id']}")


def send_wavespeed(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    body = {"prompt": "paint it", "image": data_uri(image), "enable_sync_mode": True}
    if mask is not None:
        body["mask"] = base64.b64encode(mask).decode()  # raw base64, as the seed's image may be
    return client.post("/api/v3/wavespeed-ai/step1x-edit", json={**body, **fields})


def send_openai_edits(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    files = {"image": ("a.png", image, "image/png")}
    if mask is not None:
        files["mask"] = ("m.png", mask, "image/png")
    data = {"model": "step-1x-edit", "prompt": "paint it", "steps": "2", **fields}
    return client.post("/v1/images/edits", data=data, files=files)


def send_generations(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    body = {"model": "stepfun-ai/step1x-edit", "prompt": "paint it", "image": data_uri(image)}
    if mask is not None:
        body["mask"] = data_uri(mask)
    return client.post("/v1/images/generations", json={**body, "steps": 2, **fields})


def send_reasoning_json(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    body = {"model": "step1x-edit", "prompt": "paint it", "image": data_uri(image), "steps": 2}
    if mask is not None:
        body.update(mask=data_uri(mask), operation="inpaint")
    return client.post("/v1/image/edit/", json={**body, **fields})


def send_reasoning_form(
    client: TestClient, image: bytes, mask: bytes | None, fields: dict[str, Any]
) -> httpx.Response:
    files = {"image": ("a.png", image, "image/png")}
    data = {"model": "step1x-edit", "prompt": "paint it", "steps": "2", **fields}
    if mask is not None:
        files["mask"] = ("m.png", mask, "image/png")
        data["operation"] = "inpaint"
    return client.post("/v1/image/edit/", data=data, files=files)


def native_param(response: httpx.Response) -> str | None:
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"}
    return error["param"]  # type: ignore[no-any-return]


def openai_param(response: httpx.Response) -> str | None:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["param"]  # type: ignore[no-any-return]


def wavespeed_param(response: httpx.Response) -> str | None:
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == response.status_code
    return None  # the seed's body names no field; the message does


def generations_param(response: httpx.Response) -> str | None:
    error = response.json()["error"]
    assert error["param"] == response.headers["x-request-id"]  # seed 003: the request id
    return None


FLAVOURS = {
    "native json": Flavour(send_native_json, native_param),
    "native form": Flavour(send_native_form, native_param),
    "wavespeed": Flavour(send_wavespeed, wavespeed_param),
    "openai_edits": Flavour(send_openai_edits, openai_param),
    "generations": Flavour(send_generations, generations_param),
    "reasoning json": Flavour(send_reasoning_json, native_param),
    "reasoning form": Flavour(send_reasoning_form, native_param),
}


def succeeded(response: httpx.Response) -> None:
    assert response.status_code in (200, 202), response.text
    body = response.json()
    data = body.get("data")
    status = data.get("status") if isinstance(data, dict) else body.get("status")
    assert status in (None, "succeeded", "completed"), response.text  # None: answered the result


# --- the mask reaches the editor ---------------------------------------------------------------


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_each_flavour_hands_the_editor_the_same_mask(
    client: TestClient, fake_editor: FakeEditor, flavour: str
) -> None:
    mask = left_half_mask()
    succeeded(FLAVOURS[flavour].send(client, png(source_image()), png(mask), {}))
    (sent,) = fake_editor.masks
    assert sent is not None and sent.mode == "L" and sent.tobytes() == mask.tobytes()
    request = fake_editor.calls[-1]
    assert request.preserve_outside_mask is True and request.preserve_unedited is False


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_each_flavour_takes_the_region_switches(
    client: TestClient, fake_editor: FakeEditor, flavour: str
) -> None:
    switches: dict[str, Any] = {"preserve_outside_mask": False, "preserve_unedited": True}
    if "form" in flavour or flavour == "openai_edits":  # multipart fields are text
        switches = {"preserve_outside_mask": "false", "preserve_unedited": "true"}
    mask = png(left_half_mask())
    succeeded(FLAVOURS[flavour].send(client, png(source_image()), mask, switches))
    request = fake_editor.calls[-1]
    assert request.preserve_outside_mask is False and request.preserve_unedited is True


def test_no_mask_is_no_mask(client: TestClient, fake_editor: FakeEditor) -> None:
    for flavour in FLAVOURS.values():
        succeeded(flavour.send(client, png(source_image()), None, {}))
    assert fake_editor.masks == [None] * len(FLAVOURS)


def test_an_alpha_mask_and_a_smaller_mask_mean_the_same(
    client: TestClient, fake_editor: FakeEditor
) -> None:
    """OpenAI's convention (transparent = may change) and a mask of the image's aspect ratio at
    half the size (resized) reach the editor as the grey mask of the image's size."""
    alpha = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), (0, 0, WIDTH // 2, HEIGHT))
    succeeded(send_openai_edits(client, png(source_image()), png(alpha), {}))
    small = left_half_mask(WIDTH // 2, HEIGHT // 2)
    succeeded(send_native_json(client, png(source_image()), png(small), {}))
    by_alpha, resized = fake_editor.masks
    assert by_alpha is not None and by_alpha.tobytes() == left_half_mask().tobytes()
    assert resized is not None and resized.size == (WIDTH, HEIGHT)


class _MaskFile(BaseHTTPRequestHandler):
    body = png(left_half_mask())

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mask_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MaskFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mask.png"
    server.shutdown()


def test_a_mask_url_is_fetched_as_images_are(
    settings: Settings, client: TestClient, fake_editor: FakeEditor, mask_url: str
) -> None:
    """Through the SSRF-safe fetcher: a loopback URL is refused by default, like an image's."""
    body = {"prompt": "p", "image": data_uri(png(source_image())), "mask": mask_url}
    refused = client.post("/api/v3/wavespeed-ai/step1x-edit", json=body)
    assert refused.status_code == 400 and "mask" in refused.json()["message"]
    settings.allow_private_urls = True
    succeeded(
        client.post("/api/v3/wavespeed-ai/step1x-edit", json=body | {"enable_sync_mode": True})
    )
    (sent,) = fake_editor.masks
    assert sent is not None and sent.tobytes() == left_half_mask().tobytes()


# --- bad masks: refused at submit, in each flavour's shape ----------------------------------------


def bomb() -> bytes:
    """A small file that declares more pixels than any flavour decodes (5000 x 5000)."""
    return png(Image.new("L", (5000, 5000), 0))


BAD_MASKS: dict[str, tuple[Callable[[], bytes], str]] = {
    "another aspect ratio": (lambda: png(left_half_mask(WIDTH, WIDTH)), "96x96"),
    "not an image": (lambda: b"this is not a picture", "not an image"),
    "a decompression bomb": (bomb, "5000x5000"),
    "truncated": (lambda: png(left_half_mask())[:60], "mask"),
    "a float mask": (lambda: _tiff_float(), "tiff"),
}


def _tiff_float() -> bytes:
    buffer = io.BytesIO()
    Image.new("F", (WIDTH, HEIGHT), 1.0).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("bad", list(BAD_MASKS))
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_bad_mask_is_refused_at_submit_in_the_flavours_shape(
    client: TestClient,
    job_service: JobService,
    fake_editor: FakeEditor,
    flavour: str,
    bad: str,
) -> None:
    make, said = BAD_MASKS[bad]
    response = FLAVOURS[flavour].send(client, png(source_image()), make(), {})
    # 400, or 415 where the flavour answers an image format it does not take so (native's and
    # seed 004's convention, for images and masks alike)
    assert response.status_code in (400, 415), response.text
    if response.status_code == 415:
        assert flavour.startswith(("native", "reasoning")) and bad in (
            "not an image",
            "a float mask",
        )
    names_no_field = flavour in ("wavespeed", "generations")  # their bodies name no field
    assert FLAVOURS[flavour].error_param(response) == (None if names_no_field else "mask")
    text = FLAVOURS[flavour].error_text(response).lower()
    assert "mask" in text and said in text
    assert no_jobs(job_service) and fake_editor.calls == []


def test_a_mask_with_an_outpaint_is_refused(client: TestClient, job_service: JobService) -> None:
    response = send_native_json(
        client, png(source_image()), png(left_half_mask()), {"outpaint_padding": [0, 0, 16, 0]}
    )
    assert response.status_code == 400 and native_param(response) == "mask"
    assert "outpaint makes its own mask" in response.json()["error"]["message"]
    assert no_jobs(job_service)


# --- Free.ai's operations -----------------------------------------------------------------------


def test_free_ai_mask_only_with_inpaint(client: TestClient, job_service: JobService) -> None:
    body = {
        "model": "step1x-edit",
        "prompt": "p",
        "image": data_uri(png(source_image())),
        "mask": data_uri(png(left_half_mask())),
    }
    response = client.post("/v1/image/edit/", json=body)  # operation defaults to img2img
    assert response.status_code == 400 and native_param(response) == "mask"
    response = client.post("/v1/image/edit/", json={**body, "mask": None, "operation": "inpaint"})
    assert response.status_code == 400 and native_param(response) == "mask"
    assert no_jobs(job_service)


@pytest.mark.parametrize(
    "fields",
    [
        {"outpaint_padding": [0, 0, 32, 0]},
        {"outpaint_padding": "right=32"},
        {"outpaint_aspect_ratio": "16:9"},
        {"outpaint_aspect_ratio": 2.0},
    ],
)
def test_free_ai_outpaint_reaches_the_editor(
    client: TestClient, fake_editor: FakeEditor, fields: dict[str, Any]
) -> None:
    body = {"model": "step1x-edit", "image": data_uri(png(source_image())), "steps": 2}
    response = client.post("/v1/image/edit/", json={**body, "operation": "outpaint", **fields})
    assert response.status_code == 200, response.text
    assert response.json()["operation"] == "outpaint"
    request = fake_editor.calls[-1]
    assert request.is_outpaint and request.prompt == ""  # the default instruction applies
    assert fake_editor.masks == [None]  # outpaint makes its own mask, in the pipeline


def test_free_ai_outpaint_fields_only_with_outpaint(client: TestClient) -> None:
    body = {"model": "step1x-edit", "prompt": "p", "image": data_uri(png(source_image()))}
    response = client.post("/v1/image/edit/", json={**body, "outpaint_aspect_ratio": "16:9"})
    assert response.status_code == 400 and native_param(response) == "outpaint_aspect_ratio"


@pytest.mark.parametrize(
    ("url", "fields", "status"),
    [
        ("/v1/jobs", {"prompt": "p"}, 400),
        ("/v1/image/edit/", {"model": "step1x-edit", "operation": "outpaint"}, 400),
    ],
)
def test_outpaint_beyond_the_flavours_size_limit_is_refused_at_submit(
    app: Any,
    client: TestClient,
    job_service: JobService,
    url: str,
    fields: dict[str, Any],
    status: int,
) -> None:
    """The flavour's limits (here the server's max_input_pixels) apply to the outpainted result,
    not only to the source."""
    app.state.settings = app.state.settings.model_copy(update={"max_input_pixels": 100 * 100})
    image = data_uri(png(source_image()))  # 96x64: within the limit
    grown = client.post(url, json={**fields, "image": image, "outpaint_padding": [0, 0, 0, 200]})
    assert grown.status_code == status, grown.text
    error = grown.json()["error"]
    assert error["param"] == "outpaint_padding" and "outpainted image is 96x264" in error["message"]
    assert no_jobs(job_service)
    fits = client.post(url, json={**fields, "image": image, "outpaint_padding": [0, 0, 32, 0]})
    assert fits.status_code in (200, 202), fits.text


# --- the tiny random model, end to end ------------------------------------------------------------

MODEL = TINY_MODEL
STEPS, LEVEL, SEED = 2, 512, 11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        model=MODEL,
        device="cpu",
        data_dir=tmp_path_factory.mktemp("data"),
        safety_checker=False,
        public_base_url="http://testserver",
    )
    with in_process(settings) as client:
        yield client


def cli_edit(tmp_path: Path, image: Image.Image, *args: str) -> Image.Image:
    source, output = tmp_path / "source.png", tmp_path / "cli.png"
    image.save(source)
    common = ["--model", MODEL, "--device", "cpu", "--size", str(LEVEL), "--steps", str(STEPS)]
    command = ["edit", str(source), "paint it", "-o", str(output), *common, "--seed", str(SEED)]
    assert main([*command, "--no-progress", *args]) == 0
    return Image.open(output).convert("RGB")


@pytest.mark.slow
def test_native_masked_edit_keeps_the_outside_exactly_and_equals_the_cli(
    tiny: TestClient, tmp_path: Path
) -> None:
    source, mask = source_image(96, 64), left_half_mask(96, 64)
    fields = {"seed": SEED, "num_inference_steps": STEPS, "size_level": LEVEL}
    job = send_native_json(tiny, png(source), png(mask), fields).json()
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    edited = download(tiny, output["url"]).convert("RGB")
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(edited)[outside], np.asarray(source)[outside])
    assert not np.array_equal(np.asarray(edited), np.asarray(source))  # the inside changed
    # the same edit from the command line, with the same mask file
    (tmp_path / "mask.png").write_bytes(png(mask))
    expected = cli_edit(tmp_path, source, "--mask", str(tmp_path / "mask.png"))
    assert edited.tobytes() == expected.tobytes()
    region = download(tiny, output["region_mask_url"])
    assert region.mode == "L" and region.tobytes() == mask.tobytes()


@pytest.mark.slow
def test_wavespeed_masked_edit_keeps_the_outside_exactly(tiny: TestClient) -> None:
    """WaveSpeed's wire has no size: the edit runs at 1024 px (one step keeps it short)."""
    source, mask = source_image(96, 64), left_half_mask(96, 64)
    response = send_wavespeed(tiny, png(source), png(mask), {"num_inference_steps": 1})
    assert response.status_code == 200 and response.json()["data"]["status"] == "completed"
    (url,) = response.json()["data"]["outputs"]
    edited = np.asarray(download(tiny, url).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(edited[outside], np.asarray(source)[outside])
    assert not np.array_equal(edited[~outside], np.asarray(source)[~outside])


@pytest.mark.slow
def test_preserve_unedited_reports_its_estimated_region(tiny: TestClient) -> None:
    fields = {
        "seed": SEED,
        "num_inference_steps": 5,
        "size_level": LEVEL,
        "preserve_unedited": True,
    }
    job = send_native_json(tiny, png(source_image(96, 64)), None, fields).json()
    assert job["status"] == "succeeded", job
    region = download(tiny, job["outputs"][0]["region_mask_url"])
    assert region.mode == "L" and region.size == (96, 64)
    plain = send_native_json(
        tiny, png(source_image(96, 64)), None, {"num_inference_steps": 1, "size_level": LEVEL}
    ).json()
    assert plain["outputs"][0]["region_mask_url"] is None


@pytest.mark.slow
def test_free_ai_outpaint_returns_the_canvas_with_the_source_in_place(tiny: TestClient) -> None:
    source = source_image(96, 64)
    body = {
        "model": "step1x-edit",
        "operation": "outpaint",
        "image": data_uri(png(source)),
        "outpaint_padding": "right=32,bottom=16",
        "steps": 1,  # at 1024 px: seed 004's wire has no size
        "seed": SEED,
    }
    response = tiny.post("/v1/image/edit/", json=body)
    assert response.status_code == 200, response.text
    canvas = download(tiny, response.json()["data"][0]["url"]).convert("RGB")
    assert canvas.size == (128, 80)
    assert canvas.crop((0, 0, 96, 64)).tobytes() == source.tobytes()
