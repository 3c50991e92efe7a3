"""A full disk (a real ENOSPC on a small tmpfs of the test's own) and unusable data dirs.

- a job whose writes hit the full disk (progress, outputs, its failure) is not left processing:
  once space is freed it ends (failed, `insufficient_storage`), and the next job runs;
- submissions on a full disk are refused with `insufficient_storage` and Retry-After, in the
  flavour's shape, storing nothing and leaving no temporary file;
- a read-only or uncreatable data directory stops `stepedit serve` at start, naming the path.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.service import JobService
from stepedit.jobs.state import JobStatus
from stepedit.jobs.storage import DataDirError
from stepedit.request import EditRequest
from stepedit.settings import Settings

from e2e_support import fill, png, start_server, temporary_files, tmpfs, wait_until  # isort: skip

pytestmark = pytest.mark.slow


class GatedEditor(FakeEditor):
    """Waits for `gate` before editing, so the test fills the disk mid-job."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def edit(self, request: EditRequest, image: Any, on_progress: Any, mask: Any = None) -> Any:
        self.gate.wait(60)
        return super().edit(request, image, on_progress, mask)


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with tmpfs("16m") as mount_point:
        yield mount_point


def truncate_wal(database: Path) -> None:
    """Make the next database write need new space (a reused WAL would absorb it)."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_job_whose_writes_hit_a_full_disk_ends_once_space_is_freed(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    service = JobService(Settings(data_dir=data_dir, min_free_disk_mb=0, safety_checker=False))
    service.recover()
    gate = threading.Event()
    worker = InProcessWorker(service, lambda: GatedEditor(gate), poll_s=0.05)
    worker.start()
    try:
        wait_until(lambda: service.is_ready, what="the worker")
        request = EditRequest(prompt="x", num_inference_steps=4)
        job_id = service.submit_sync(request, png(size=256), owner=None, flavour="native").id
        wait_until(lambda: service.get_sync(job_id, None).status is JobStatus.PROCESSING)

        truncate_wal(data_dir / "stepedit.db")
        filler = fill(small_disk)
        gate.set()  # progress, outputs and the failure all hit ENOSPC now
        threading.Event().wait(2.0)  # give it time to get stuck, as it used to, for good
        assert service.get_sync(job_id, None).status is JobStatus.PROCESSING
        filler.unlink()  # space again: the job must end without a restart

        wait_until(lambda: service.get_sync(job_id, None).is_terminal, what="the job to end")
        view = service.get_sync(job_id, None)
        assert view.status is JobStatus.FAILED
        assert view.error is not None and view.error.code == "insufficient_storage"
        assert view.outputs == ()
        assert temporary_files(data_dir) == []

        again = service.submit_sync(request, png(), owner=None, flavour="native").id
        wait_until(lambda: service.get_sync(again, None).is_terminal, what="the next job")
        assert service.get_sync(again, None).status is JobStatus.SUCCEEDED
    finally:
        gate.set()
        worker.stop()
        service.close()


def test_submissions_on_a_full_disk_are_refused_with_retry_after(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    server = start_server(data_dir, env={"STEPEDIT_MIN_FREE_DISK_MB": "0"})
    try:
        truncate_wal(data_dir / "stepedit.db")
        filler = fill(small_disk)
        for _ in range(3):
            refused = httpx.post(
                f"{server.base_url}/v1/jobs",
                files={"image": ("a.png", png(size=512), "image/png")},
                data={"prompt": "x"},
                timeout=30,
            )
            assert refused.status_code in (503, 507), refused.text
            assert refused.json()["error"]["code"] == "insufficient_storage"
            assert int(refused.headers["retry-after"]) > 0
        assert temporary_files(data_dir) == []
        assert list((data_dir / "inputs").iterdir()) == []
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200

        filler.unlink()
        accepted = httpx.post(
            f"{server.base_url}/v1/jobs",
            files={"image": ("a.png", png(), "image/png")},
            data={"prompt": "x"},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
    finally:
        server.stop()


def test_submissions_are_refused_before_the_disk_is_full(small_disk: Path) -> None:
    """The free-space reserve: running jobs keep room for their outputs."""
    data_dir = small_disk / "data"
    server = start_server(data_dir, env={"STEPEDIT_MIN_FREE_DISK_MB": "64"})  # > the 16 MB disk
    try:
        refused = httpx.post(
            f"{server.base_url}/v1/jobs",
            files={"image": ("a.png", png(), "image/png")},
            data={"prompt": "x"},
            timeout=30,
        )
        assert refused.status_code in (503, 507), refused.text
        assert refused.json()["error"]["code"] == "insufficient_storage"
        assert "retry-after" in refused.headers
    finally:
        server.stop()


def serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stepedit.cli", "serve", "--model", "fake",
               "--port", "1", "--data-dir", str(data_dir)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_read_only_data_dir_stops_the_server_at_start_naming_it() -> None:
    with tmpfs("1m", read_only=True) as read_only:
        with pytest.raises(DataDirError, match=str(read_only)):
            JobService(Settings(data_dir=read_only))
        ended = serve_once(read_only)
    assert ended.returncode == 2
    assert str(read_only) in ended.stderr and "Read-only file system" in ended.stderr
    assert "Traceback" not in ended.stderr


def test_a_data_dir_that_cannot_be_created_stops_the_server_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    data_dir = tmp_path / "a-file" / "data"
    ended = serve_once(data_dir)
    assert ended.returncode == 2
    assert str(data_dir) in ended.stderr and "Traceback" not in ended.stderr
