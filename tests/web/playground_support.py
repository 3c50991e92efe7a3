"""Helpers shared by the playground tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
WEB_DIR = REPO / "src" / "stepedit" / "web"
ARTIFACTS = REPO / "test-artifacts" / "web"

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
)

RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("progress-text");
  // Each textContent assignment adds a new text node: keep every one, even those replaced
  // within the same task (the observer runs once per batch).
  new MutationObserver((records) => records.forEach((record) =>
    record.addedNodes.forEach((added) => window.__progress.push(added.textContent))))
    .observe(node, {childList: true});
});
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def png_bytes(
    width: int = 96,
    height: int = 64,
    noisy: bool = False,
    tint: tuple[int, int, int] | None = None,
) -> bytes:
    """A small RGB test picture (a gradient, or a flat `tint` with a gradient band), or random
    noise that PNG cannot compress."""
    if noisy:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    elif tint is not None:
        image = Image.new("RGB", (width, height), tint)
        band = [(x * 255 // width, x * 255 // width, x * 255 // width) for x in range(width)]
        for y in range(height // 3, height // 3 + max(1, height // 8)):
            for x, pixel in enumerate(band):
                image.putpixel((x, y), pixel)
    else:
        image = Image.new("RGB", (width, height))
        rows = range(height)
        pixels = [(x * 255 // width, y * 255 // height, 128) for y in rows for x in range(width)]
        image.putdata(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------- the native API, stubbed in the browser (shapes of api/native/protocol.py) ----------

JOB_ID = "job_0123456789"


def output_url(job_id: str) -> str:
    return f"/files/{job_id}.png"


def job_view(
    status: str, *, step: int = 0, total: int = 30, job_id: str = JOB_ID, **extra: Any
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job_id,
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


def succeeded(nsfw: bool = False, job_id: str = JOB_ID) -> dict[str, Any]:
    output = {"url": output_url(job_id), "seed": 1234, "nsfw": nsfw}
    return job_view("succeeded", step=30, job_id=job_id, outputs=[output])


def sse(*views: dict[str, Any]) -> str:
    return "".join(f"event: job\ndata: {json.dumps(view)}\n\n" for view in views)


def error_body(code: str, message: str, param: str | None = None) -> str:
    return json.dumps({"error": {"code": code, "message": message, "param": param}})


HEALTH = {
    "status": "ok",
    "model_version": "v1.1",
    "is_dummy_model": False,
    "defaults": {"guidance_scale": 6.0, "num_inference_steps": 28, "size_level": 1024},
}


def output_png(job_id: str) -> bytes:
    """Each job's output in its own colour, so a chain of edits is visible in screenshots."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return png_bytes(tint=(digest[0], digest[1], digest[2]))


def stub_server(
    page: Any, submit: Any, *, health: dict[str, Any] | None = None
) -> dict[str, list[Any]]:
    """Route the API: `submit(request)` answers POST /v1/jobs as (status, body dict or str).
    A job's events, view and output follow its id (`job_id` of the submitted view).

    Returns the requests seen, by name, for assertions.
    """
    seen: dict[str, list[Any]] = {"jobs": [], "enhance": []}

    def jobs(route: Any) -> None:
        seen["jobs"].append(route.request)
        status, body = submit(route.request)
        text = body if isinstance(body, str) else json.dumps(body)
        route.fulfill(status=status, body=text, content_type="application/json")

    def events(route: Any) -> None:
        job_id = _job_id(route.request.url)
        steps = [job_view("processing", step=s, job_id=job_id) for s in (1, 10, 20, 30)]
        route.fulfill(body=sse(*steps, succeeded(job_id=job_id)), content_type="text/event-stream")

    def output(route: Any) -> None:
        name = route.request.url.rsplit("/", 1)[-1].removesuffix(".png")
        route.fulfill(body=output_png(name), content_type="image/png")

    page.route("**/health", lambda route: route.fulfill(json=health or HEALTH))
    page.route("**/v1/jobs", jobs)
    page.route(
        "**/v1/jobs/*",
        lambda route: route.fulfill(json=succeeded(job_id=_job_id(route.request.url))),
    )
    page.route("**/v1/jobs/*/events", events)
    page.route("**/files/*", output)
    return seen


def _job_id(url: str) -> str:
    return url.split("/v1/jobs/", 1)[1].split("/", 1)[0].split("?", 1)[0]


def choose_image(page: Any, tmp_path: Path, name: str = "portrait.png") -> Path:
    source = tmp_path / name
    source.write_bytes(png_bytes())
    page.set_input_files("#image-file", str(source))
    page.wait_for_selector("#source-preview:not([hidden])")
    return source


def in_viewport(page: Any, selector: str) -> bool:
    """The element's top edge is on screen (below the top, above the bottom)."""
    return bool(
        page.evaluate(
            """(selector) => {
                const rect = document.querySelector(selector).getBoundingClientRect();
                return rect.top >= 0 && rect.top < window.innerHeight && rect.height > 0;
            }""",
            selector,
        )
    )


def phone_context(browser: Any) -> Any:
    context = browser.new_context(
        viewport={"width": 375, "height": 812}, is_mobile=True, accept_downloads=True
    )
    context.set_default_timeout(15_000)
    return context
