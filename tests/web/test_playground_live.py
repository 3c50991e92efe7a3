"""The playground against a real `stepedit serve` whose editor is the fake one (it inverts the
image): the request shown as code runs as is against each API flavour, and a chain of edits
really starts each step from the previous step's output.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LIVE_API_KEY, LiveServer
from PIL import Image, ImageChops, ImageOps
from playground_support import choose_image, requires_chromium

pytestmark = [pytest.mark.slow, requires_chromium]

FLAVOURS = ["native", "wavespeed", "openai_edits", "generations", "reasoning"]
SEED = 7


@pytest.fixture
def keyed_page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    context.add_init_script(f"localStorage.setItem('stepedit.apiKey', '\"{LIVE_API_KEY}\"')")
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"uncaught errors in the page: {script_errors}"


def test_health_says_what_the_playground_needs(fake_server: LiveServer) -> None:
    body = httpx.get(f"{fake_server.url}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert body["is_dummy_model"] is False
    assert body["defaults"] == {
        "guidance_scale": 6.0,
        "num_inference_steps": 28,
        "size_level": 1024,
    }


def test_the_start_up_log_says_where_the_playground_and_docs_are(fake_server: LiveServer) -> None:
    log = fake_server.log.read_text(errors="replace")
    assert f"playground: {fake_server.url}/ " in log
    assert f"API docs: {fake_server.url}/docs" in log
    assert "random weights" not in log  # not a dummy model
    assert httpx.get(f"{fake_server.url}/docs", timeout=10).status_code == 200


def code_for(page: Any, flavour: str, language: str) -> str:
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("API", exact=True).select_option(flavour)
    dialog.get_by_label("Python (httpx)" if language == "python" else "curl").check()
    return str(page.locator("#code-text").inner_text())


def run_code(code: str, language: str, folder: Path) -> str:
    """Runs the shown code in `folder` (where the image file is) and returns what it printed."""
    env = {**os.environ, "STEPEDIT_API_KEY": LIVE_API_KEY}
    command = ["bash", "-c", code] if language == "curl" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{language} failed:\n{code}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# What each flavour answers to the form's request (field names of api/<flavour>/protocol.py).
def check_answer(flavour: str, answer: dict[str, Any]) -> None:
    if flavour == "native":
        assert answer["status"] in ("queued", "processing", "succeeded"), answer
        assert answer["request"]["seed"] == SEED
        assert answer["request"]["num_inference_steps"] == 3
        assert answer["request"]["size_level"] == 512
        assert answer["request"]["negative_prompt"] == "blurry"
    elif flavour == "wavespeed":
        assert answer["data"]["status"] == "completed", answer
        assert answer["data"]["outputs"]
    elif flavour == "openai_edits":
        assert answer["data"][0]["finish_reason"] == "success", answer
        assert answer["data"][0]["seed"] == SEED
    elif flavour == "generations":
        assert answer["data"][0]["url"], answer
    else:
        assert answer["object"] == "image.edit", answer
        assert answer["seed"] == SEED
        assert answer["prompt"] == "Paint it 'red' for $5"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_request_as_code_runs_against_each_api_flavour(
    keyed_page: Any, fake_server: LiveServer, tmp_path: Path
) -> None:
    page = keyed_page
    page.goto(fake_server.url)
    page.get_by_text("Server ready").wait_for()
    choose_image(page, tmp_path)
    page.get_by_label("Instruction", exact=True).fill("Paint it 'red' for $5")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Steps value").fill("3")
    page.get_by_label("Seed", exact=True).fill(str(SEED))
    page.get_by_label("Size").select_option("512")
    page.get_by_role("button", name="Copy as curl / Python").click()

    for flavour in FLAVOURS:
        curl = code_for(page, flavour, "curl")
        check_answer(flavour, json.loads(run_code(curl, "curl", tmp_path)))
        python = code_for(page, flavour, "python")
        answer = ast.literal_eval(run_code(python, "python", tmp_path))  # print(dict)
        check_answer(flavour, answer)
        if flavour == "native":  # the Python code follows the job to its end
            assert answer["status"] == "succeeded"


def output_image(server: LiveServer, url: str) -> Image.Image:
    absolute = url if url.startswith("http") else f"{server.url}{url}"
    response = httpx.get(absolute, headers={"Authorization": f"Bearer {LIVE_API_KEY}"}, timeout=30)
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def test_three_chained_edits_each_start_from_the_last_output(
    keyed_page: Any, fake_server: LiveServer, tmp_path: Path
) -> None:
    page = keyed_page
    page.goto(fake_server.url)
    page.get_by_text("Server ready").wait_for()
    source_path = choose_image(page, tmp_path)
    prompts = ["Add a hat", "Make it blue", "Add snow"]
    for step, prompt in enumerate(prompts, start=1):
        if step > 1:
            page.get_by_role("button", name="Edit image 1 further").click()
            page.get_by_text(f"Step {step} of a chain").wait_for()
        page.get_by_label("Instruction", exact=True).fill(prompt)
        page.get_by_label("Steps value").fill("2")
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function(
            "(n) => JSON.parse(localStorage.getItem('stepedit.history') || '[]').length === n",
            arg=step,
        )

    history = page.evaluate("JSON.parse(localStorage.getItem('stepedit.history'))")
    by_step = {entry["chain"]["step"]: entry for entry in history}
    assert [by_step[s]["params"]["prompt"] for s in (1, 2, 3)] == prompts
    assert {entry["chain"]["root"] for entry in history} == {by_step[1]["id"]}
    assert by_step[3]["chain"]["parent"] == by_step[2]["id"]

    # The fake editor inverts: step 2 undoes step 1, so each step really edited the last output.
    source = Image.open(source_path).convert("RGB")
    outputs = [output_image(fake_server, by_step[s]["outputs"][0]["url"]) for s in (1, 2, 3)]
    assert not ImageChops.difference(outputs[0], ImageOps.invert(source)).getbbox()
    assert not ImageChops.difference(outputs[1], source).getbbox()
    assert not ImageChops.difference(outputs[2], ImageOps.invert(source)).getbbox()

    chain = page.locator(".history-chain")
    assert "Chain of 3 edits" in chain.inner_text()
    page.screenshot(path=str(tmp_path / "live-chain-of-three-desktop.png"), full_page=True)

    # Back to step 1, and on from there in a new branch.
    page.get_by_role("button", name="Go back to step 1: Add a hat").click()
    assert page.get_by_label("Instruction", exact=True).input_value() == "Add a hat"
    page.wait_for_selector("#outputs img.result-image")
    page.get_by_role("button", name="Edit image 1 further").click()
    page.get_by_text("Step 2 of a chain").wait_for()
    page.get_by_label("Instruction", exact=True).fill("Add rain")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function(
        "JSON.parse(localStorage.getItem('stepedit.history') || '[]').length === 4"
    )
    branch = page.evaluate("JSON.parse(localStorage.getItem('stepedit.history'))[0]")
    assert branch["chain"] == {"root": by_step[1]["id"], "parent": by_step[1]["id"], "step": 2}
    assert not ImageChops.difference(
        output_image(fake_server, branch["outputs"][0]["url"]), source
    ).getbbox()
