"""The playground end to end: Debian's Chromium drives the page served by a real `stepedit serve`
with the tiny random model (a few seconds per edit on CPU), API keys required."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LIVE_API_KEY, LIVE_MAX_UPLOAD_BYTES, LiveServer
from playground_support import RECORD_PROGRESS, png_bytes, requires_chromium

pytestmark = [pytest.mark.slow, requires_chromium]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 6


def with_key(page: Any) -> None:
    page.add_init_script(f"localStorage.setItem('stepedit.apiKey', '\"{LIVE_API_KEY}\"')")


def test_upload_run_watch_progress_and_download(
    browser: Any, live_url: str, tmp_path: Path, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.add_init_script(RECORD_PROGRESS)
    page.goto(live_url)
    page.get_by_text("Server ready").wait_for()

    source = tmp_path / "portrait.png"
    source.write_bytes(png_bytes(160, 128))
    page.set_input_files("#image-file", str(source))
    page.get_by_role("button", name="Change hair color to red").click()
    if is_dummy():  # the random model's own defaults: a first try takes seconds
        assert page.get_by_label("Size").input_value() == "512"
        assert page.get_by_label("Steps", exact=True).input_value() == "28"
        assert "noise" in page.locator("#model-hint").inner_text()
    page.get_by_label("Steps value").fill(str(STEPS))
    page.get_by_label("Size").select_option("512")
    page.get_by_role("button", name="Run").click()

    # The server requires a key: the page asks for it, then the run goes through.
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    dialog.get_by_label("API key").fill(LIVE_API_KEY)
    dialog.get_by_role("button", name="Save").click()
    page.get_by_role("button", name="Run").click()

    page.wait_for_selector("#outputs img.result-image", timeout=240_000)
    seen = page.evaluate("window.__progress")
    assert any(text.startswith("Step ") and text.endswith(f"of {STEPS}") for text in seen), seen
    assert seen[-1].startswith("Done")
    assert page.locator(".seed-used").inner_text().startswith("Seed ")
    assert page.locator("#compare-before").get_attribute("src")
    page.screenshot(path=str(artifacts / "playground-e2e-desktop.png"), full_page=True)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download image 1").click()
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.suffix == ".png"
    assert saved.read_bytes().startswith(PNG_SIGNATURE)

    assert "Change hair color to red" in page.locator(".history-item").first.inner_text()

    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artifacts / "playground-e2e-phone.png"), full_page=True)
    context.close()


def is_dummy() -> bool:
    return os.environ.get("STEPEDIT_WEB_TEST_MODEL", "dummy:").startswith("dummy:")


def test_health_and_the_start_up_log_say_the_model_is_a_dummy(live_server: LiveServer) -> None:
    if not is_dummy():
        pytest.skip("STEPEDIT_WEB_TEST_MODEL is not a dummy: model")
    body = httpx.get(f"{live_server.url}/health", timeout=10).json()
    assert body["model_version"] == "v1.1"
    assert body["is_dummy_model"] is True
    assert body["defaults"] == {"guidance_scale": 6.0, "num_inference_steps": 28, "size_level": 512}
    log = live_server.log.read_text(errors="replace")
    assert f"playground: {live_server.url}/ " in log
    assert f"API docs: {live_server.url}/docs" in log
    assert "random weights: every edit comes out as noise" in log


def test_non_image_upload_is_explained(page: Any, live_url: str, tmp_path: Path) -> None:
    with_key(page)
    page.goto(live_url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.set_input_files("#image-file", str(notes))
    assert "not a supported image" in page.get_by_role("alert").inner_text()
    page.get_by_label("Instruction", exact=True).fill("Add a smile")
    page.get_by_role("button", name="Run").click()
    assert "Choose an image" in page.get_by_role("alert").inner_text()


def test_too_large_upload_is_explained_by_the_server(
    page: Any, live_url: str, tmp_path: Path
) -> None:
    with_key(page)
    page.goto(live_url)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(400, 400, noisy=True))
    assert big.stat().st_size > LIVE_MAX_UPLOAD_BYTES
    page.set_input_files("#image-file", str(big))
    page.get_by_label("Instruction", exact=True).fill("Add a smile")
    page.get_by_role("button", name="Run").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "too large" in alert.inner_text()
