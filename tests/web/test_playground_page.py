"""The playground page against stubbed API answers (shapes from CONTRACTS.md's native job API).

Fast and deterministic: every error the page must explain is produced on demand here, which a
real server with a tiny model cannot easily do (a full queue, a filtered result). The
end-to-end run against the real server is in test_playground_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playground_support import RECORD_PROGRESS, png_bytes, requires_chromium

pytestmark = [pytest.mark.slow, requires_chromium]

JOB_ID = "job_0123456789"
OUTPUT_URL = "/files/tok_abc.png"
EXAMPLES = [
    "Change hair color to red",
    "Add sunglasses",
    "Change the background to a beach",
    "Make the dress blue",
    "Remove the hat",
    "Add a smile",
    "Change season to winter",
]


def job_view(status: str, *, step: int = 0, total: int = 30, **extra: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": JOB_ID,
        "status": status,
        "created_at": "2026-11-24T12:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "request": {"prompt": "Add sunglasses", "num_inference_steps": total},
        "seed": 1234,
        "progress": {"step": step, "total_steps": total, "stage": "denoise"},
        "outputs": [],
        "prompt_used": "Add sunglasses",
        "passes": ["diffusion"],
        "error": None,
        "timings": {"inference_ms": 2500.0},
    }
    view.update(extra)
    return view


def succeeded(nsfw: bool = False) -> dict[str, Any]:
    return job_view("succeeded", step=30, outputs=[{"url": OUTPUT_URL, "seed": 1234, "nsfw": nsfw}])


def sse(*views: dict[str, Any]) -> str:
    return "".join(f"event: job\ndata: {json.dumps(view)}\n\n" for view in views)


def error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message, "param": None}})


def stub_server(page: Any, submit: Any, *, authorized: Any = None) -> dict[str, list[Any]]:
    """Route the API: `submit(request)` answers POST /v1/jobs as (status, body dict or str).

    Returns the requests seen, by name, for assertions.
    """
    seen: dict[str, list[Any]] = {"jobs": [], "enhance": []}

    def health(route: Any) -> None:
        route.fulfill(json={"status": "ok", "model_version": "v1.1"})

    def jobs(route: Any) -> None:
        seen["jobs"].append(route.request)
        status, body = submit(route.request)
        text = body if isinstance(body, str) else json.dumps(body)
        route.fulfill(status=status, body=text, content_type="application/json")

    def events(route: Any) -> None:
        steps = [job_view("processing", step=s) for s in (1, 10, 20, 30)]
        route.fulfill(body=sse(*steps, succeeded()), content_type="text/event-stream")

    def output(route: Any) -> None:
        route.fulfill(body=png_bytes(), content_type="image/png")

    page.route("**/health", health)
    page.route("**/v1/jobs", jobs)
    page.route(f"**/v1/jobs/{JOB_ID}/events", events)
    page.route(f"**/v1/jobs/{JOB_ID}", lambda route: route.fulfill(json=succeeded()))
    page.route(f"**{OUTPUT_URL}", output)
    return seen


def choose_image(page: Any, tmp_path: Path) -> None:
    source = tmp_path / "portrait.png"
    source.write_bytes(png_bytes())
    page.set_input_files("#image-file", str(source))
    page.wait_for_selector("#source-preview:not([hidden])")


def test_every_control_is_labelled_and_defaults_follow_the_seed(page: Any, static_url: str) -> None:
    page.goto(static_url)
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
    assert page.get_by_label("Guidance scale", exact=True).input_value() == "4"
    assert page.get_by_label("Steps", exact=True).input_value() == "30"
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
    assert body["guidance_scale"] == 4
    assert body["num_inference_steps"] == 30
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
