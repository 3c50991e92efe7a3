"""The safety checker for real: NudeNet (its ONNX model ships in the wheel, runs on CPU) on
benign images, and the service path from a flag to `has_nsfw_contents` / `finish_reason`.

The flagged case uses a stub checker: a real NSFW image is not something to ship in a repo.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker, load_safety_checker
from stepedit.engine.safety import NudeNetChecker, SafetyChecker
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

SOURCE_COLOR = (20, 120, 200)


def landscape() -> Image.Image:
    """Sky, sun, hills: nothing a nudity detector should flag."""
    image = Image.new("RGB", (320, 240), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((230, 20, 290, 80), fill=(250, 220, 60))
    draw.polygon([(0, 240), (90, 120), (200, 240)], fill=(40, 130, 60))
    draw.polygon([(120, 240), (250, 110), (320, 200), (320, 240)], fill=(30, 100, 50))
    return image


def stripes() -> Image.Image:
    image = Image.new("RGB", (256, 256), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x in range(0, 256, 32):
        draw.rectangle((x, 0, x + 15, 255), fill=(200, 40, 40))
    return image


@pytest.fixture(scope="module")
def nudenet_checker() -> NudeNetChecker:
    pytest.importorskip("nudenet")
    return NudeNetChecker()


def test_nudenet_does_not_flag_benign_images(nudenet_checker: NudeNetChecker) -> None:
    images = [landscape(), stripes(), Image.new("RGB", (64, 64), SOURCE_COLOR)]
    assert nudenet_checker.check(images) == [False, False, False]


def test_nudenet_takes_any_mode_and_size(nudenet_checker: NudeNetChecker) -> None:
    images = [landscape().convert("L"), stripes().convert("RGBA"), Image.new("P", (17, 900))]
    assert nudenet_checker.check(images) == [False, False, False]


def test_load_safety_checker_gives_nudenet_when_enabled() -> None:
    pytest.importorskip("nudenet")
    assert isinstance(load_safety_checker(True), NudeNetChecker)
    assert load_safety_checker(False) is None


class FlagEverything:
    """A SafetyChecker that flags every image (stands in for a real NSFW detection)."""

    def __init__(self) -> None:
        self.checked = 0

    def check(self, images: list[Image.Image]) -> list[bool]:
        self.checked += len(images)
        return [True] * len(images)


def serve(tmp_path: Path, checker: SafetyChecker, *, nsfw_filter: bool) -> Iterator[TestClient]:
    settings = Settings(
        model="fake",
        data_dir=tmp_path / "data",
        nsfw_filter=nsfw_filter,
        public_base_url="http://testserver",
    )
    service = JobService(settings)
    service.recover()
    editor = FakeEditor()
    worker = InProcessWorker(
        service, lambda: editor, load_safety=lambda: checker, nsfw_filter=nsfw_filter, poll_s=0.02
    )
    worker.start()
    deadline = time.monotonic() + 5
    while not service.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
    with TestClient(create_app(settings, service)) as client:
        yield client
    worker.stop()
    service.close()


@pytest.fixture(params=[True, False], ids=["filter-on", "filter-off"])
def nsfw_filter(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def flagging_client(tmp_path: Path, nsfw_filter: bool) -> Iterator[TestClient]:
    yield from serve(tmp_path, FlagEverything(), nsfw_filter=nsfw_filter)


def png_upload() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), SOURCE_COLOR).save(buffer, format="PNG")
    return buffer.getvalue()


def inverted(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return (255 - color[0], 255 - color[1], 255 - color[2])


def test_flagged_output_is_content_filtered_on_openai_edits(
    flagging_client: TestClient, nsfw_filter: bool
) -> None:
    response = flagging_client.post(
        "/v1/images/edits",
        data={"model": "step-1x-edit", "prompt": "add a hat", "response_format": "b64_json"},
        files={"image": ("cat.png", png_upload(), "image/png")},
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert item["finish_reason"] == "content_filtered"
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB")
    # filtering on: a black image; off: the edited image (the fake editor inverts), flag kept
    expected = (0, 0, 0) if nsfw_filter else inverted(SOURCE_COLOR)
    assert image.getpixel((10, 10)) == expected


def test_flagged_output_is_reported_on_wavespeed(
    flagging_client: TestClient, nsfw_filter: bool
) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png_upload()).decode()
    response = flagging_client.post(
        "/api/v3/wavespeed-ai/step1x-edit",
        json={"prompt": "add a hat", "image": data_uri, "enable_sync_mode": True},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["status"] == "completed"
    assert data["has_nsfw_contents"] == [True]
    output = flagging_client.get(data["outputs"][0].removeprefix("http://testserver"))
    pixel = Image.open(io.BytesIO(output.content)).convert("RGB").getpixel((10, 10))
    assert pixel == ((0, 0, 0) if nsfw_filter else inverted(SOURCE_COLOR))


def test_benign_output_passes_the_real_checker(tmp_path: Path) -> None:
    pytest.importorskip("nudenet")
    for client in serve(tmp_path, NudeNetChecker(), nsfw_filter=True):
        response = client.post(
            "/v1/images/edits",
            data={"model": "step-1x-edit", "prompt": "add a hat"},
            files={"image": ("cat.png", png_upload(), "image/png")},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["finish_reason"] == "success"
