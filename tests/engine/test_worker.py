"""The worker loop with fake editors (cog style): outcomes, progress, cancel, safety, health."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from stepedit.engine import FakeEditor, InProcessWorker, run_job
from stepedit.engine.editor import EditorResult, ProgressCallback
from stepedit.errors import InvalidInput, ServiceUnavailable
from stepedit.jobs.health import HealthStatus
from stepedit.jobs.service import JobService
from stepedit.jobs.state import JobStatus
from stepedit.request import VERSIONS, EditRequest
from stepedit.settings import Settings


def png(color: tuple[int, int, int] = (250, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[JobService]:
    service = JobService(Settings(data_dir=tmp_path / "data"))
    yield service
    service.close()


def submit_and_run(service: JobService, editor: object, **kwargs: object) -> str:
    view = service.submit_sync(
        EditRequest(prompt="invert", seed=11, num_inference_steps=4, num_images=2),
        png(),
        owner=None,
        flavour="native",
    )
    job = service.claim_next(0)
    assert job is not None
    run_job(service, editor, job, **kwargs)  # type: ignore[arg-type]
    return view.id


def test_success_stores_each_image_with_its_seed(service: JobService) -> None:
    job_id = submit_and_run(service, FakeEditor())
    view = service.get_sync(job_id, None)
    assert view.status == JobStatus.SUCCEEDED
    assert [o.seed for o in view.outputs] == [11, 12]
    assert view.progress.step == 4
    with Image.open(service.output_path(view.outputs[0].token)) as out:
        assert out.size == (32, 24)
        assert out.convert("RGB").getpixel((0, 0)) == (5, 245, 245)  # inverted


def test_editor_errors_fail_the_job_with_their_code(service: JobService) -> None:
    editor = FakeEditor(fail_with=InvalidInput("size_level must be 512, 768 or 1024"))
    view = service.get_sync(submit_and_run(service, editor), None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "invalid_request"


def test_a_crash_fails_the_job_without_leaking_details(service: JobService) -> None:
    view = service.get_sync(
        submit_and_run(service, FakeEditor(fail_with=RuntimeError("cuda"))), None
    )
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "internal_error"


class FlagAll:
    def check(self, images: list[Image.Image]) -> list[bool]:
        return [True] * len(images)


@pytest.mark.parametrize("nsfw_filter", [True, False])
def test_safety_checker_flags_and_filters(service: JobService, nsfw_filter: bool) -> None:
    job_id = submit_and_run(service, FakeEditor(), safety=FlagAll(), nsfw_filter=nsfw_filter)
    view = service.get_sync(job_id, None)
    assert view.has_nsfw and all(o.nsfw for o in view.outputs)
    with Image.open(service.output_path(view.outputs[0].token)) as out:
        pixel = out.convert("RGB").getpixel((0, 0))
    assert pixel == ((0, 0, 0) if nsfw_filter else (5, 245, 245))


class BlockingEditor:
    """Reports one step, then waits until released, then reports more."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        on_progress(1, 3, "denoise")
        self.started.set()
        self.release.wait(10)
        on_progress(2, 3, "denoise")
        raise AssertionError("cancel should have stopped the edit")


def test_cancel_during_a_run_stops_at_the_next_step(service: JobService) -> None:
    editor = BlockingEditor()
    worker = InProcessWorker(service, lambda: editor, poll_s=0.05)
    worker.start()
    view = service.submit_sync(EditRequest(prompt="x"), png(), owner=None, flavour="native")
    assert editor.started.wait(5)
    assert service.get_sync(view.id, None).progress.step == 1
    service.cancel_sync(view.id, None)
    editor.release.set()
    deadline = time.monotonic() + 5
    while not service.get_sync(view.id, None).is_terminal and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert service.get_sync(view.id, None).status == JobStatus.CANCELED


def test_worker_is_ready_only_after_loading(service: JobService) -> None:
    loaded = threading.Event()

    def slow_load() -> FakeEditor:
        loaded.wait(5)
        return FakeEditor()

    worker = InProcessWorker(service, slow_load, poll_s=0.05)
    worker.start()
    assert not service.is_ready
    loaded.set()
    deadline = time.monotonic() + 5
    while not service.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.is_ready
    worker.stop()
    assert not service.is_ready


def test_a_model_that_fails_to_load_is_a_failed_health_with_its_reason(
    service: JobService,
) -> None:
    def broken() -> FakeEditor:
        raise OSError("no such checkpoint")

    worker = InProcessWorker(service, broken)
    worker.start()
    worker.stop()
    assert isinstance(worker.load_error, OSError)
    health = service.health()
    assert health.status is HealthStatus.FAILED
    assert health.reason == "OSError: no such checkpoint"
    with pytest.raises(ServiceUnavailable, match="no such checkpoint"):
        service.submit_sync(EditRequest(prompt="x"), png(), owner=None, flavour="native")
    assert service.list_sync(None) == []  # refused before anything was stored


def test_the_loaded_models_version_is_the_spec_requests_are_checked_against(
    service: JobService,
) -> None:
    class V12Editor(FakeEditor):
        model_version = "v1.2"

    assert service.version_spec(EditRequest(prompt="x")) is None  # unknown while loading
    worker = InProcessWorker(service, V12Editor, poll_s=0.05)
    worker.start()
    try:
        while not service.is_ready and worker.is_alive:
            time.sleep(0.01)
        assert service.health().model_version == "v1.2"
        assert service.version_spec(EditRequest(prompt="x")) == VERSIONS["v1.2"]
    finally:
        worker.stop()


def test_a_declared_version_is_known_before_the_model_loads(tmp_path: Path) -> None:
    service = JobService(Settings(model="dummy:tiny-v1.0", data_dir=tmp_path / "data"))
    try:
        assert service.health().status is HealthStatus.LOADING
        assert service.version_spec(EditRequest(prompt="x")) == VERSIONS["v1.0"]
    finally:
        service.close()


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys; import stepedit.api.app, stepedit.engine, stepedit.commands.serve; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
