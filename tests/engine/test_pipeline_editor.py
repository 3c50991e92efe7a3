"""The real editor on the tiny random model (CPU): progress per step, seeds, measured time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from stepedit.engine import load_editor, run_job
from stepedit.jobs.service import JobService
from stepedit.jobs.state import JobStatus
from stepedit.request import EditRequest
from stepedit.settings import Settings

pytestmark = pytest.mark.slow


def test_tiny_model_job_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("stepedit.pipeline")
    settings = Settings(model="dummy:tiny-v1.1", device="cpu", data_dir=tmp_path / "data")
    service = JobService(settings)
    editor = load_editor(settings)
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 60, 90)).save(buffer, format="PNG")
    request = EditRequest(prompt="make it red", seed=5, num_inference_steps=3, size_level=512)
    view = service.submit_sync(request, buffer.getvalue(), owner=None, flavour="native")
    seen: list[tuple[int, int, str]] = []
    report = service.report_progress

    def spy(job_id: str, step: int, total: int, stage: str) -> bool:
        seen.append((step, total, stage))
        return report(job_id, step, total, stage)

    service.report_progress = spy  # type: ignore[method-assign]
    job = service.claim_next(0)
    assert job is not None
    run_job(service, editor, job)
    done = service.get_sync(view.id, None)
    service.close()

    assert done.status == JobStatus.SUCCEEDED, done.error
    assert [s for s, total, stage in seen if stage == "denoise"][-1] == 3
    (output,) = done.outputs
    assert output.seed == 5 and (output.width, output.height) == (96, 64)
    assert done.timings.inference_ms is not None and done.timings.inference_ms > 0
    assert done.prompt_used


def test_optimize_setting_switches_the_loaded_pipeline(tmp_path: Path) -> None:
    from stepedit.engine.pipeline_editor import PipelineEditor

    def load(optimize: str) -> PipelineEditor:
        settings = Settings(
            model="dummy:tiny-v1.1", device="cpu", data_dir=tmp_path, optimize=optimize
        )
        return PipelineEditor.from_settings(settings)

    assert load("auto").pipeline.batch_cfg is True  # CPU: as loaded (batched, as the reference)
    assert load("plain").pipeline.batch_cfg is True  # the official layout: one batch of 2
    assert load("plain-batch_cfg").pipeline.batch_cfg is False  # two forwards
    with pytest.raises(ValueError, match="unknown switch"):
        load("plain+warp_drive")
