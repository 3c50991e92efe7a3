"""The worker loop: takes queued jobs one at a time and runs them on the editor's device.

`InProcessWorker` is the single-machine mode: one thread that loads the model (so the model is
owned by the thread that uses it) and then serves the queue until stopped.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable

from PIL import Image

from stepedit.engine.editor import Editor, EditorResult
from stepedit.engine.safety import SafetyChecker
from stepedit.errors import StepEditError
from stepedit.jobs.service import ClaimedJob, JobService, ProducedImage

logger = logging.getLogger(__name__)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class JobCanceled(Exception):
    """Raised from the progress callback when the client canceled the running job."""


def run_job(
    service: JobService,
    editor: Editor,
    job: ClaimedJob,
    *,
    safety: SafetyChecker | None = None,
    nsfw_filter: bool = True,
) -> None:
    """Run one claimed job to a terminal state; never raises."""

    def on_progress(step: int, total_steps: int, stage: str) -> None:
        if service.report_progress(job.id, step, total_steps, stage):
            raise JobCanceled

    try:
        with Image.open(job.input_path) as opened:
            source = opened.convert("RGB")
        result = editor.edit(job.request, source, on_progress)
        images = _to_produced(result, job, safety, nsfw_filter)
        service.complete(
            job.id,
            images,
            prompt_used=result.prompt,
            passes=result.passes,
            inference_ms=result.inference_s * 1000,
            stages_s=result.stages_s,
            reasoning=result.reasoning,
        )
    except JobCanceled:
        service.finish_canceled(job.id)
    except StepEditError as exc:
        service.fail(job.id, exc.code, exc.message)
    except Exception as exc:
        logger.exception("job %s: crashed", job.id)
        service.fail(job.id, "internal_error", f"the edit failed: {type(exc).__name__}")


def _to_produced(
    result: EditorResult, job: ClaimedJob, safety: SafetyChecker | None, nsfw_filter: bool
) -> list[ProducedImage]:
    flags = safety.check(result.images) if safety else [False] * len(result.images)
    image_format = job.request.output_format
    produced = []
    for image, seed, nsfw in zip(result.images, result.seeds, flags, strict=True):
        shown = Image.new("RGB", image.size) if nsfw and nsfw_filter else image
        if nsfw:
            logger.info("job %s: output with seed %d flagged nsfw", job.id, seed)
        buffer = io.BytesIO()
        shown.convert("RGB").save(buffer, format=_PIL_FORMATS[image_format])
        produced.append(
            ProducedImage(buffer.getvalue(), seed, nsfw, image_format, image.width, image.height)
        )
    return produced


class InProcessWorker:
    def __init__(
        self,
        service: JobService,
        load_editor: Callable[[], Editor],
        *,
        load_safety: Callable[[], SafetyChecker | None] = lambda: None,
        nsfw_filter: bool = True,
        poll_s: float = 0.5,
    ) -> None:
        self.service = service
        self._load_editor = load_editor
        self._load_safety = load_safety
        self.nsfw_filter = nsfw_filter
        self.poll_s = poll_s
        self.load_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepedit-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current job (a running job is left to finish or to restart recovery)."""
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            logger.info("loading the model")
            editor = self._load_editor()
            safety = self._load_safety()
        except BaseException as exc:
            self.load_error = exc
            logger.exception("the model could not be loaded; the server stays unready")
            return
        # /health reports the loaded model's version (the playground greys out reasoning).
        self.service.model_version = getattr(editor, "model_version", None)
        self.service.set_ready(True)
        logger.info("model loaded; worker ready")
        try:
            while not self._stop.is_set():
                try:
                    job = self.service.claim_next(self.poll_s)
                    if job is not None:
                        run_job(
                            self.service, editor, job, safety=safety, nsfw_filter=self.nsfw_filter
                        )
                except Exception:
                    # e.g. the database went away: keep serving once it is back
                    logger.exception("worker loop error; retrying")
                    self._stop.wait(self.poll_s)
        finally:
            self.service.set_ready(False)
