"""`JobService`: the one entry point to the job system for the API flavours and the workers.

It is composed of small parts, so the single machine and a fleet run the same service:

    part         single machine (defaults)   fleet (`stepedit.distributed.service`)
    store        JobStore on SQLite          JobStore on PostgreSQL
    dispatcher   LocalDispatcher (wake-up)   CeleryDispatcher (API node) / NoDispatcher (worker)
    storage      FileStorage                 FileStorage on a shared mount, or ObjectStorage (S3)
    outbox       WebhookOutbox               WebhookOutbox (API node) / DeferredOutbox (worker)
    health       ModelHealth                 FleetHealth (API node) / ModelHealth (worker)
    job events   in-process                  + PostgreSQL LISTEN/NOTIFY (`jobs/events.py`)

API side (async, called from FastAPI routes; database work runs in a thread):
    submit(request, image, *, mask=None, owner, flavour, webhook_url=None,
           idempotency_key=None, wire_input=None) -> JobView
        `image` is already validated, normalised PNG/JPEG/WEBP bytes, `mask` (optional) the
        checked "L" PNG stored beside it (`inputs.check_edit_area`); the API layer has called
        `request.validate(version_spec(request))`; `wire_input` is the request as the client
        sent it (echoed by flavours that show it, e.g. wavespeed's webhook `input`). Raises
        ServiceUnavailable (the model failed to load, the broker or database is down, the
        server is shutting down) or its subclass InsufficientStorage (the disk is full) before
        anything is stored, QueueFull when the queue is at capacity, QuotaExceeded past the
        owner's daily token quota. One Idempotency-Key per owner makes one job, across nodes.
    get(job_id, owner) -> JobView          NotFound when absent or owned by someone else
    wait(job_id, owner, timeout_s) -> JobView   returns once terminal or at the timeout, woken
        by the job's events (not polling); raises ServiceUnavailable at once when the model
        failed to load or the server is shutting down (the job is kept either way). A caller
        that goes away does not cancel the job.
    cancel(job_id, owner) -> JobView       queued: canceled at once; processing: at the next step
    list(owner, limit=20) -> list[JobView] newest first
    events(job_id, owner) -> async iterator of JobView on every change, ending at a terminal state
    output_path(token) -> Path             NotFound when unknown, deleted or expired (sync)
    version_spec(request) -> VersionSpec | None   the release that will run `request`
    loaded_loras() / check_loras(request)   the LoRA adapters requests may name
    health() -> Health                     what /health reports
    webhook_secret_for(owner) / rotate_webhook_secret(owner) -> str   (and `_sync` twins)
    register_webhook_renderer(flavour, render), metrics

Worker side (sync): claim_next (single machine) / claim(job_id, worker_id) (fleet),
report_progress, complete, fail, finish_canceled, release; the model's state through `model`.

Every status change is a transition method here (`_start`, `complete`, `fail`,
`finish_canceled`, `release`, `cancel_sync`, `recover_lost`), each one guarded write in the store
(`JobStore.transition`) followed by what the new state brings (`_move`): a terminal job's input
deleted, metrics, its webhook due, its waiters woken; a re-queued job dispatched again. No
caller has a second step to remember. The attempt number is the fencing token: the worker-side
methods act only on an attempt this service claimed, so a worker whose job was taken over
cannot write to it.

A model that fails to load: /health says failed with the reason, submissions get
ServiceUnavailable, synchronous waiters get it at once; jobs already queued stay queued and run
after a restart with a working model (a config mistake is fixed and the server restarted; the
jobs clients were promised are not thrown away).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import logging
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import func

from stepedit.errors import (
    InsufficientStorage,
    InvalidInput,
    NotFound,
    QueueFull,
    QuotaExceeded,
    ServiceUnavailable,
    StepEditError,
)
from stepedit.jobs.dispatch import Dispatcher, LocalDispatcher
from stepedit.jobs.events import PROGRESS, STATUS, JobEvents, PostgresListener
from stepedit.jobs.health import Health, HealthCheck, LoadedLora, ModelHealth, declared_version
from stepedit.jobs.metrics import JobMetrics
from stepedit.jobs.models import JobRecord, OutputKind, utcnow
from stepedit.jobs.outbox import Outbox, WebhookOutbox, WebhookRenderer
from stepedit.jobs.state import JobStatus
from stepedit.jobs.storage import (
    FileStorage,
    Storage,
    check_data_dir,
    is_token,
    new_output_salt,
    output_token,
)
from stepedit.jobs.store import NOTIFY_CHANNEL, DuplicateKey, JobStore, Moved, StoredOutput
from stepedit.jobs.views import JobView, to_native_dict
from stepedit.jobs.webhooks import RetryPolicy, WebhookSecrets, WebhookSender, check_webhook_url
from stepedit.request import VERSIONS, EditRequest, VersionSpec
from stepedit.settings import Settings

__all__ = [
    "INTERRUPTED_MESSAGE",
    "ClaimLost",
    "ClaimedJob",
    "JobService",
    "ProducedImage",
    "to_native_dict",
    "tokens_for",
]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

INTERRUPTED_MESSAGE = "interrupted by server restart"
SHUTTING_DOWN_RETRY_S = 10
_WIRE_TEXT_LIMIT = 2048  # longer strings of a wire request (inline images) are not echoed
_RETENTION_BATCH = 500


class ClaimLost(StepEditError):
    """This worker's attempt is no longer current (taken over, or the job moved on)."""

    code = "claim_lost"


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs to run one job."""

    id: str
    request: EditRequest  # as stored at submit: `seed` is set
    input_path: Path
    attempt: int
    mask_path: Path | None = None  # the edit's mask ("L" PNG, white = may change), if any


@dataclass(frozen=True)
class ProducedImage:
    """One output image as the worker hands it back, already encoded."""

    data: bytes
    seed: int
    nsfw: bool
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class _Inputs:
    """Where a job's image and mask were stored."""

    image: Path
    mask: Path | None

    @property
    def paths(self) -> tuple[Path, Path | None]:
        return self.image, self.mask


@dataclass(frozen=True)
class _Claim:
    """An attempt this process runs: its fencing token, and what its output names come from."""

    attempt: int
    output_salt: str | None


def tokens_for(request: EditRequest, settings: Settings, spec: VersionSpec | None = None) -> int:
    """What an edit is charged: per image, double when a reasoning pass runs. With `spec` (the
    release that runs it) the passes are read as they will run, defaults included (a v1.2
    request that leaves them unset runs both); without it, as the request sets them."""
    if spec is not None:
        thinking, reflection = request.reasoning(spec)
    else:
        thinking, reflection = bool(request.enable_thinking), bool(request.enable_reflection)
    reasoning = (thinking or reflection) and not request.enhance_only
    per_image = settings.tokens_per_reasoning_edit if reasoning else settings.tokens_per_edit
    return per_image * request.num_images


def sender_from_settings(settings: Settings) -> WebhookSender:
    return WebhookSender(
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.allow_private_urls,
        max_connections=settings.webhook_concurrency * 2,
    )


def outbox_from_settings(store: JobStore, settings: Settings, *, recheck_s: float = 30.0) -> Outbox:
    return WebhookOutbox(
        store,
        sender_from_settings(settings),
        WebhookSecrets(store, settings),
        RetryPolicy.from_settings(settings),
        concurrency=settings.webhook_concurrency,
        per_destination=settings.webhook_per_destination,
        recheck_s=recheck_s,
    )


def _in_thread(
    method: Callable[Concatenate[JobService, _P], _R],
) -> Callable[Concatenate[JobService, _P], Coroutine[Any, Any, _R]]:
    """The API side's twin of a blocking method: the same call, awaited, run in a thread."""

    async def run(self: JobService, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    run.__name__ = method.__name__.removesuffix("_sync")
    run.__qualname__ = method.__qualname__.removesuffix("_sync")
    run.__doc__ = method.__doc__
    return run


class JobService:
    def __init__(
        self,
        settings: Settings,
        *,
        store: JobStore | None = None,
        dispatcher: Dispatcher | None = None,
        storage: Storage | None = None,
        outbox: Outbox | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        check_data_dir(settings.data_dir)
        self.settings = settings
        self.store = store or JobStore(settings.resolved_database_url, base_url=settings.base_url)
        self.dispatcher: Dispatcher = dispatcher or LocalDispatcher()
        self.storage: Storage = storage or FileStorage(settings.data_dir)
        self.secrets = WebhookSecrets(self.store, settings)
        self.outbox: Outbox = outbox or outbox_from_settings(self.store, settings)
        self.health_check: HealthCheck = health or ModelHealth(declared_version(settings))
        self.metrics = JobMetrics(self.store.count_by_status)
        self.job_events = JobEvents()
        self._listener: PostgresListener | None = None
        if self.store.is_postgres:  # fleet workers write there: their changes come as NOTIFYs
            self._listener = PostgresListener(self.store.engine, self.job_events, NOTIFY_CHANNEL)
            self.job_events.when_first_subscribed(self._listener.start)
        if isinstance(self.health_check, ModelHealth):
            self.health_check.on_change(self.job_events.publish_all)
        self._submit_lock = threading.Lock()  # capacity check + insert are one step per process
        self._held: dict[str, _Claim] = {}  # job id -> the attempt this process claimed
        self._closing = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Single machine, at start: jobs a dead server left processing go back to the queue
        (or fail, past max_attempts); webhook deliveries it left half-sent are due again; files
        no job refers to (a crash between writing and recording them) are deleted.

        Not for a fleet, whose processing jobs may be running on live workers: there the API
        nodes' sweeper recovers a dead worker's job, and leases expire.
        """
        for job_id, attempt in self.store.processing_jobs():
            view = self.recover_lost(
                job_id, attempt, code="interrupted", message=INTERRUPTED_MESSAGE
            )
            if view is not None:
                logger.warning("job %s: interrupted by a restart; now %s", job_id, view.status)
        self.outbox.recover()
        self.sweep_orphans(timedelta(0))

    def begin_shutdown(self) -> None:
        """SIGTERM: accept no more jobs; synchronous waiters and event streams end now (their
        jobs go on, or wait for the restart)."""
        self._closing.set()
        self.job_events.publish_all()

    @property
    def is_closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        self.begin_shutdown()
        if self._listener is not None:
            self._listener.stop()
        self.outbox.close()
        self.store.close()

    def health(self) -> Health:
        return self.health_check.health()

    @property
    def model(self) -> ModelHealth:
        """The state of the model this process loads (the single machine, a fleet worker)."""
        if not isinstance(self.health_check, ModelHealth):
            raise TypeError("this service runs no model (a fleet API node)")
        return self.health_check

    # Shorthands over `health()` and `model`, for tests and callers that only need a flag.

    @property
    def is_ready(self) -> bool:
        return self.health().is_ready

    def set_ready(self, is_ready: bool) -> None:
        if is_ready:
            self.model.loaded()
        else:
            self.model.stopped()

    @property
    def model_version(self) -> str | None:
        return self.health_check.model_version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self.model.model_version = version

    def version_spec(self, request: EditRequest) -> VersionSpec | None:
        """The release that will run `request`: the one this server loads (declared or
        detected; None while unknown), or on a fleet the one the request is routed to."""
        version = self.dispatcher.version_for(request) or self.health_check.model_version
        return next((spec for name, spec in VERSIONS.items() if name == version), None)

    def loaded_loras(self) -> tuple[LoadedLora, ...] | None:
        """The LoRA adapters requests may name (`GET /v1/loras`); None while unknown here."""
        return self.health_check.loaded_loras()

    def check_loras(self, request: EditRequest) -> None:
        """InvalidInput(param="loras") for an adapter the model did not preload (on a fleet:
        that no live worker reports). Nothing to check while they are not known (the model is
        loading, no worker is live): the worker's pipeline refuses the name then, and the job
        fails with invalid_input."""
        loaded = self.loaded_loras()
        if request.loras is None or loaded is None:
            return
        names = [lora.name for lora in loaded]
        unknown = [choice.name for choice in request.loras if choice.name not in names]
        if unknown:
            raise InvalidInput(
                f"loras: {', '.join(map(repr, unknown))} not loaded on this server (loaded: "
                f"{', '.join(names) or 'none'}; GET /v1/loras lists them)",
                param="loras",
            )

    def register_webhook_renderer(self, flavour: str, render: WebhookRenderer) -> None:
        self.outbox.register_renderer(flavour, render)

    @property
    def webhooks(self) -> WebhookSender | None:
        """The sender of this process's webhooks (None on a fleet worker, which sends none)."""
        return self.outbox.sender

    @property
    def webhook_secret(self) -> str:
        """Anonymous callers' signing secret (`webhook_secret_for(None)`)."""
        return self.secrets.current(None)

    # ---------------------------------------------------------------- API side

    # submit, get, cancel and list: their `_sync` twins in a worker thread (after those, below)

    async def wait(self, job_id: str, owner: str | None, timeout_s: float) -> JobView:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with self.job_events.subscribe(job_id, (STATUS,)) as woken:  # before the first read
            view = await self.get(job_id, owner)
            while not view.is_terminal:
                self._raise_if_cannot_run(view)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await woken.wait(min(remaining, self.settings.wait_recheck_s))
                view = await self.get(job_id, owner)
        return view

    async def events(
        self,
        job_id: str,
        owner: str | None,
        poll_s: float | None = None,
        heartbeat_s: float | None = None,
    ) -> AsyncIterator[JobView]:
        """The view now and on every change; unchanged views again every `heartbeat_s`. Woken
        by the job's events; `poll_s` (default `wait_recheck_s`) re-reads it besides. The
        stream ends at a terminal state, or when the server shuts down."""
        loop = asyncio.get_running_loop()
        recheck_s = poll_s if poll_s is not None else self.settings.wait_recheck_s
        with self.job_events.subscribe(job_id, (STATUS, PROGRESS)) as woken:
            view = await self.get(job_id, owner)
            yield view
            last, last_sent = (view.status, view.progress), loop.time()
            while not view.is_terminal and not self.is_closing:
                timeout_s = recheck_s
                if heartbeat_s is not None:
                    timeout_s = min(timeout_s, heartbeat_s - (loop.time() - last_sent))
                await woken.wait(timeout_s)
                view = await self.get(job_id, owner)
                is_quiet = heartbeat_s is not None and loop.time() - last_sent >= heartbeat_s
                if (view.status, view.progress) != last or is_quiet:
                    last, last_sent = (view.status, view.progress), loop.time()
                    yield view

    def output_path(self, token: str) -> Path:
        if not is_token(token):
            raise NotFound("no such file")
        recorded = self.store.output_path(token)
        try:
            return self.storage.local_path(recorded)
        except FileNotFoundError as exc:
            raise NotFound("no such file") from exc

    async def webhook_secret_for(self, owner: str | None) -> str:
        """`owner`'s webhook signing secret (`whsec_...`), generated when first asked for."""
        return await asyncio.to_thread(self.secrets.current, owner)

    async def rotate_webhook_secret(self, owner: str | None) -> str:
        """A new secret for `owner`; deliveries are signed with the new and the old one for
        `webhook_secret_overlap`. InvalidInput for anonymous callers whose secret is set by
        STEPEDIT_WEBHOOK_SECRET."""
        return await asyncio.to_thread(self.secrets.rotate, owner)

    # sync twins, for threads and tests

    def webhook_secret_for_sync(self, owner: str | None) -> str:
        return self.secrets.current(owner)

    def rotate_webhook_secret_sync(self, owner: str | None) -> str:
        return self.secrets.rotate(owner)

    def submit_sync(
        self,
        request: EditRequest,
        image: bytes,
        *,
        mask: bytes | None = None,
        owner: str | None,
        flavour: str,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        wire_input: Mapping[str, Any] | None = None,
    ) -> JobView:
        try:
            self._raise_if_closing()
            self.health_check.raise_if_failed()  # a model that failed to load
            self.dispatcher.check_available()  # a fleet's broker
            self._check_free_space()
        except InsufficientStorage:
            self.metrics.rejected.labels("insufficient_storage").inc()
            raise
        except ServiceUnavailable:
            self.metrics.rejected.labels("unavailable").inc()
            raise
        if webhook_url is not None:
            check_webhook_url(webhook_url)
        request = request.with_seed()  # the seed is part of what was accepted
        tokens = tokens_for(request, self.settings, self.version_spec(request))
        with self._submit_lock:
            if idempotency_key:
                existing = self.store.find_idempotent(owner, idempotency_key)
                if existing is not None:
                    return existing
            self._check_capacity(owner, tokens)
            job_id = uuid.uuid4().hex
            inputs = self._save_inputs(job_id, image, mask)
            record = _new_record(job_id, request, flavour, owner, inputs, tokens, webhook_url,
                                 idempotency_key, wire_input)  # fmt: skip
            try:
                view = self.store.add(record)
            except DuplicateKey:  # another API node took the key between our check and insert
                self._delete_all(inputs.paths)
                existing = self.store.find_idempotent(owner, idempotency_key or "")
                assert existing is not None
                return existing
            except BaseException:
                self._delete_all(inputs.paths)
                raise
        self.metrics.submitted.labels(flavour).inc()
        logger.info("job %s: queued (%s)", job_id, flavour)
        self._dispatch(view)
        return view

    def get_sync(self, job_id: str, owner: str | None) -> JobView:
        return self.store.owned_view(job_id, owner)

    def list_sync(self, owner: str | None, limit: int = 20) -> builtins.list[JobView]:
        return self.store.list_views(owner, max(1, min(limit, 100)))

    def cancel_sync(self, job_id: str, owner: str | None) -> JobView:
        """A queued job: canceled now. A running one: asked to stop at its next step."""
        view = self.store.owned_view(job_id, owner)
        for _ in range(3):  # each round sees the job where the last one left it
            if view.status is JobStatus.QUEUED:
                moved = self._move(job_id, JobStatus.QUEUED, view.attempt, JobStatus.CANCELED)
                if moved is not None:
                    return moved.view
            elif view.status is JobStatus.PROCESSING:
                if self.store.request_cancel(job_id, view.attempt):
                    logger.info("job %s: cancel requested", job_id)
                    return self.store.view(job_id)
            else:
                return view
            view = self.store.owned_view(job_id, owner)
        return view

    submit = _in_thread(submit_sync)
    get = _in_thread(get_sync)
    cancel = _in_thread(cancel_sync)
    list = _in_thread(list_sync)

    def count_by_status(self) -> dict[str, int]:
        return self.store.count_by_status()

    def queue_depth(self) -> int:
        return self.store.count_queued()

    def cleanup_expired(self) -> int:
        """Delete expired output files, jobs past `job_retention`, and files no job refers to
        (older than `orphan_grace_s`); returns how many outputs expired. Every API node of a
        fleet runs it (each step is a set of idempotent deletes)."""
        expired = self.store.expired_outputs(utcnow())
        for _token, path in expired:
            self.storage.delete(path)
        self.store.mark_outputs_deleted([token for token, _path in expired])
        if expired:
            logger.info("deleted %d expired outputs", len(expired))
        self.delete_old_jobs()
        self.sweep_orphans(timedelta(seconds=self.settings.orphan_grace_s))
        return len(expired)

    def delete_old_jobs(self) -> int:
        """Jobs that finished more than `job_retention` ago are deleted, with their files."""
        retention = self.settings.job_retention
        if retention is None:
            return 0
        cutoff, deleted = utcnow() - retention, 0
        while batch := self.store.delete_finished_before(cutoff, _RETENTION_BATCH):
            for job in batch:
                for path in job.paths:
                    self.storage.delete(path)
            deleted += len(batch)
            if len(batch) < _RETENTION_BATCH:
                break
        if deleted:
            logger.info("deleted %d jobs older than the retention of %s", deleted, retention)
        return deleted

    def sweep_orphans(self, min_age: timedelta) -> int:
        """Delete stored files no job refers to, once older than `min_age`: outputs of an
        attempt that died before recording them, inputs of a submission that died before its
        job was stored, temporary files of interrupted writes."""
        cutoff = utcnow() - min_age
        candidates = [f for f in self.storage.stored_files() if f.modified <= cutoff]
        named = [(f.path.name.split(".")[0], f) for f in candidates if not f.is_temporary]
        outputs = {name for name, f in named if f.kind == "outputs"}
        inputs = {name for name, f in named if f.kind == "inputs"}  # job ids (image and mask)
        keep = self.store.recorded_output_tokens(builtins.list(outputs))
        keep |= self.store.jobs_holding_inputs(builtins.list(inputs))
        orphans = [f for f in candidates if f.is_temporary]
        orphans += [f for name, f in named if name not in keep]
        for orphan in orphans:
            self.storage.delete(orphan.path)
        if orphans:
            logger.warning("deleted %d stored files no job refers to", len(orphans))
        return len(orphans)

    def deliver_pending_webhooks(self) -> None:
        """Look for webhook deliveries that are due (the fleet's sweeper)."""
        self.outbox.wake()

    # ---------------------------------------------------------------- worker side

    def claim_next(self, timeout_s: float = 1.0) -> ClaimedJob | None:
        """Single machine: start the oldest queued job; None after `timeout_s` without one."""
        claimed = self._claim_oldest()
        if claimed is None:
            self.dispatcher.wait_for_work(timeout_s)
            claimed = self._claim_oldest()
        return claimed

    def claim(self, job_id: str, worker_id: str) -> ClaimedJob | None:
        """Fleet: start `job_id` on `worker_id` if it is queued; None when it is not (running
        elsewhere, done, or another worker's claim came first)."""
        position = self.store.position(job_id)
        if position is None or position[0] is not JobStatus.QUEUED:
            return None
        return self._start(job_id, position[1], worker_id)

    def report_progress(self, job_id: str, step: int, total_steps: int, stage: str) -> bool:
        """Record progress; True when the worker should stop (canceled, or no longer its job)."""
        claim = self._held.get(job_id)
        if claim is None:
            return True
        should_stop = self.store.record_progress(job_id, claim.attempt, step, total_steps, stage)
        self.job_events.publish(job_id, PROGRESS)
        return should_stop

    def is_cancel_requested(self, job_id: str) -> bool:
        return self.store.is_cancel_requested(job_id)

    def complete(
        self,
        job_id: str,
        images: Sequence[ProducedImage],
        *,
        prompt_used: str | None,
        passes: Sequence[str],
        inference_ms: float,
        stages_s: Mapping[str, float] | None = None,
        reasoning: Mapping[str, Any] | None = None,
        region_masks: Sequence[ProducedImage] = (),
    ) -> JobView:
        """Store the outputs (named by job, attempt, kind and index) and record the success:
        the images, and where each may have changed (`region_masks`, "L" PNGs, when the edit
        had a region). A full disk is InsufficientStorage, with no output left behind."""
        claim = self._claim_of(job_id)
        expires_at = utcnow() + self.settings.output_ttl
        outputs: list[StoredOutput] = []
        produced = [(OutputKind.IMAGE, images), (OutputKind.REGION_MASK, region_masks)]
        try:
            for kind, files in produced:
                for index, image in enumerate(files):
                    token = output_token(claim.output_salt, claim.attempt, index, kind)
                    path = self.storage.save_output(token, image.data, image.format)
                    outputs.append(
                        StoredOutput(token, str(path), image.seed, image.nsfw, image.format,
                                     image.width, image.height, expires_at, kind)
                    )  # fmt: skip
            moved = self._finish(
                job_id,
                claim,
                JobStatus.SUCCEEDED,
                outputs=outputs,
                prompt_used=prompt_used,
                passes_json=json.dumps(builtins.list(passes)),
                inference_ms=round(inference_ms, 1),
                timings_json=json.dumps(dict(stages_s or {})),  # seconds; views show ms
                reasoning_json=None if reasoning is None else json.dumps(dict(reasoning)),
            )
        except BaseException:
            for output in outputs:  # not recorded: keep no trace (a retry writes them again)
                self.storage.delete(output.path)
            raise
        if moved.view.status is not JobStatus.SUCCEEDED:
            for output in outputs:  # canceled at the last moment: the result is not kept
                self.storage.delete(output.path)
        else:
            self.metrics.inference_seconds.observe(inference_ms / 1000)
        return moved.view

    def fail(self, job_id: str, code: str, message: str) -> JobView:
        claim = self._claim_of(job_id)
        moved = self._finish(
            job_id, claim, JobStatus.FAILED, error_code=code, error_message=message
        )
        return moved.view

    def finish_canceled(self, job_id: str) -> JobView:
        claim = self._claim_of(job_id)
        moved = self._move(job_id, JobStatus.PROCESSING, claim.attempt, JobStatus.CANCELED)
        if moved is None:
            raise self._claim_lost(job_id, claim.attempt)
        return moved.view

    def release(self, job_id: str) -> JobView | None:
        """Hand a running job back to the queue without counting its attempt (a graceful
        shutdown that could not wait for it). None when it was no longer ours."""
        claim = self._held.get(job_id)
        if claim is None:
            return None
        released = func.coalesce(JobRecord.attempts_released, 0) + 1
        moved = self._move(
            job_id,
            JobStatus.PROCESSING,
            claim.attempt,
            JobStatus.QUEUED,
            cancel_requested=False,
            attempts_released=released,
        )
        if moved is None:  # its owner asked to cancel it meanwhile: done, not queued again
            moved = self._move(job_id, JobStatus.PROCESSING, claim.attempt, JobStatus.CANCELED)
        if moved is None or moved.view.status is JobStatus.CANCELED:
            return None
        logger.warning("job %s: handed back to the queue by a shutdown", job_id)
        return moved.view

    def release_held(self) -> int:
        """Release every job this process still runs (its worker did not stop in time)."""
        return sum(self.release(job_id) is not None for job_id in builtins.list(self._held))

    @property
    def held_jobs(self) -> builtins.list[str]:
        return builtins.list(self._held)

    def recover_lost(self, job_id: str, attempt: int, *, code: str, message: str) -> JobView | None:
        """Attempt `attempt` of `job_id` died with its process (a restart, a dead worker): the
        job goes back to the queue and is dispatched again, or fails with `code` once
        max_attempts are spent (runs handed back by a graceful shutdown do not count). The
        outputs that attempt may have written without recording them are deleted.
        Conditional on the attempt, so a live takeover is never undone; None when the job had
        moved on. A job its owner asked to cancel is canceled, not run again."""
        moved = self._move(
            job_id, JobStatus.PROCESSING, attempt, JobStatus.CANCELED, cancel_requested=True
        )
        if moved is not None:
            self._delete_unrecorded_outputs(moved, attempt)
            return moved.view
        if self.store.counted_attempts(job_id) < self.settings.max_attempts:
            moved = self._move(job_id, JobStatus.PROCESSING, attempt, JobStatus.QUEUED)
        else:
            moved = self._move(
                job_id,
                JobStatus.PROCESSING,
                attempt,
                JobStatus.FAILED,
                error_code=code,
                error_message=message,
            )
        if moved is None:
            return None
        self._delete_unrecorded_outputs(moved, attempt)
        return moved.view

    # ---------------------------------------------------------------- transitions

    def _finish(
        self,
        job_id: str,
        claim: _Claim,
        target: JobStatus,
        *,
        outputs: Sequence[StoredOutput] = (),
        **fields: Any,
    ) -> Moved:
        """The running attempt ends at `target`, unless its owner asked to cancel it meanwhile
        (after its last progress step): then it ends canceled, as the client was told it
        would. ClaimLost when the attempt is no longer current."""
        moved = self._move(
            job_id,
            JobStatus.PROCESSING,
            claim.attempt,
            target,
            outputs=outputs,
            cancel_requested=False,
            **fields,
        )
        if moved is None:  # canceled meanwhile, or no longer ours: the guard tells which
            moved = self._move(job_id, JobStatus.PROCESSING, claim.attempt, JobStatus.CANCELED)
        if moved is None:
            raise self._claim_lost(job_id, claim.attempt)
        return moved

    def _start(self, job_id: str, attempt: int, worker_id: str | None) -> ClaimedJob | None:
        moved = self._move(
            job_id, JobStatus.QUEUED, attempt, JobStatus.PROCESSING, worker_id=worker_id
        )
        if moved is None:
            return None
        view = moved.view
        self._held[job_id] = _Claim(view.attempt, moved.output_salt)
        try:
            if moved.input_path is None:
                raise FileNotFoundError(job_id)
            input_path = self.storage.local_path(moved.input_path)
            mask_path = None
            if moved.mask_path is not None:
                mask_path = self.storage.local_path(moved.mask_path)
        except FileNotFoundError:
            self.fail(job_id, "input_missing", "the job's input image or mask is gone")
            return None
        return ClaimedJob(job_id, view.request, input_path, view.attempt, mask_path)

    def _move(
        self, job_id: str, expected: JobStatus, attempt: int, target: JobStatus, **changes: Any
    ) -> Moved | None:
        """The one way a job changes status: the store's guarded write (`JobStore.transition`,
        which takes `changes`: outputs, cancel_requested, fields), then what the new state
        brings. None (and nothing done) when the job was not at (expected, attempt)."""
        moved = self.store.transition(job_id, expected, attempt, target, **changes)
        if moved is None:
            return None
        view = moved.view
        logger.info("job %s: %s -> %s (attempt %d)", job_id, expected, target, view.attempt)
        if target.is_terminal:
            self._held.pop(job_id, None)
            self._delete_all((moved.input_path, moved.mask_path))
            self.metrics.finished.labels(target.value).inc()
            if view.timings.total_ms is not None:
                self.metrics.job_latency.labels(target.value).observe(view.timings.total_ms / 1000)
            if view.webhook_url:
                self.outbox.enqueue(job_id)
        elif target is JobStatus.QUEUED:
            self._dispatch(view)
        self.job_events.publish(job_id, STATUS)
        return moved

    # ---------------------------------------------------------------- internals

    def _claim_oldest(self) -> ClaimedJob | None:
        for job_id, attempt in self.store.oldest_queued(limit=4):
            claimed = self._start(job_id, attempt, None)
            if claimed is not None:
                return claimed
        return None

    def _dispatch(self, view: JobView) -> None:
        try:
            self.dispatcher.dispatch(view.id, view.request, view.flavour)
        except ServiceUnavailable:
            # Committed, so accepted: a fleet's sweeper sends it once the broker is back.
            logger.warning("job %s: dispatch failed; it will be sent again", view.id)

    def _save_inputs(self, job_id: str, image: bytes, mask: bytes | None) -> _Inputs:
        saved: builtins.list[Path] = []
        try:
            saved.append(self.storage.save_input(job_id, image))
            if mask is not None:
                saved.append(self.storage.save_mask(job_id, mask))
        except InsufficientStorage:
            self._delete_all(saved)
            self.metrics.rejected.labels("insufficient_storage").inc()
            raise
        except BaseException:
            self._delete_all(saved)
            raise
        return _Inputs(saved[0], saved[1] if mask is not None else None)

    def _delete_all(self, paths: Iterable[str | Path | None]) -> None:
        for path in paths:
            self.storage.delete(path)

    def _delete_unrecorded_outputs(self, moved: Moved, attempt: int) -> None:
        if moved.output_salt is None:
            return
        request = moved.view.request
        for index in range(request.num_images):
            token = output_token(moved.output_salt, attempt, index)
            self.storage.delete(self.storage.output_path(token, request.output_format))
            token = output_token(moved.output_salt, attempt, index, OutputKind.REGION_MASK)
            self.storage.delete(self.storage.output_path(token, "png"))

    def _claim_of(self, job_id: str) -> _Claim:
        """The attempt this process claimed. A claim that was lost stays remembered, so every
        later write of the stale attempt is refused too."""
        claim = self._held.get(job_id)
        if claim is None:
            raise ClaimLost(f"job {job_id}: not claimed by this process")
        return claim

    def _claim_lost(self, job_id: str, attempt: int) -> ClaimLost:
        return ClaimLost(f"job {job_id}: attempt {attempt} is no longer current")

    def _raise_if_cannot_run(self, view: JobView) -> None:
        try:
            self.health_check.raise_if_failed()
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(
                f"{exc.message}; job {view.id} stays {view.status.value} and runs once the "
                "server restarts with a working model"
            ) from exc
        if self.is_closing:
            error = ServiceUnavailable(
                f"the server is restarting; job {view.id} is kept and continues after the "
                "restart (poll it, or retry with the same Idempotency-Key)"
            )
            error.retry_after_s = SHUTTING_DOWN_RETRY_S
            raise error

    def _raise_if_closing(self) -> None:
        if self.is_closing:
            error = ServiceUnavailable("the server is shutting down; retry shortly")
            error.retry_after_s = SHUTTING_DOWN_RETRY_S
            raise error

    def _check_free_space(self) -> None:
        reserve = self.settings.min_free_disk_mb * 1024 * 1024
        if reserve <= 0:
            return
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
        except OSError:
            return
        if free < reserve:
            raise InsufficientStorage(
                f"the server's disk is nearly full ({free // (1024 * 1024)} MB free); retry later"
            )

    def _check_capacity(self, owner: str | None, tokens: int) -> None:
        if self.store.count_queued() >= self.settings.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(f"the queue is full ({self.settings.max_queue} jobs); retry later")
        quota = self.settings.daily_token_quota
        if quota is None:
            return
        day_start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        used = self.store.tokens_used_since(owner, day_start)
        if used + tokens > quota:
            self.metrics.rejected.labels("quota").inc()
            raise QuotaExceeded(
                f"daily quota of {quota} tokens reached ({used} used, this edit needs {tokens})"
            )


def idempotency_scope(owner: str | None, key: str) -> str:
    """The unique column's value for (owner, key): anonymous callers share one scope."""
    return hashlib.sha256(f"{owner or ''}\x00{key}".encode()).hexdigest()


def compact_wire_input(wire_input: Mapping[str, Any]) -> dict[str, Any]:
    """The wire request as stored for echoing: long strings (inline images) are replaced by a
    note of their length, so a job row (and every webhook body) stays small."""

    def compact(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _WIRE_TEXT_LIMIT:
            return f"<{len(value)} characters, not echoed>"
        if isinstance(value, Mapping):
            return {str(k): compact(v) for k, v in value.items()}
        if isinstance(value, builtins.list | tuple):
            return [compact(v) for v in value]
        return value

    return {str(k): compact(v) for k, v in wire_input.items()}


def _new_record(
    job_id: str,
    request: EditRequest,
    flavour: str,
    owner: str | None,
    inputs: _Inputs,
    tokens: int,
    webhook_url: str | None,
    idempotency_key: str | None,
    wire_input: Mapping[str, Any] | None,
) -> JobRecord:
    assert request.seed is not None
    now = utcnow()
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED.value,
        flavour=flavour,
        owner=owner,
        request_json=request.to_json(),
        input_json=None if wire_input is None else json.dumps(compact_wire_input(wire_input)),
        seed=request.seed,  # a copy, for queries
        input_path=str(inputs.image),
        mask_path=None if inputs.mask is None else str(inputs.mask),
        webhook_url=webhook_url,
        webhook_state="pending" if webhook_url else None,
        webhook_attempts=0 if webhook_url else None,
        idempotency_key=idempotency_key,
        idempotency_scope=idempotency_scope(owner, idempotency_key) if idempotency_key else None,
        tokens=tokens,
        attempt=0,
        attempts_released=0,
        output_salt=new_output_salt(),
        cancel_requested=False,
        created_at=now,
        queued_at=now,
        progress_step=0,
        progress_total=request.num_inference_steps,
        progress_stage="queued",
        passes_json="[]",
        timings_json="{}",
    )
