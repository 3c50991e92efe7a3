"""Helpers of the end-to-end tests: the real `stepedit serve` in a subprocess (tests/api's
`start_server`), small filesystems, process figures read from /proc."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image


def _load_server_helpers() -> ModuleType:
    name = "stepedit_test_servers"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "api" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


servers = _load_server_helpers()
LiveServer = servers.LiveServer
start_server = servers.start_server


def png(color: tuple[int, int, int] = (200, 40, 40), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(base_url: str, steps: int = 5, **data: Any) -> str:
    response = httpx.post(
        f"{base_url}/v1/jobs",
        files={"image": ("a.png", png(), "image/png")},
        data={"prompt": "edit", "num_inference_steps": str(steps), **data},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def get_job(base_url: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=30).json()
    return job


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    """Poll `predicate` until true; the timeout is a guard against a hang, not a measure."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs of its own (root only), so "disk full" is a real ENOSPC; the test is
    skipped, saying why, where mounting is not permitted."""
    mount_point = Path(tempfile.mkdtemp(prefix="stepedit-tmpfs-"))
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        with contextlib.suppress(OSError):
            mount_point.rmdir()


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it (delete it to free)."""
    filler = directory / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        for size in (1024 * 1024, 4096, 1):  # big pieces, then whatever still fits
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)
    return filler


def temporary_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.tmp")]
