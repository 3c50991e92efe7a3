"""Fixtures for the playground tests: Debian's Chromium driven by Playwright, the page served
either by a plain static server (API answers stubbed in the browser) or by a real `stepedit
serve`, with the tiny random model or with the fake editor.

Chromium comes from Debian (`apt-get install chromium`); Playwright never downloads a browser.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playground_support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, WEB_DIR, free_port


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh desktop-sized page; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"uncaught errors in the page: {script_errors}"


@pytest.fixture(scope="session")
def static_url() -> Iterator[str]:
    """The playground files behind a plain static server; tests stub the API with page.route."""
    handler = partial(_QuietHandler, directory=str(WEB_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


LIVE_API_KEY = "playground-test-key"
LIVE_MAX_UPLOAD_BYTES = 300_000


@dataclass(frozen=True)
class LiveServer:
    url: str
    log: Path  # its stdout and stderr: the start-up lines, the access log


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `stepedit serve` with the tiny random model, requiring an API key, with a small
    upload limit so that "too large" can be provoked."""
    model = os.environ.get("STEPEDIT_WEB_TEST_MODEL", "dummy:tiny-v1.1")
    env = {"STEPEDIT_MAX_UPLOAD_BYTES": str(LIVE_MAX_UPLOAD_BYTES)}
    with running_server(tmp_path_factory, model, env) as server:
        yield server


@pytest.fixture(scope="module")
def live_url(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `stepedit serve` whose editor is the fake one (it inverts the image at once):
    the whole server and its five API flavours, with no model time. API keys required."""
    with running_server(tmp_path_factory, "fake", {}) as server:
        yield server


@contextlib.contextmanager
def running_server(
    tmp_path_factory: pytest.TempPathFactory, model: str, env: dict[str, str]
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("stepedit-data")
    port = free_port()
    log_path = data_dir / "server.log"
    env = {
        **os.environ,
        "STEPEDIT_API_KEYS": LIVE_API_KEY,
        "STEPEDIT_SAFETY_CHECKER": "false",
        **env,
    }
    command = [sys.executable, "-m", "stepedit.cli", "serve", "--model", model]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, log_path, timeout_s=240)
        yield LiveServer(url, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"stepedit serve exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"stepedit serve was not healthy within {timeout_s} s:\n{tail}")
