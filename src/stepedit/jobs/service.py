"""`JobService`: the one entry point to the job system for the API flavours and the worker.

API side (async, called from FastAPI routes; database work runs in a thread):
    submit(request, image, *, owner, flavour, webhook_url=None, idempotency_key=None) -> JobView
        `image` is already validated, normalised PNG/JPEG/WEBP bytes. Raises QueueFull when the
        queue is at capacity, QuotaExceeded past the owner's daily token quota.
    get(job_id, owner) -> JobView          NotFound when absent or owned by someone else
    wait(job_id, owner, timeout_s) -> JobView   returns once terminal, or at the timeout
    cancel(job_id, owner) -> JobView       queued: canceled at once; processing: at the next step
    list(owner, limit=20) -> list[JobView] newest first
    events(job_id, owner) -> async iterator of JobView on every change, ending at a terminal state
    output_path(token) -> Path             NotFound when unknown, deleted or expired (sync)
    register_webhook_renderer(flavour, render)   `render(JobView) -> JSON-able dict`: the body
        POSTed to a job's webhook on its terminal state (default: `to_native_dict`).
    webhook_secret: str                    the `whsec_...` signing secret

Worker side (sync, called from the worker thread): claim_next, report_progress, complete, fail,
finish_canceled, set_ready.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import logging
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stepedit.errors import NotFound, QueueFull, QuotaExceeded
from stepedit.jobs.metrics import JobMetrics
from stepedit.jobs.models import JobRecord, OutputRecord, utcnow
from stepedit.jobs.state import JobStatus
from stepedit.jobs.storage import FileStorage, is_token
from stepedit.jobs.store import JobStore
from stepedit.jobs.views import ErrorView, JobView, OutputView, ProgressView, TimingsView
from stepedit.jobs.webhooks import WebhookSender, check_webhook_url
from stepedit.request import MAX_SEED, EditRequest
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

WebhookRenderer = Callable[[JobView], Mapping[str, Any]]
INTERRUPTED_MESSAGE = "interrupted by server restart"


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs to run one job."""

    id: str
    request: EditRequest  # with `seed` set to the seed to use
    input_path: Path
    attempt: int


@dataclass(frozen=True)
class ProducedImage:
    """One output image as the worker hands it back, already encoded."""

    data: bytes
    seed: int
    nsfw: bool
    format: str
    width: int
    height: int


def request_to_json(request: EditRequest) -> str:
    return json.dumps(dataclasses.asdict(request), sort_keys=True)


def request_from_json(text: str) -> EditRequest:
    known = {f.name for f in dataclasses.fields(EditRequest)}
    return EditRequest(**{k: v for k, v in json.loads(text).items() if k in known})


def tokens_for(request: EditRequest, settings: Settings) -> int:
    reasoning = bool(request.enable_thinking or request.enable_reflection)
    per_image = settings.tokens_per_reasoning_edit if reasoning else settings.tokens_per_edit
    return per_image * request.num_images


def to_native_dict(view: JobView) -> dict[str, Any]:
    """The native JobView JSON (CONTRACTS.md); also the default webhook body."""
    return {
        "id": view.id,
        "status": view.status.value,
        "created_at": _iso(view.created_at),
        "started_at": _iso(view.started_at),
        "finished_at": _iso(view.finished_at),
        "request": dataclasses.asdict(view.request),
        "seed": view.seed,
        "progress": dataclasses.asdict(view.progress),
        "outputs": [{"url": o.url, "seed": o.seed, "nsfw": o.nsfw} for o in view.outputs],
        "prompt_used": view.prompt_used,
        "passes": list(view.passes),
        "reasoning": view.reasoning,
        "error": dataclasses.asdict(view.error) if view.error else None,
        "timings": {
            "inference_ms": view.timings.inference_ms,
            "queue_ms": view.timings.queue_ms,
            "total_ms": view.timings.total_ms,
            **{f"{k}_ms": v for k, v in view.timings.stages_ms.items()},
        },
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore | None = None,
        storage: FileStorage | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.store = store or JobStore(settings.resolved_database_url)
        self.storage = storage or FileStorage(settings.data_dir)
        self.webhook_secret = settings.resolved_webhook_secret()
        self.webhooks = webhooks or WebhookSender(
            self.webhook_secret,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            timeout_s=settings.webhook_timeout_s,
            allow_private=settings.allow_private_urls,
        )
        self.metrics = JobMetrics(self.count_by_status)
        self.is_ready = False  # set by the worker once the model is loaded
        self.model_version: str | None = None  # set by an in-process worker once loaded
        self._renderers: dict[str, WebhookRenderer] = {}
        self._submit_lock = threading.Lock()  # capacity check + insert are one step
        self._wakeup = threading.Condition()
        self._webhook_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webhook")

    # ---------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Startup: re-queue or fail jobs a dead server left processing; resend lost webhooks.

        Queued jobs need nothing: they are still queued in the database.
        """
        now = utcnow()
        pending_webhooks: list[str] = []
        with self.store.session() as session:
            stuck = session.scalars(
                select(JobRecord).where(JobRecord.status == JobStatus.PROCESSING.value)
            ).all()
            for record in stuck:
                if record.attempt < self.settings.max_attempts:
                    logger.warning("job %s: interrupted by a restart, re-queued", record.id)
                    record.requeue(now)
                else:
                    logger.warning("job %s: interrupted again, failed", record.id)
                    record.fail(now, "interrupted", INTERRUPTED_MESSAGE)
                    self._on_terminal(record)
            undelivered = session.scalars(
                select(JobRecord).where(JobRecord.webhook_state == "pending")
            ).all()
            pending_webhooks = [r.id for r in undelivered if r.job_status.is_terminal]
        for job_id in pending_webhooks:
            self._webhook_pool.submit(self._deliver_webhook, job_id)
        self._notify()

    def close(self) -> None:
        self._webhook_pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def set_ready(self, is_ready: bool) -> None:
        self.is_ready = is_ready

    def register_webhook_renderer(self, flavour: str, render: WebhookRenderer) -> None:
        self._renderers[flavour] = render

    # ---------------------------------------------------------------- API side

    async def submit(
        self,
        request: EditRequest,
        image: bytes,
        *,
        owner: str | None,
        flavour: str,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        return await asyncio.to_thread(
            self.submit_sync,
            request,
            image,
            owner=owner,
            flavour=flavour,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
        )

    async def get(self, job_id: str, owner: str | None) -> JobView:
        return await asyncio.to_thread(self.get_sync, job_id, owner)

    async def wait(self, job_id: str, owner: str | None, timeout_s: float) -> JobView:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        view = await self.get(job_id, owner)
        while not view.is_terminal and loop.time() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
            view = await self.get(job_id, owner)
        return view

    async def cancel(self, job_id: str, owner: str | None) -> JobView:
        return await asyncio.to_thread(self.cancel_sync, job_id, owner)

    async def list(self, owner: str | None, limit: int = 20) -> list[JobView]:
        return await asyncio.to_thread(self.list_sync, owner, limit)

    async def events(
        self,
        job_id: str,
        owner: str | None,
        poll_s: float = 0.2,
        heartbeat_s: float | None = None,
    ) -> AsyncIterator[JobView]:
        """The view now and on every change; unchanged views again every `heartbeat_s`."""
        loop = asyncio.get_running_loop()
        view = await self.get(job_id, owner)
        yield view
        last, last_sent = (view.status, view.progress), loop.time()
        while not view.is_terminal:
            await asyncio.sleep(poll_s)
            view = await self.get(job_id, owner)
            is_quiet = heartbeat_s is not None and loop.time() - last_sent >= heartbeat_s
            if (view.status, view.progress) != last or is_quiet:
                last, last_sent = (view.status, view.progress), loop.time()
                yield view

    def output_path(self, token: str) -> Path:
        if not is_token(token):
            raise NotFound("no such file")
        with self.store.session() as session:
            record = session.get(OutputRecord, token)
            if record is None or record.deleted or record.expires_at <= utcnow():
                raise NotFound("no such file (it may have expired)")
            path = Path(record.path)
        if not path.is_file():
            raise NotFound("no such file")
        return path

    # sync twins, for threads and tests

    def submit_sync(
        self,
        request: EditRequest,
        image: bytes,
        *,
        owner: str | None,
        flavour: str,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        now = utcnow()
        tokens = tokens_for(request, self.settings)
        if webhook_url is not None:
            check_webhook_url(webhook_url)
        with self._submit_lock, self.store.session() as session:
            if idempotency_key:
                existing = session.scalars(
                    select(JobRecord).where(
                        JobRecord.idempotency_key == idempotency_key,
                        _owned_by(owner),
                    )
                ).first()
                if existing is not None:
                    return self._view(existing)
            queued = session.scalar(
                select(func.count())
                .select_from(JobRecord)
                .where(JobRecord.status == JobStatus.QUEUED.value)
            )
            if (queued or 0) >= self.settings.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(f"the queue is full ({self.settings.max_queue} jobs); retry later")
            self._check_quota(session, owner, tokens, now)
            job_id = uuid.uuid4().hex
            seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
            input_path = self.storage.save_input(job_id, image)
            record = JobRecord(
                id=job_id,
                status=JobStatus.QUEUED.value,
                flavour=flavour,
                owner=owner,
                request_json=request_to_json(request),
                seed=seed,
                input_path=str(input_path),
                webhook_url=webhook_url,
                webhook_state="pending" if webhook_url else None,
                idempotency_key=idempotency_key,
                tokens=tokens,
                attempt=0,
                cancel_requested=False,
                created_at=now,
                queued_at=now,
                progress_step=0,
                progress_total=request.num_inference_steps,
                progress_stage="queued",
                passes_json="[]",
                timings_json="{}",
            )
            session.add(record)
            session.flush()
            view = self._view(record)
        self.metrics.submitted.labels(flavour).inc()
        logger.info("job %s: queued (%s)", job_id, flavour)
        self._notify()
        return view

    def get_sync(self, job_id: str, owner: str | None) -> JobView:
        with self.store.session() as session:
            return self._view(self._owned(session, job_id, owner))

    def list_sync(self, owner: str | None, limit: int = 20) -> builtins.list[JobView]:
        limit = max(1, min(limit, 100))
        with self.store.session() as session:
            records = session.scalars(
                select(JobRecord)
                .where(_owned_by(owner))
                .order_by(JobRecord.created_at.desc())
                .limit(limit)
            ).all()
            return [self._view(r) for r in records]

    def cancel_sync(self, job_id: str, owner: str | None) -> JobView:
        with self.store.session() as session:
            record = self._owned(session, job_id, owner)
            if record.job_status == JobStatus.QUEUED:
                record.cancel(utcnow())
                self._on_terminal(record)
                logger.info("job %s: canceled while queued", job_id)
            elif record.job_status == JobStatus.PROCESSING:
                record.cancel_requested = True
                logger.info("job %s: cancel requested", job_id)
            view = self._view(record)
        if view.is_terminal:
            self._after_terminal(view)
        return view

    def count_by_status(self) -> dict[str, int]:
        with self.store.session() as session:
            rows = session.execute(
                select(JobRecord.status, func.count()).group_by(JobRecord.status)
            ).all()
        return {status: count for status, count in rows}

    def queue_depth(self) -> int:
        return self.count_by_status().get(JobStatus.QUEUED.value, 0)

    def cleanup_expired(self) -> int:
        """Delete expired output files; returns how many were removed."""
        now = utcnow()
        with self.store.session() as session:
            expired = session.scalars(
                select(OutputRecord).where(
                    OutputRecord.expires_at <= now, OutputRecord.deleted.is_(False)
                )
            ).all()
            for record in expired:
                self.storage.delete(record.path)
                record.deleted = True
        if expired:
            logger.info("deleted %d expired outputs", len(expired))
        return len(expired)

    # ---------------------------------------------------------------- worker side

    def claim_next(self, timeout_s: float = 1.0) -> ClaimedJob | None:
        """Move the oldest queued job to processing and return it; None after `timeout_s`."""
        claimed = self._claim_once()
        if claimed is None:
            with self._wakeup:
                self._wakeup.wait(timeout_s)
            claimed = self._claim_once()
        return claimed

    def _claim_once(self) -> ClaimedJob | None:
        with self.store.session() as session:
            record = session.scalars(
                select(JobRecord)
                .where(JobRecord.status == JobStatus.QUEUED.value)
                .order_by(JobRecord.queued_at, JobRecord.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if record is None:
                return None
            record.start(utcnow())
            request = dataclasses.replace(request_from_json(record.request_json), seed=record.seed)
            assert record.input_path is not None
            logger.info("job %s: processing (attempt %d)", record.id, record.attempt)
            return ClaimedJob(record.id, request, Path(record.input_path), record.attempt)

    def report_progress(self, job_id: str, step: int, total_steps: int, stage: str) -> bool:
        """Record progress; True when the client asked to cancel (the worker should stop)."""
        with self.store.session() as session:
            record = session.get(JobRecord, job_id)
            if record is None:
                return True
            record.progress_step = step
            record.progress_total = total_steps
            record.progress_stage = stage[:32]
            return record.cancel_requested

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
    ) -> JobView:
        now = utcnow()
        expires_at = now + self.settings.output_ttl
        with self.store.session() as session:
            record = self._record(session, job_id)
            for index, image in enumerate(images):
                token, path = self.storage.save_output(image.data, image.format)
                record.outputs.append(
                    OutputRecord(
                        token=token,
                        index=index,
                        seed=image.seed,
                        nsfw=image.nsfw,
                        format=image.format,
                        path=str(path),
                        width=image.width,
                        height=image.height,
                        created_at=now,
                        expires_at=expires_at,
                        deleted=False,
                    )
                )
            record.prompt_used = prompt_used
            record.passes_json = json.dumps(list(passes))
            record.inference_ms = round(inference_ms, 1)
            record.timings_json = json.dumps(dict(stages_s or {}))  # seconds; views show ms
            record.reasoning_json = None if reasoning is None else json.dumps(dict(reasoning))
            record.progress_step = record.progress_total
            record.succeed(now)
            self._on_terminal(record)
            view = self._view(record)
        self.metrics.inference_seconds.observe(inference_ms / 1000)
        self._after_terminal(view)
        logger.info("job %s: succeeded in %.0f ms", job_id, inference_ms)
        return view

    def fail(self, job_id: str, code: str, message: str) -> JobView:
        with self.store.session() as session:
            record = self._record(session, job_id)
            record.fail(utcnow(), code, message)
            self._on_terminal(record)
            view = self._view(record)
        self._after_terminal(view)
        logger.warning("job %s: failed: %s: %s", job_id, code, message)
        return view

    def finish_canceled(self, job_id: str) -> JobView:
        with self.store.session() as session:
            record = self._record(session, job_id)
            record.cancel(utcnow())
            self._on_terminal(record)
            view = self._view(record)
        self._after_terminal(view)
        logger.info("job %s: canceled while processing", job_id)
        return view

    # ---------------------------------------------------------------- internals

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _on_terminal(self, record: JobRecord) -> None:
        """Inside the session that made `record` terminal: drop the uploaded input."""
        self.storage.delete(record.input_path)
        record.input_path = None

    def _after_terminal(self, view: JobView) -> None:
        """After commit: metrics and the webhook."""
        self.metrics.finished.labels(view.status.value).inc()
        if view.timings.total_ms is not None:
            self.metrics.job_latency.labels(view.status.value).observe(view.timings.total_ms / 1000)
        if view.webhook_url:
            self._webhook_pool.submit(self._deliver_webhook, view.id)

    def _deliver_webhook(self, job_id: str) -> None:
        # Claim the delivery first so a job's webhook is sent by one thread only.
        with self.store.session() as session:
            record = session.get(JobRecord, job_id)
            if record is None or record.webhook_state != "pending" or not record.webhook_url:
                return
            record.webhook_state = "sending"
            view = self._view(record)
            url = record.webhook_url
        try:
            render = self._renderers.get(view.flavour, to_native_dict)
            body = json.dumps(render(view), separators=(",", ":")).encode()
            delivered = self.webhooks.deliver(url, view.id, body)
        except Exception:
            logger.exception("job %s: webhook rendering or delivery crashed", job_id)
            delivered = False
        with self.store.session() as session:
            record = session.get(JobRecord, job_id)
            if record is not None:
                record.webhook_state = "delivered" if delivered else "failed"
        if not delivered:
            logger.warning("job %s: webhook to %s given up", job_id, url)

    def _check_quota(self, session: Session, owner: str | None, tokens: int, now: datetime) -> None:
        quota = self.settings.daily_token_quota
        if quota is None:
            return
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = session.scalar(
            select(func.coalesce(func.sum(JobRecord.tokens), 0)).where(
                _owned_by(owner),
                JobRecord.created_at >= day_start,
                JobRecord.status.in_(
                    [JobStatus.QUEUED.value, JobStatus.PROCESSING.value, JobStatus.SUCCEEDED.value]
                ),
            )
        )
        if (used or 0) + tokens > quota:
            self.metrics.rejected.labels("quota").inc()
            raise QuotaExceeded(
                f"daily quota of {quota} tokens reached ({used} used, this edit needs {tokens})"
            )

    def _record(self, session: Session, job_id: str) -> JobRecord:
        record = session.get(JobRecord, job_id)
        if record is None:
            raise NotFound(f"job {job_id} not found")
        return record

    def _owned(self, session: Session, job_id: str, owner: str | None) -> JobRecord:
        record = session.get(JobRecord, job_id) if len(job_id) <= 64 else None
        if record is None or record.owner != owner:
            raise NotFound(f"prediction {job_id} not found", param="id")
        return record

    def _view(self, record: JobRecord) -> JobView:
        base = self.settings.base_url
        outputs = tuple(
            OutputView(
                token=o.token,
                url=f"{base}/files/{Path(o.path).name}",
                seed=o.seed,
                nsfw=o.nsfw,
                format=o.format,
                width=o.width,
                height=o.height,
                expires_at=o.expires_at,
            )
            for o in record.outputs
        )
        error = (
            ErrorView(record.error_code, record.error_message or "") if record.error_code else None
        )
        stages = {
            k: round(float(v) * 1000, 1) for k, v in json.loads(record.timings_json or "{}").items()
        }
        return JobView(
            id=record.id,
            status=record.job_status,
            flavour=record.flavour,
            owner=record.owner,
            request=request_from_json(record.request_json),
            seed=record.seed,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            progress=ProgressView(
                record.progress_step, record.progress_total, record.progress_stage
            ),
            outputs=outputs,
            prompt_used=record.prompt_used,
            passes=tuple(json.loads(record.passes_json or "[]")),
            error=error,
            timings=TimingsView(
                inference_ms=record.inference_ms,
                queue_ms=_ms(record.created_at, record.started_at),
                total_ms=_ms(record.created_at, record.finished_at),
                stages_ms=stages,
            ),
            attempt=record.attempt,
            webhook_url=record.webhook_url,
            reasoning=json.loads(record.reasoning_json) if record.reasoning_json else None,
        )


def _owned_by(owner: str | None) -> Any:
    return JobRecord.owner.is_(None) if owner is None else JobRecord.owner == owner
