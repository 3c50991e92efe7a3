"""The playground page against stubbed API answers (shapes from CONTRACTS.md's native job API).

Fast and deterministic: every error the page must explain is produced on demand here, which a
real server with a tiny model cannot easily do (a full queue, a filtered result). The
end-to-end run against the real server is in test_playground_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playground_support import (
    JOB_ID,
    RECORD_PROGRESS,
    choose_image,
    error_body,
    job_view,
    requires_chromium,
    sse,
    stub_server,
    succeeded,
)

pytestmark = [pytest.mark.slow, requires_chromium]

EXAMPLES = [
    "Change hair color to red",
    "Add sunglasses",
    "Change the background to a beach",
    "Make the dress blue",
    "Remove the hat",
    "Add a smile",
    "Change season to winter",
]


def test_every_control_is_labelled_and_defaults_are_the_native_apis(
    page: Any, static_url: str
) -> None:
    page.goto(static_url)  # no /health here: the page keeps its own defaults
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((el) => {
              const named = (el.labels && el.labels.length) || el.getAttribute("aria-label")
                || el.getAttribute("aria-labelledby")
                || (el.tagName === "BUTTON" && el.textContent.trim());
              return !named;
            })
            .map((el) => el.outerHTML)"""
    )
    assert unlabelled == []
    assert page.get_by_label("Guidance scale", exact=True).input_value() == "6"
    assert page.get_by_label("Steps", exact=True).input_value() == "28"
    assert page.get_attribute("#guidance", "max") == "20"
    assert page.get_attribute("#steps", "min") == "1"
    assert page.get_attribute("#steps", "max") == "50"
    assert page.get_by_label("Seed", exact=True).input_value() == ""
    assert page.locator("#size option").all_inner_texts() == ["512 px", "768 px", "1024 px"]
    assert page.locator("#num-images option").all_inner_texts() == ["1", "2", "3", "4"]
    assert page.locator(".chip").all_inner_texts() == EXAMPLES

    # Keyboard only: a chip activated with Enter fills in the instruction.
    page.locator(".chip", has_text="Remove the hat").focus()
    page.keyboard.press("Enter")
    assert page.get_by_label("Instruction", exact=True).input_value() == "Remove the hat"


def test_stubbed_edit_shows_progress_result_seed_and_history(
    page: Any, static_url: str, tmp_path: Path
) -> None:
    seen = stub_server(page, lambda request: (202, job_view("queued")))
    page.add_init_script(RECORD_PROGRESS)
    page.goto(static_url)
    choose_image(page, tmp_path)
    page.get_by_role("button", name="Add sunglasses").click()
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_role("button", name="Run").click()

    page.wait_for_selector("#outputs img.result-image")
    assert "Step 10 of 30" in page.evaluate("window.__progress")
    body = seen["jobs"][0].post_data_json
    assert body["image"].startswith("data:image/png;base64,")
    assert body["prompt"] == "Add sunglasses"
    assert body["guidance_scale"] == 6
    assert body["num_inference_steps"] == 28
    assert body["negative_prompt"] == "blurry"
    assert body["size_level"] == 1024
    assert body["num_images"] == 1
    assert "seed" not in body  # empty seed: the server draws one
    assert "enable_thinking" not in body  # unchecked: the model version's default

    assert page.locator(".seed-used").inner_text() == "Seed 1234"
    page.get_by_role("button", name="Reuse seed 1234").click()
    assert page.get_by_label("Seed", exact=True).input_value() == "1234"
    with page.expect_download() as download:
        page.get_by_role("link", name="Download image 1").click()
    assert download.value.suggested_filename == f"stepedit-{JOB_ID}-1.png"

    # The edit is remembered in this browser and restores its parameters.
    page.reload()
    item = page.locator(".history-item").first
    assert "Add sunglasses" in item.inner_text()
    assert "seed 1234" in item.inner_text()
    item.click()
    assert page.get_by_label("Instruction", exact=True).input_value() == "Add sunglasses"
    assert page.get_by_label("Negative prompt").input_value() == "blurry"
    assert page.get_by_label("Seed", exact=True).input_value() == "1234"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (413, error_body("payload_too_large", "upload exceeds 10 MB"), "image is too large"),
        (415, error_body("unsupported_media_type", "image/gif"), "not a supported image"),
        (429, error_body("queue_full", "32 jobs queued"), "queue is full"),
        (429, error_body("quota_exceeded", "daily quota"), "quota"),
        (400, error_body("invalid_request", "prompt is too long"), "prompt is too long"),
        (400, error_body("image_fetch_failed", "private address"), "could not be fetched"),
        (503, error_body("service_unavailable", "database down"), "not ready"),
        (202, succeeded(nsfw=True), "withheld by the content filter"),
        (
            202,
            job_view("failed", error={"code": "content_filtered", "message": "nsfw"}),
            "withheld by the content filter",
        ),
    ],
)
def test_api_errors_are_explained(
    page: Any, static_url: str, tmp_path: Path, status: int, body: Any, expected: str
) -> None:
    stub_server(page, lambda request: (status, body))
    page.goto(static_url)
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("Add sunglasses")
    page.get_by_role("button", name="Run").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert expected in alert.inner_text()
    assert page.get_by_role("button", name="Run").is_enabled()


def test_unauthorized_asks_for_a_key_and_sends_it_as_bearer(
    page: Any, static_url: str, tmp_path: Path
) -> None:
    def submit(request: Any) -> tuple[int, Any]:
        if request.headers.get("authorization") != "Bearer sk-test":
            return 401, error_body("unauthorized", "missing or invalid API key")
        return 202, job_view("queued")

    seen = stub_server(page, submit)
    page.goto(static_url)
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("Add a smile")
    page.get_by_role("button", name="Run").click()

    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert "requires an API key" in page.get_by_role("alert").inner_text()
    dialog.get_by_label("API key").fill("sk-test")
    dialog.get_by_role("button", name="Save").click()
    assert page.evaluate("localStorage.getItem('stepedit.apiKey')") == '"sk-test"'

    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#outputs img.result-image")
    assert seen["jobs"][-1].headers["authorization"] == "Bearer sk-test"


def test_prompt_enhancer_shows_the_enhanced_prompt_and_can_be_accepted(
    page: Any, static_url: str
) -> None:
    requests: list[Any] = []

    def enhance(route: Any) -> None:
        requests.append(route.request.post_data_json)
        route.fulfill(
            json={"prompt": "red hair", "enhanced_prompt": "Change the hair color to vivid red"}
        )

    page.route("**/v1/prompt/enhance", enhance)
    page.goto(static_url)
    page.get_by_label("Instruction", exact=True).fill("red hair")
    page.get_by_role("button", name="Prompt Enhancer").click()
    page.wait_for_selector("#enhanced:not([hidden])")
    assert page.locator("#enhanced-text").inner_text() == "Change the hair color to vivid red"
    page.get_by_role("button", name="Use this instruction").click()
    assert (
        page.get_by_label("Instruction", exact=True).input_value()
        == "Change the hair color to vivid red"
    )
    assert requests == [{"prompt": "red hair"}]


def test_non_image_is_refused_before_upload(page: Any, static_url: str, tmp_path: Path) -> None:
    seen = stub_server(page, lambda request: (202, job_view("queued")))
    page.goto(static_url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.set_input_files("#image-file", str(notes))
    assert "not a supported image" in page.get_by_role("alert").inner_text()

    disguised = tmp_path / "disguised.png"
    disguised.write_bytes(b"this is text with a .png name")
    page.set_input_files("#image-file", str(disguised))
    page.get_by_label("Instruction", exact=True).fill("Add a smile")
    page.get_by_text("could not be read as an image").wait_for()
    page.get_by_role("button", name="Run").click()
    assert "could not be read as an image" in page.get_by_role("alert").inner_text()
    assert seen["jobs"] == []


def test_phone_width_has_no_horizontal_scroll(
    browser: Any, static_url: str, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True)
    page = context.new_page()
    page.goto(static_url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artifacts / "playground-phone-empty.png"), full_page=True)
    context.close()


def test_cancel_stops_a_running_job(page: Any, static_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    canceled: list[str] = []
    stub_server(page, lambda request: (202, job_view("queued")))

    def events(route: Any) -> None:  # one step, then the stream ends: the page polls
        route.fulfill(body=sse(job_view("processing", step=3)), content_type="text/event-stream")

    def job(route: Any) -> None:
        status = "canceled" if canceled else "processing"
        route.fulfill(json=job_view(status, step=3))

    def cancel(route: Any) -> None:
        canceled.append(route.request.method)
        route.fulfill(json=job_view("canceled", step=3))

    page.route(f"**/v1/jobs/{JOB_ID}/events", events)
    page.route(f"**/v1/jobs/{JOB_ID}", job)
    page.route(f"**/v1/jobs/{JOB_ID}/cancel", cancel)
    page.goto(static_url)
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("Add a smile")
    page.get_by_role("button", name="Run").click()
    page.get_by_text("Step 3 of 30").wait_for()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Canceled.").wait_for()
    assert canceled == ["POST"]
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    assert page.locator("#outputs img").count() == 0


def test_enhancer_missing_on_the_server_is_explained(page: Any, static_url: str) -> None:
    page.route(  # what FastAPI answers for a route it does not have
        "**/v1/prompt/enhance",
        lambda route: route.fulfill(status=404, json={"detail": "Not Found"}),
    )
    page.goto(static_url)
    page.get_by_label("Instruction", exact=True).fill("red hair")
    page.get_by_role("button", name="Prompt Enhancer").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "Prompt Enhancer is not available" in alert.inner_text()
