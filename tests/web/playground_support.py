"""Helpers shared by the playground tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

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


def png_bytes(width: int = 96, height: int = 64, noisy: bool = False) -> bytes:
    """A small RGB test picture (a gradient), or random noise that PNG cannot compress."""
    if noisy:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height))
        rows = range(height)
        pixels = [(x * 255 // width, y * 255 // height, 128) for y in rows for x in range(width)]
        image.putdata(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
