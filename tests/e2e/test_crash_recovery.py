"""A process SIGKILLed between writing a file and recording it (inside `complete()`, inside
`submit()`): after the restart the unrecorded file is gone, the job runs again once and ends
with exactly the outputs it recorded, under names derived from (job, attempt, index)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stepedit.jobs.models import JobRecord
from stepedit.jobs.service import JobService, ProducedImage
from stepedit.jobs.state import JobStatus
from stepedit.jobs.storage import output_token
from stepedit.settings import Settings

from e2e_support import png  # isort: skip

pytestmark = pytest.mark.slow

# Runs in a child process: the real service on SQLite, its storage killing the process right
# after a file is written (where the store has not recorded it yet).
CHILD = """
import os, signal, sys
from pathlib import Path
from stepedit.jobs.models import JobRecord
from stepedit.jobs.service import JobService, ProducedImage
from stepedit.jobs.storage import FileStorage
from stepedit.request import EditRequest
from stepedit.settings import Settings

data_dir, where, image = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes()

class DyingStorage(FileStorage):
    def save_output(self, token, data, image_format):
        path = super().save_output(token, data, image_format)
        if where == "output":
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    def save_input(self, job_id, data):
        path = super().save_input(job_id, data)
        if where == "input":
            os.kill(os.getpid(), signal.SIGKILL)
        return path

service = JobService(Settings(data_dir=data_dir), storage=DyingStorage(data_dir))
service.recover()
request = EditRequest(prompt="x", seed=1, num_images=2)
view = service.submit_sync(request, image, owner=None, flavour="native")
print(view.id, flush=True)
job = service.claim_next(0)
images = [ProducedImage(image, 1 + i, False, "png", 64, 64) for i in range(2)]
service.complete(job.id, images, prompt_used="x", passes=[], inference_ms=1.0)
"""


def die_at(tmp_path: Path, where: str) -> str:
    image = tmp_path / "image.png"
    image.write_bytes(png())
    ended = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "data"), where, str(image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ended.returncode == -signal.SIGKILL, ended.stderr
    return ended.stdout.strip()


def test_a_kill_inside_complete_leaves_no_orphan_and_no_second_result(tmp_path: Path) -> None:
    job_id = die_at(tmp_path, "output")
    outputs = tmp_path / "data" / "outputs"
    (orphan,) = outputs.iterdir()  # the first output, written and never recorded

    service = JobService(Settings(data_dir=tmp_path / "data"))
    service.recover()
    try:
        assert not orphan.exists()
        assert list(outputs.iterdir()) == []
        assert service.get_sync(job_id, None).status is JobStatus.QUEUED
        claimed = service.claim_next(0)
        assert claimed is not None and claimed.attempt == 2
        images = [ProducedImage(png(), 1 + i, False, "png", 64, 64) for i in range(2)]
        service.complete(job_id, images, prompt_used="x", passes=[], inference_ms=1.0)
        view = service.get_sync(job_id, None)
        assert view.status is JobStatus.SUCCEEDED and len(view.outputs) == 2
        recorded = {Path(o.url).name for o in view.outputs}
        assert {p.name for p in outputs.iterdir()} == recorded
        assert orphan.name not in recorded  # attempt 2's names differ from attempt 1's
    finally:
        service.close()


def test_names_of_an_attempt_are_known_before_writing(tmp_path: Path) -> None:
    """What makes the targeted cleanup possible: the dead attempt's names are derivable."""
    job_id = die_at(tmp_path, "output")
    (orphan,) = (tmp_path / "data" / "outputs").iterdir()
    service = JobService(Settings(data_dir=tmp_path / "data"))
    try:
        with service.store.session() as session:
            record = session.get(JobRecord, job_id)
            assert record is not None
            salt = record.output_salt
        assert orphan.name == f"{output_token(salt, 1, 0)}.png"
    finally:
        service.close()


def test_a_kill_between_storing_an_upload_and_its_job_leaves_no_orphan(tmp_path: Path) -> None:
    die_at(tmp_path, "input")
    inputs = tmp_path / "data" / "inputs"
    assert len(list(inputs.iterdir())) == 1  # saved; the job row never committed
    service = JobService(Settings(data_dir=tmp_path / "data"))
    service.recover()
    try:
        assert list(inputs.iterdir()) == []
        assert service.list_sync(None) == []
    finally:
        service.close()
