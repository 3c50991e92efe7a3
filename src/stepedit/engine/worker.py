"""The worker loop: takes queued jobs one at a time and runs them on the editor's device.

`InProcessWorker` is the single-machine mode: one thread that loads the model (so the model is
owned by the thread that uses it), moving the service's model health (loading -> ready, or
failed with the reason), and then serves the queue until stopped.

`run_job` runs one claimed job to a terminal state, whatever happens on the way:
- a progress write the database refuses (down, disk full) does not stop the edit;
- the terminal write (success, failure, cancel) is retried until the database takes it, so a
  job is never left processing by a full disk or an outage: once space is freed (or the
  database is back) it ends. Only a process that stops while retrying leaves it to restart
  recovery;
- outputs that cannot be stored (disk full) fail the job with `insufficient_storage`;
- a graceful shutdown that cannot wait for the edit hands the job back to the queue at its
  next step, without counting the attempt (`RunControl.release`).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from PIL import Image

from stepedit.engine.editor import Editor, EditorResult, loaded_facts
from stepedit.engine.safety import SafetyChecker
from stepedit.errors import InsufficientStorage, ServiceUnavailable, StepEditError
from stepedit.jobs.health import ModelHealth, describe_failure
from stepedit.jobs.service import ClaimedJob, ClaimLost, JobService, ProducedImage

logger = logging.getLogger(__name__)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0
RELEASE_WAIT_S = 10.0  # after the grace: how long the edit gets to reach its next step

Outcome = Literal["succeeded", "failed", "canceled", "released", "abandoned"]


class CancelRequested(Exception):
    """Raised from the progress callback when the client canceled the running job."""


class ReleaseRequested(Exception):
    """Raised from the progress callback when a shutdown hands the running job back."""


class Abandoned(Exception):
    """The process is exiting while a terminal write was still being retried."""


@dataclass
class RunControl:
    """How the owner of a worker steers the job it runs."""

    release: threading.Event = field(default_factory=threading.Event)  # hand it back
    abandon: threading.Event = field(default_factory=threading.Event)  # stop retrying writes


def run_job(
    service: JobService,
    editor: Editor,
    job: ClaimedJob,
    *,
    safety: SafetyChecker | None = None,
    nsfw_filter: bool = True,
    control: RunControl | None = None,
) -> Outcome:
    """Run one claimed job to a terminal state (or hand it back); returns what happened.
    Raises only ClaimLost (the attempt stopped being this worker's: taken over by another, so
    nothing it did was recorded) and Abandoned (the process is exiting while the database still
    refuses the job's end: restart recovery takes it from there)."""
    control = control or RunControl()
    progress_refused = False

    def on_progress(step: int, total_steps: int, stage: str) -> None:
        nonlocal progress_refused
        if control.release.is_set():
            raise ReleaseRequested
        try:
            should_stop = service.report_progress(job.id, step, total_steps, stage)
        except ServiceUnavailable as exc:  # the edit goes on; its result is what matters
            if not progress_refused:
                logger.warning("job %s: progress not recorded (%s)", job.id, exc.message)
            progress_refused = True
            return
        if should_stop:
            raise CancelRequested

    def settle(write: Callable[[], object], *, give_up_when_full: bool = False) -> None:
        _write_until_taken(job.id, write, control, give_up_when_full=give_up_when_full)

    try:
        source = _open_input(service, job)
        mask = _open_mask(service, job)
        result = editor.edit(job.request, source, on_progress, mask=mask)
        images = _to_produced(result, job, safety, nsfw_filter)
        regions = _regions_produced(result)
        try:
            settle(
                lambda: service.complete(
                    job.id,
                    images,
                    prompt_used=result.prompt,
                    passes=result.passes,
                    inference_ms=result.inference_s * 1000,
                    stages_s=result.stages_s,
                    reasoning=result.reasoning,
                    region_masks=regions,
                ),
                give_up_when_full=True,  # a full disk fails the job (once that can be written)
            )
        except InsufficientStorage as exc:
            logger.error("job %s: its outputs could not be stored: %s", job.id, exc.message)
            settle(partial(service.fail, job.id, exc.code, _STORAGE_MESSAGE))
            return "failed"
        return "succeeded"
    except (ClaimLost, Abandoned):
        raise
    except ReleaseRequested:
        settle(partial(service.release, job.id))
        return "released"
    except CancelRequested:
        settle(partial(service.finish_canceled, job.id))
        return "canceled"
    except StepEditError as exc:
        settle(partial(service.fail, job.id, exc.code, exc.message))
        return "failed"
    except Exception as exc:
        logger.exception("job %s: crashed", job.id)
        message = f"the edit failed: {type(exc).__name__}"
        settle(partial(service.fail, job.id, "internal_error", message))
        return "failed"


_STORAGE_MESSAGE = "the server ran out of disk space while storing the result; retry later"


def _open_input(service: JobService, job: ClaimedJob) -> Image.Image:
    return _open_stored(service, job, job.input_path, "RGB")


def _open_mask(service: JobService, job: ClaimedJob) -> Image.Image | None:
    """The edit's mask, stored checked ("L", the image's size) at submission."""
    return None if job.mask_path is None else _open_stored(service, job, job.mask_path, "L")


def _open_stored(service: JobService, job: ClaimedJob, path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as opened:
            return opened.convert(mode)
    except FileNotFoundError:
        # Only a job that ended meanwhile loses its input: canceled as it was claimed, or
        # taken over. Say so rather than crash.
        if service.is_cancel_requested(job.id):
            raise CancelRequested from None
        raise


def _write_until_taken(
    job_id: str, write: Callable[[], object], control: RunControl, *, give_up_when_full: bool
) -> None:
    """`write()`, retried while the database refuses it (down, or its disk full; with
    `give_up_when_full`, a full disk is raised instead)."""
    delay = RETRY_FIRST_S
    while True:
        try:
            write()
            return
        except ServiceUnavailable as exc:
            if give_up_when_full and isinstance(exc, InsufficientStorage):
                raise
            logger.warning("job %s: result not recorded yet (%s); retrying", job_id, exc.message)
        if control.abandon.wait(delay):
            raise Abandoned(job_id)
        delay = min(delay * 2, RETRY_MAX_S)


def _regions_produced(result: EditorResult) -> list[ProducedImage]:
    """The region of each image as the PNG the job keeps (`region_mask_url`)."""
    produced = []
    for region, seed in zip(result.region_masks, result.seeds, strict=False):
        buffer = io.BytesIO()
        region.convert("L").save(buffer, format="PNG")
        produced.append(
            ProducedImage(buffer.getvalue(), seed, False, "png", region.width, region.height)
        )
    return produced


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
        shutdown_grace_s: float = 10.0,
        health: ModelHealth | None = None,
    ) -> None:
        self.service = service
        # The state this worker's model moves (None: the service's; one of several workers
        # moves its own, which `engine.multi_gpu` combines).
        self._health = health
        self._load_editor = load_editor
        self._load_safety = load_safety
        self.nsfw_filter = nsfw_filter
        self.poll_s = poll_s
        self.shutdown_grace_s = shutdown_grace_s
        self.load_error: BaseException | None = None
        self.control = RunControl()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepedit-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def begin_stop(self) -> None:
        """Take no more jobs (the running one goes on)."""
        self._stop.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop taking jobs; give the running one `timeout_s` (default: the shutdown grace) to
        finish, then hand it back to the queue without counting its attempt."""
        self._stop.set()
        grace = self.shutdown_grace_s if timeout_s is None else timeout_s
        self._thread.join(grace)
        if not self._thread.is_alive():
            return
        self.control.release.set()  # taken at the edit's next step
        self._thread.join(RELEASE_WAIT_S)
        self.control.abandon.set()
        if self._thread.is_alive():  # stuck in one step: release it from here
            released = self.service.release_held()
            logger.warning("the worker did not stop; %d running job(s) handed back", released)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        model = self._health or self.service.model
        try:
            logger.info("loading the model")
            editor = self._load_editor()
            safety = self._load_safety()
        except BaseException as exc:
            self.load_error = exc
            model.failed(describe_failure(exc))
            logger.exception(
                "the model could not be loaded: /health says failed, submissions get 503, "
                "queued jobs wait for a restart"
            )
            return
        # /health reports the loaded model's version (the playground greys out reasoning), its
        # speed switches and LoRA adapters.
        model.loaded(*loaded_facts(editor))
        logger.info("model loaded; worker ready")
        try:
            while not self._stop.is_set():
                try:
                    job = self.service.claim_next(self.poll_s)
                    if job is not None:
                        run_job(
                            self.service,
                            editor,
                            job,
                            safety=safety,
                            nsfw_filter=self.nsfw_filter,
                            control=self.control,
                        )
                except ClaimLost as exc:
                    logger.warning("%s; its result was dropped", exc.message)
                except Abandoned as exc:
                    logger.warning("job %s: left for restart recovery", exc)
                    return
                except Exception:
                    # e.g. the database went away: keep serving once it is back
                    logger.exception("worker loop error; retrying")
                    self._stop.wait(self.poll_s)
        finally:
            model.stopped()
