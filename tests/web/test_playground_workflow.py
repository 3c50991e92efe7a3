"""The playground as a person uses it (issue 14), against stubbed API answers: errors beside
their field, the result brought into view, chains of edits in the history, the request as code
for every API flavour, and defaults that follow the loaded model.

Each state is saved as a screenshot, at desktop size (1280x900) and phone width (375 px),
under the test's tmp directory.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playground_support import (
    HEALTH,
    choose_image,
    error_body,
    in_viewport,
    job_view,
    output_png,
    phone_context,
    requires_chromium,
    stub_server,
)

pytestmark = [pytest.mark.slow, requires_chromium]

FLAVOURS = ["native", "wavespeed", "openai_edits", "generations", "reasoning"]


@pytest.fixture(params=["desktop", "phone"])
def any_page(request: pytest.FixtureRequest, browser: Any) -> Iterator[Any]:
    """The page at desktop size and at phone width; fails on uncaught script errors."""
    if request.param == "desktop":
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
    else:
        context = phone_context(browser)
    page = context.new_page()
    page.width_name = request.param
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"uncaught errors in the page: {script_errors}"


def screenshot(page: Any, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
    path = tmp_path / f"{name}-{getattr(page, 'width_name', 'desktop')}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def fill_form(page: Any, tmp_path: Path, prompt: str = "Add sunglasses") -> None:
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill(prompt)


# ---------- defaults ----------


def test_defaults_follow_the_loaded_model(page: Any, static_url: str) -> None:
    health = {
        **HEALTH,
        "model_version": "v1.2",
        "is_dummy_model": True,
        "defaults": {"guidance_scale": 5.5, "num_inference_steps": 20, "size_level": 512},
    }
    stub_server(page, lambda request: (202, job_view("queued")), health=health)
    page.goto(static_url)
    page.get_by_text("random test weights").wait_for()
    assert page.get_by_label("Guidance scale", exact=True).input_value() == "5.5"
    assert page.get_by_label("Steps", exact=True).input_value() == "20"
    assert page.get_by_label("Size").input_value() == "512"
    assert "noise" in page.locator("#model-hint").inner_text()

    # What the user sets is kept when the server is asked again (after saving a key).
    page.get_by_label("Steps value").fill("9")
    page.get_by_role("button", name="API key").click()
    page.get_by_role("dialog").get_by_label("API key").fill("sk-test")
    page.get_by_role("dialog").get_by_role("button", name="Save").click()
    page.get_by_text("API key saved.").wait_for()
    assert page.get_by_label("Steps", exact=True).input_value() == "9"


def test_a_real_model_keeps_the_full_size_and_no_noise_warning(page: Any, static_url: str) -> None:
    stub_server(page, lambda request: (202, job_view("queued")))
    page.goto(static_url)
    page.get_by_text("Server ready · model v1.1").wait_for()
    assert page.get_by_label("Size").input_value() == "1024"
    assert page.locator("#model-hint").is_hidden()


def test_the_api_docs_are_linked(page: Any, static_url: str) -> None:
    page.goto(static_url)
    assert page.get_by_role("link", name="API docs").get_attribute("href") == "/docs"


# ---------- errors next to their field ----------


# The control each request field is marked on (the image: the file input in the drop zone).
CONTROLS = {
    "guidance_scale": "#guidance-value",
    "num_inference_steps": "#steps-value",
    "seed": "#seed",
    "prompt": "#prompt",
    "negative_prompt": "#negative-prompt",
    "size_level": "#size",
    "image": "#image-file",
    None: "#image-file",  # a body over the size limit is refused before any field is read
}


@pytest.mark.parametrize(
    ("param", "status", "code", "message"),
    [
        ("guidance_scale", 422, "invalid_request", "guidance_scale: Input should be ≤ 20"),
        ("num_inference_steps", 422, "invalid_request", "num_inference_steps: too many"),
        ("seed", 422, "invalid_request", "seed: Input should be ≥ -1"),
        ("prompt", 400, "invalid_request", "The prompt is too long."),
        ("negative_prompt", 400, "invalid_request", "negative_prompt: too long"),
        ("size_level", 422, "invalid_request", "size_level: Input should be 512, 768 or 1024"),
        ("image", 400, "image_fetch_failed", "The image URL answered HTTP 404."),
        (None, 413, "payload_too_large", "upload exceeds 10 MB"),
    ],
)
def test_api_errors_appear_next_to_their_field(
    any_page: Any,
    static_url: str,
    tmp_path: Path,
    param: str | None,
    status: int,
    code: str,
    message: str,
) -> None:
    page = any_page
    control = CONTROLS[param]
    stub_server(page, lambda request: (status, error_body(code, message, param)))
    page.goto(static_url)
    fill_form(page, tmp_path)
    page.get_by_role("button", name="Run", exact=True).click()

    alert = page.get_by_role("alert")  # the one message shown
    alert.wait_for()
    field_error = page.locator(f"#{page.get_attribute(control, 'aria-describedby').split()[-1]}")
    assert field_error.inner_text() == alert.inner_text()
    assert page.locator("#error").is_hidden()  # not under Run
    assert page.get_attribute(control, "aria-invalid") == "true"
    field_id = field_error.get_attribute("id")
    assert in_viewport(page, f"#{field_id}"), "the error is out of view"
    if param and code == "invalid_request":  # the field's name is not repeated beside it
        assert not alert.inner_text().startswith(param)
    screenshot(page, tmp_path, f"error-{param or code}")

    # Correcting and running again clears it.
    stub_server(page, lambda request: (202, job_view("queued")))
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector("#outputs img.result-image")
    assert page.get_attribute(control, "aria-invalid") is None
    assert page.locator(".field-error:visible").count() == 0


def test_form_problems_are_shown_beside_their_field_before_any_request(
    any_page: Any, static_url: str, tmp_path: Path
) -> None:
    page = any_page
    seen = stub_server(page, lambda request: (202, job_view("queued")))
    page.goto(static_url)
    page.get_by_label("Instruction", exact=True).fill("Add a hat")
    page.get_by_role("button", name="Run", exact=True).click()
    assert "Choose an image" in page.locator("#image-error").inner_text()
    assert in_viewport(page, "#image-error")

    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("")
    page.get_by_role("button", name="Run", exact=True).click()
    assert "Write an instruction" in page.locator("#prompt-error").inner_text()
    assert page.evaluate("document.activeElement.id") == "prompt"
    screenshot(page, tmp_path, "error-missing-prompt")
    assert seen["jobs"] == []


def test_an_error_about_no_field_is_shown_under_run_and_in_view(
    any_page: Any, static_url: str, tmp_path: Path
) -> None:
    page = any_page
    stub_server(page, lambda request: (429, error_body("queue_full", "32 jobs queued")))
    page.goto(static_url)
    fill_form(page, tmp_path)
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("#error").wait_for()
    assert "queue is full" in page.locator("#error").inner_text()
    assert in_viewport(page, "#error")


# ---------- the result in view ----------


def test_the_result_is_scrolled_into_view(any_page: Any, static_url: str, tmp_path: Path) -> None:
    page = any_page
    stub_server(page, lambda request: (202, job_view("queued")))
    page.goto(static_url)
    fill_form(page, tmp_path)
    # Scrolled down the form to Run, at the bottom of the screen: the result panel is out of
    # view (above on a desktop, below on a phone).
    page.evaluate("document.getElementById('run-button').scrollIntoView({block: 'end'})")
    assert not in_viewport(page, "#result-panel")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector("#outputs img.result-image")
    page.wait_for_function(
        """() => {
            const rect = document.querySelector("#result-panel").getBoundingClientRect();
            return rect.top >= 0 && rect.top < window.innerHeight / 3;
        }"""
    )
    assert in_viewport(page, "#compare")
    screenshot(page, tmp_path, "result-in-view")


# ---------- chains of edits ----------


def numbered_jobs() -> Any:
    """A submit stub answering job_1, job_2, ... in turn."""
    count = {"n": 0}

    def submit(request: Any) -> tuple[int, Any]:
        count["n"] += 1
        return 202, job_view("queued", job_id=f"job_{count['n']}")

    return submit


def sent_image(request: Any) -> bytes:
    image = request.post_data_json["image"]
    assert image.startswith("data:image/png;base64,")
    return base64.b64decode(image.split(",", 1)[1])


def run_and_wait(page: Any, prompt: str, count: int) -> None:
    page.get_by_label("Instruction", exact=True).fill(prompt)
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function(
        "(n) => JSON.parse(localStorage.getItem('stepedit.history') || '[]').length === n",
        arg=count,
    )


def test_edits_chain_and_the_history_can_go_back_to_a_step(
    any_page: Any, static_url: str, tmp_path: Path
) -> None:
    page = any_page
    seen = stub_server(page, numbered_jobs())
    page.goto(static_url)
    choose_image(page, tmp_path)
    run_and_wait(page, "Add a hat", 1)
    for step, prompt in ((2, "Make the hat blue"), (3, "Add snow")):
        page.get_by_role("button", name="Edit image 1 further").click()
        page.get_by_text(f"Step {step} of a chain").wait_for()
        assert page.get_by_label("Instruction", exact=True).input_value() == ""
        run_and_wait(page, prompt, step)

    # Each edit started from the previous one's output.
    assert sent_image(seen["jobs"][1]) == output_png("job_1")
    assert sent_image(seen["jobs"][2]) == output_png("job_2")

    chain = page.locator(".history-chain")
    assert chain.count() == 1
    assert "Chain of 3 edits" in chain.inner_text()
    steps = chain.locator(".chain-step")
    assert [steps.nth(i).locator(".step-label").inner_text().lower() for i in range(3)] == [
        "step 1",
        "step 2",
        "step 3",
    ]
    assert "Add snow" in chain.locator("[aria-current]").inner_text()
    chain.scroll_into_view_if_needed()
    screenshot(page, tmp_path, "history-chain-of-three", full_page=True)

    # Back to step 2: its instruction, its source (step 1's output) and its result.
    page.get_by_role("button", name="Go back to step 2: Make the hat blue").click()
    page.get_by_text("Step 2 of a chain").wait_for()
    assert page.get_by_label("Instruction", exact=True).input_value() == "Make the hat blue"
    assert "Make the hat blue" in chain.locator("[aria-current]").inner_text()
    page.wait_for_selector("#outputs img.result-image")
    screenshot(page, tmp_path, "history-back-to-step-2", full_page=True)

    # ...and on from there: a second step 3, branching from step 2.
    page.get_by_role("button", name="Edit image 1 further").click()
    page.get_by_text("Step 3 of a chain").wait_for()
    run_and_wait(page, "Add rain", 4)
    assert sent_image(seen["jobs"][3]) == output_png("job_2")
    labels = chain.locator(".step-label").all_inner_texts()
    assert [label.lower() for label in labels] == ["step 1", "step 2", "step 3", "step 3"]

    # A new upload starts a new chain.
    choose_image(page, tmp_path, "other.png")
    assert page.locator("#source-chain").is_hidden()
    run_and_wait(page, "Add a smile", 5)
    assert page.locator(".history-chain").count() == 1
    assert page.locator(".history-list > li > .history-item").count() == 1

    page.reload()
    assert "Chain of 4 edits" in page.locator(".history-chain").inner_text()


# ---------- the request as code ----------


def open_code_dialog(page: Any, static_url: str, tmp_path: Path) -> None:
    stub_server(page, lambda request: (202, job_view("queued")))
    page.goto(static_url)
    page.get_by_text("Server ready").wait_for()
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("Paint it 'red' for $5")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Guidance scale value").fill("5")
    page.get_by_label("Steps value").fill("20")
    page.get_by_label("Seed", exact=True).fill("42")
    page.get_by_label("Size").select_option("512")
    page.get_by_role("button", name="Copy as curl / Python").click()
    page.get_by_role("dialog").wait_for()


def code_for(page: Any, flavour: str, language: str) -> str:
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("API", exact=True).select_option(flavour)
    dialog.get_by_label("Python (httpx)" if language == "python" else "curl").check()
    return str(page.locator("#code-text").inner_text())


# Per flavour: what the code must send, in that API's own names (api/<flavour>/protocol.py).
EXPECTED_CURL = {
    "native": [
        "/v1/jobs'",
        "-F 'image=@portrait.png'",
        "--form-string 'prompt=Paint it '\\''red'\\'' for $5'",
        "--form-string 'negative_prompt=blurry'",
        "--form-string 'guidance_scale=5'",
        "--form-string 'num_inference_steps=20'",
        "--form-string 'seed=42'",
        "--form-string 'size_level=512'",
        "--form-string 'num_images=1'",
    ],
    "wavespeed": [
        "/api/v3/wavespeed-ai/step1x-edit'",
        '"prompt": "Paint it \'red\' for \\$5"',
        '"negative_prompt": "blurry"',
        '"seed": 42',
        '"guidance_scale": 5',
        '"num_inference_steps": 20',
        '"enable_sync_mode": true',
        "data:image/png;base64,$(base64 < 'portrait.png' | tr -d '\\n')",
    ],
    "openai_edits": [
        "/v1/images/edits'",
        "-F 'image=@portrait.png'",
        "--form-string 'model=step-1x-edit'",
        "--form-string 'steps=20'",
        "--form-string 'cfg_scale=5'",
        "--form-string 'size=512x512'",
        "--form-string 'seed=42'",
    ],
    "generations": [
        "/v1/images/generations'",
        '"model": "stepfun-ai/step1x-edit"',
        '"n": 1',
        '"steps": 20',
        '"guidance_scale": 5',
        '"strength": 1',
        '"seed": 42',
    ],
    "reasoning": [
        "/v1/image/edit/'",
        "-F 'image=@portrait.png'",
        "--form-string 'model=step1x-edit'",
        "--form-string 'operation=edit'",
        "--form-string 'steps=20'",
        "--form-string 'guidance_scale=5'",
    ],
}
EXPECTED_PYTHON = {
    "native": ['/v1/jobs",', 'files={"image": open("portrait.png", "rb")}', '"size_level": "512"'],
    "wavespeed": ['"seed": 42', '"enable_sync_mode": True', 'f"data:image/png;base64,{image}"'],
    "openai_edits": ['"cfg_scale": "5"', '"size": "512x512"', 'open("portrait.png", "rb")'],
    "generations": ['"guidance_scale": 5', '"strength": 1', '"n": 1', "base64.b64encode"],
    "reasoning": ['"operation": "edit"', '"steps": "20"', 'open("portrait.png", "rb")'],
}
NOTES = {
    "wavespeed": "No size field",
    "openai_edits": "No negative prompt field",
    "generations": "No size field",
    "reasoning": "No size field",
}


def test_the_request_as_code_for_each_api_flavour(
    any_page: Any, static_url: str, tmp_path: Path
) -> None:
    page = any_page
    open_code_dialog(page, static_url, tmp_path)
    for flavour in FLAVOURS:
        curl = code_for(page, flavour, "curl")
        for expected in EXPECTED_CURL[flavour]:
            assert expected in curl, f"{flavour}: {expected!r} not in\n{curl}"
        assert "Authorization" not in curl  # no key saved
        if flavour in NOTES:
            assert NOTES[flavour] in page.locator("#code-notes").inner_text()
        screenshot(page, tmp_path, f"code-{flavour}-curl")

        python = code_for(page, flavour, "python")
        for expected in EXPECTED_PYTHON[flavour]:
            assert expected in python, f"{flavour}: {expected!r} not in\n{python}"
        compile(python, f"{flavour}.py", "exec")  # valid Python
        screenshot(page, tmp_path, f"code-{flavour}-python")

    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    page.get_by_role("button", name="Close").click()
    assert page.get_by_role("dialog").is_hidden()


def test_code_for_a_pasted_url_and_a_saved_key(page: Any, static_url: str) -> None:
    stub_server(page, lambda request: (202, job_view("queued")))
    page.add_init_script("localStorage.setItem('stepedit.apiKey', '\"sk-secret\"')")
    page.route("https://example.com/**", lambda route: route.fulfill(body=output_png("cat")))
    page.goto(static_url)
    page.get_by_label("or paste a public image URL").fill("https://example.com/cat.jpg")
    page.get_by_label("or paste a public image URL").dispatch_event("change")
    page.get_by_label("Instruction", exact=True).fill("Add a hat")
    page.get_by_role("button", name="Copy as curl / Python").click()

    native = code_for(page, "native", "curl")
    assert "<<'JSON'" in native
    body = json.loads(native.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    assert body == {
        "prompt": "Add a hat",
        "guidance_scale": 6,
        "num_inference_steps": 28,
        "size_level": 1024,
        "num_images": 1,
        "image": "https://example.com/cat.jpg",
    }
    assert '-H "Authorization: Bearer $STEPEDIT_API_KEY"' in native
    assert "sk-secret" not in native  # the key itself is never shown

    edits = code_for(page, "openai_edits", "curl")  # a file upload API: the URL is fetched first
    assert "curl -sSL -o source.png 'https://example.com/cat.jpg'" in edits
    assert "-F 'image=@source.png'" in edits
    python = code_for(page, "openai_edits", "python")
    assert "os.environ['STEPEDIT_API_KEY']" in python
    assert "sk-secret" not in python
    compile(python, "openai_edits.py", "exec")

    page.get_by_role("button", name="Copy", exact=True).click()
    page.get_by_text("Copied.").or_(page.get_by_text("Selected: press")).wait_for()
