"""`JobStore`: job records in a SQL database. SQLite by default; PostgreSQL for a fleet.

Every status write is `transition`: one conditional UPDATE guarded by the status and attempt
the caller saw, checked against the state machine (`jobs/state.py`), which also stamps what the
new state records (times, progress stage). Two writers that saw the same (status, attempt)
cannot both move a job: the second one's UPDATE matches no row. Claims, re-queues, completion,
failure and cancellation all go through it; nothing else writes `status`.

A database that does not answer surfaces as `ServiceUnavailable` (503 in every flavour's shape);
one whose disk is full as `InsufficientStorage` (a ServiceUnavailable).

On PostgreSQL every status change and progress write also sends a `NOTIFY stepedit_jobs`
(`<job id>:s` or `<job id>:p`), delivered at commit, so API nodes can wake synchronous waiters
without polling (`stepedit.jobs.events`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stepedit.errors import InsufficientStorage, NotFound, ServiceUnavailable
from stepedit.jobs.models import (
    Base,
    JobRecord,
    OutputKind,
    OutputRecord,
    WebhookSecretRecord,
    utcnow,
)
from stepedit.jobs.state import JobStatus, check_transition
from stepedit.jobs.views import (
    ErrorView,
    JobView,
    OutputView,
    ProgressView,
    TimingsView,
    WebhookView,
)
from stepedit.request import EditRequest

CANCELED_MESSAGE = "canceled by the client"
NOTIFY_CHANNEL = "stepedit_jobs"
# Columns a transition may set besides the ones it stamps itself.
_TRANSITION_FIELDS = frozenset(
    {
        "worker_id",
        "error_code",
        "error_message",
        "prompt_used",
        "passes_json",
        "timings_json",
        "reasoning_json",
        "inference_ms",
        "attempts_released",
    }
)
_UNAVAILABLE = "the job database is unavailable; retry shortly"
_DISK_FULL = "the server's disk is full; retry later"
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
WEBHOOK_OPEN = ("pending", "sending")  # outbox entries still to deliver


class DuplicateKey(Exception):
    """Another job already holds this (owner, Idempotency-Key)."""


@dataclass(frozen=True)
class Moved:
    """A job just moved by `transition`: its view, the input (image and mask) it held until
    then, and what its output names are derived from."""

    view: JobView
    input_path: str | None
    output_salt: str | None = None
    mask_path: str | None = None


@dataclass(frozen=True)
class DueWebhook:
    """An outbox entry a sender may take now."""

    job_id: str
    url: str


@dataclass(frozen=True)
class TakenWebhook:
    """An outbox entry claimed for one delivery attempt."""

    job_id: str
    url: str
    owner: str | None
    attempts: int  # attempts made before this one
    view: JobView


@dataclass(frozen=True)
class ExpiredJob:
    """A finished job past its retention, deleted from the store: its files to delete."""

    job_id: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class StoredOutput:
    """An output image already written to storage, to record with the job's success."""

    token: str
    path: str
    seed: int
    nsfw: bool
    format: str
    width: int
    height: int
    expires_at: datetime
    kind: OutputKind = OutputKind.IMAGE


class JobStore:
    def __init__(self, url: str, *, base_url: str = "") -> None:
        self.url = url
        self.base_url = base_url  # output URLs in views: {base_url}/files/{token}.{ext}
        self.engine = _create_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        try:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine, _LATER_COLUMNS, _LATER_INDEXES)
        except (OperationalError, InterfaceError) as exc:
            raise _unavailable(exc) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short unit of work: committed on success, rolled back on error."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except (OperationalError, InterfaceError) as exc:
            raise _unavailable(exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise ServiceUnavailable(_UNAVAILABLE) from exc
            raise

    def notify(self, session: Session, job_id: str, kind: str) -> None:
        """PostgreSQL: tell listening API nodes, at commit, that `job_id` changed (`kind` "s":
        its status, "p": its progress)."""
        if self.is_postgres:
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": f"{job_id}:{kind}"},
            )

    def ping(self) -> None:
        with self.session() as session:
            session.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- the one status write

    def transition(
        self,
        job_id: str,
        expected: JobStatus,
        attempt: int,
        target: JobStatus,
        *,
        outputs: Sequence[StoredOutput] = (),
        cancel_requested: bool | None = None,
        **fields: Any,
    ) -> Moved | None:
        """Move `job_id` from `expected` to `target` if it is still at (`expected`, `attempt`)
        (and, with `cancel_requested` given, its owner has or has not asked to cancel it).

        None when it is not (another writer moved it first: a claim lost, a stale attempt).
        Moving to processing starts attempt `attempt + 1`. `outputs` are recorded in the same
        transaction (a success). A terminal job lets go of its input (the caller deletes it).
        """
        check_transition(job_id, expected, target)
        unknown = set(fields) - _TRANSITION_FIELDS
        if unknown:
            raise ValueError(f"a transition cannot set {sorted(unknown)}")
        if target is JobStatus.FAILED and "error_code" not in fields:
            raise ValueError("a failure needs an error_code")
        now = utcnow()
        values = {**changes_for(target, now, attempt), **fields, "status": target.value}
        if target.is_terminal:  # the outbox entry, if any, is due now
            values["webhook_due_at"] = case(
                (JobRecord.webhook_state == "pending", now), else_=JobRecord.webhook_due_at
            )
        with self.session() as session:
            guarded = update(JobRecord).where(
                JobRecord.id == job_id,
                JobRecord.status == expected.value,
                JobRecord.attempt == attempt,
            )
            if cancel_requested is not None:
                guarded = guarded.where(JobRecord.cancel_requested.is_(cancel_requested))
            guarded = guarded.values(**values).execution_options(synchronize_session=False)
            if _rowcount(session.execute(guarded)) != 1:
                return None
            record = _get(session, job_id)  # row-locked by the UPDATE until commit
            input_path, mask_path = record.input_path, record.mask_path
            if target.is_terminal:
                record.input_path = record.mask_path = None
            for index, output in enumerate(outputs):
                record.outputs.append(_output_record(job_id, index, output))
            session.flush()
            self.notify(session, job_id, "s")
            return Moved(self._view(record), input_path, record.output_salt, mask_path)

    # ---------------------------------------------------------------- other writes

    def add(self, record: JobRecord) -> JobView:
        """Insert a new job; DuplicateKey when its (owner, Idempotency-Key) is taken."""
        try:
            with self.session() as session:
                session.add(record)
                session.flush()
                return self._view(record)
        except IntegrityError as exc:
            if record.idempotency_scope is not None and self.find_idempotent(
                record.owner, record.idempotency_key or ""
            ):
                raise DuplicateKey(record.idempotency_key) from exc
            raise

    def record_progress(
        self, job_id: str, attempt: int, step: int, total_steps: int, stage: str
    ) -> bool:
        """Record the running attempt's progress. True when it should stop: the attempt is no
        longer current (taken over, finished), or the client asked to cancel."""
        with self.session() as session:
            moved = session.execute(
                _running(job_id, attempt)
                .values(progress_step=step, progress_total=total_steps, progress_stage=stage[:32])
                .execution_options(synchronize_session=False)
            )
            if _rowcount(moved) != 1:
                return True
            self.notify(session, job_id, "p")
            return bool(
                session.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == job_id))
            )

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.session() as session:
            return bool(
                session.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == job_id))
            )

    def request_cancel(self, job_id: str, attempt: int) -> bool:
        """Ask the running attempt to stop at its next step; False when it is not running."""
        with self.session() as session:
            asked = session.execute(
                _running(job_id, attempt)
                .values(cancel_requested=True)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(asked) == 1

    def mark_outputs_deleted(self, tokens: Sequence[str]) -> None:
        if not tokens:
            return
        with self.session() as session:
            session.execute(
                update(OutputRecord)
                .where(OutputRecord.token.in_(list(tokens)))
                .values(deleted=True)
                .execution_options(synchronize_session=False)
            )

    # webhook outbox: a terminal job whose webhook_state is "pending" (or "sending" with an
    # expired lease: its sender died) and whose webhook_due_at has passed is an entry to send

    def due_webhooks(self, now: datetime, limit: int, offset: int = 0) -> list[DueWebhook]:
        """Entries due by `now`, the longest-waiting first (a page of them)."""
        with self.session() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.webhook_url)
                .where(
                    JobRecord.webhook_due_at <= now,
                    JobRecord.webhook_state.in_(WEBHOOK_OPEN),
                    JobRecord.status.in_(_TERMINAL),
                    JobRecord.webhook_url.is_not(None),
                )
                .order_by(JobRecord.webhook_due_at, JobRecord.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [DueWebhook(job_id, url) for job_id, url in rows if url is not None]

    def next_webhook_due(self, after: datetime | None = None) -> datetime | None:
        """When the next entry is due (of those due later than `after`, if given)."""
        query = select(func.min(JobRecord.webhook_due_at)).where(
            JobRecord.webhook_state.in_(WEBHOOK_OPEN), JobRecord.status.in_(_TERMINAL)
        )
        if after is not None:
            query = query.where(JobRecord.webhook_due_at > after)
        with self.session() as session:
            due: datetime | None = session.scalar(query)
        return due  # min() keeps the column's type: an aware datetime on every backend

    def take_webhook(
        self, job_id: str, now: datetime, lease_until: datetime
    ) -> TakenWebhook | None:
        """Claim a due entry for one attempt (-> sending, leased until `lease_until`); None when
        it is not due or another sender took it first."""
        with self.session() as session:
            taken = session.execute(
                update(JobRecord)
                .where(
                    JobRecord.id == job_id,
                    JobRecord.webhook_state.in_(WEBHOOK_OPEN),
                    JobRecord.webhook_due_at <= now,
                    JobRecord.webhook_url.is_not(None),
                    JobRecord.status.in_(_TERMINAL),
                )
                .values(webhook_state="sending", webhook_due_at=lease_until)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(taken) != 1:
                return None
            record = _get(session, job_id)
            assert record.webhook_url is not None
            return TakenWebhook(
                job_id, record.webhook_url, record.owner, record.webhook_attempts or 0,
                self._view(record),
            )  # fmt: skip

    def record_webhook_attempt(
        self,
        job_id: str,
        *,
        state: str,
        due_at: datetime | None,
        status: int | None,
        error: str | None,
    ) -> None:
        """The outcome of one attempt: delivered, failed (given up), or pending until `due_at`."""
        with self.session() as session:
            session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.webhook_state == "sending")
                .values(
                    webhook_state=state,
                    webhook_due_at=due_at,
                    webhook_attempts=func.coalesce(JobRecord.webhook_attempts, 0) + 1,
                    webhook_last_at=utcnow(),
                    webhook_last_status=status,
                    webhook_last_error=None if error is None else error[:500],
                )
                .execution_options(synchronize_session=False)
            )

    def release_webhook_leases(self, now: datetime) -> int:
        """Entries left "sending" by a sender that died are due again now (single machine, at
        start: no other sender exists)."""
        with self.session() as session:
            released = session.execute(
                update(JobRecord)
                .where(JobRecord.webhook_state == "sending")
                .values(webhook_state="pending", webhook_due_at=now)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(released)

    # webhook secrets

    def webhook_secret(self, owner_key: str) -> WebhookSecretRecord | None:
        with self.session() as session:
            return session.get(WebhookSecretRecord, owner_key)

    def add_webhook_secret(self, owner_key: str, secret: str) -> WebhookSecretRecord:
        """Store `owner_key`'s first secret; the one already there if another node was first."""
        try:
            with self.session() as session:
                record = WebhookSecretRecord(owner_key=owner_key, secret=secret)
                session.add(record)
                session.flush()
                return record
        except IntegrityError:
            found = self.webhook_secret(owner_key)
            assert found is not None
            return found

    def rotate_webhook_secret(self, owner_key: str, secret: str) -> WebhookSecretRecord:
        """`secret` becomes `owner_key`'s; the one it replaces is kept as the previous."""
        with self.session() as session:
            record = session.get(WebhookSecretRecord, owner_key, with_for_update=True)
            if record is None:
                record = WebhookSecretRecord(owner_key=owner_key, secret=secret)
                session.add(record)
            else:
                record.previous_secret, record.secret = record.secret, secret
            record.rotated_at = utcnow()
            session.flush()
            return record

    # retention and orphans

    def delete_finished_before(self, cutoff: datetime, limit: int) -> list[ExpiredJob]:
        """Delete up to `limit` jobs that finished before `cutoff` (and whose webhook is not
        still to be sent), with their output records; returns the files they still had."""
        with self.session() as session:
            ids = list(
                session.scalars(
                    select(JobRecord.id)
                    .where(
                        JobRecord.status.in_(_TERMINAL),
                        JobRecord.finished_at < cutoff,
                        or_(
                            JobRecord.webhook_state.is_(None),
                            JobRecord.webhook_state.not_in(WEBHOOK_OPEN),
                        ),
                    )
                    .order_by(JobRecord.finished_at)
                    .limit(limit)
                ).all()
            )
            if not ids:
                return []
            paths: dict[str, list[str]] = {job_id: [] for job_id in ids}
            for job_id, path in session.execute(
                select(OutputRecord.job_id, OutputRecord.path).where(
                    OutputRecord.job_id.in_(ids), OutputRecord.deleted.is_(False)
                )
            ).all():
                paths[job_id].append(path)
            for job_id, input_path, mask_path in session.execute(
                select(JobRecord.id, JobRecord.input_path, JobRecord.mask_path).where(
                    JobRecord.id.in_(ids), JobRecord.input_path.is_not(None)
                )
            ).all():
                paths[job_id].extend(path for path in (input_path, mask_path) if path is not None)
            session.execute(delete(OutputRecord).where(OutputRecord.job_id.in_(ids)))
            session.execute(delete(JobRecord).where(JobRecord.id.in_(ids)))
        return [ExpiredJob(job_id, tuple(found)) for job_id, found in paths.items()]

    def recorded_output_tokens(self, tokens: Sequence[str]) -> set[str]:
        """Which of `tokens` name an output some job recorded."""
        if not tokens:
            return set()
        with self.session() as session:
            return set(
                session.scalars(
                    select(OutputRecord.token).where(OutputRecord.token.in_(list(tokens)))
                ).all()
            )

    def jobs_holding_inputs(self, job_ids: Sequence[str]) -> set[str]:
        """Which of `job_ids` still hold an input (a job not yet finished)."""
        if not job_ids:
            return set()
        with self.session() as session:
            return set(
                session.scalars(
                    select(JobRecord.id).where(
                        JobRecord.id.in_(list(job_ids)), JobRecord.input_path.is_not(None)
                    )
                ).all()
            )

    # ---------------------------------------------------------------- reads

    def view(self, job_id: str) -> JobView:
        with self.session() as session:
            record = session.get(JobRecord, job_id) if len(job_id) <= 64 else None
            if record is None:
                raise NotFound(f"job {job_id} not found")
            return self._view(record)

    def owned_view(self, job_id: str, owner: str | None) -> JobView:
        """NotFound when absent or owned by someone else (the two are not told apart)."""
        with self.session() as session:
            record = session.get(JobRecord, job_id) if len(job_id) <= 64 else None
            if record is None or record.owner != owner:
                raise NotFound(f"prediction {job_id} not found", param="id")
            return self._view(record)

    def counted_attempts(self, job_id: str) -> int:
        """Runs of `job_id` that count against max_attempts (not those handed back)."""
        with self.session() as session:
            record = session.get(JobRecord, job_id)
            return 0 if record is None else record.counted_attempts

    def position(self, job_id: str) -> tuple[JobStatus, int] | None:
        """(status, attempt): what a guarded write is conditional on. None when absent."""
        with self.session() as session:
            row = session.execute(
                select(JobRecord.status, JobRecord.attempt).where(JobRecord.id == job_id)
            ).first()
        return None if row is None else (JobStatus(row[0]), int(row[1]))

    def list_views(self, owner: str | None, limit: int) -> list[JobView]:
        with self.session() as session:
            records = session.scalars(
                select(JobRecord)
                .where(_owned_by(owner))
                .order_by(JobRecord.created_at.desc())
                .limit(limit)
            ).all()
            return [self._view(r) for r in records]

    def find_idempotent(self, owner: str | None, key: str) -> JobView | None:
        with self.session() as session:
            record = session.scalars(
                select(JobRecord).where(JobRecord.idempotency_key == key, _owned_by(owner))
            ).first()
            return None if record is None else self._view(record)

    def count_by_status(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(
                select(JobRecord.status, func.count()).group_by(JobRecord.status)
            ).all()
        return {status: count for status, count in rows}

    def count_queued(self) -> int:
        with self.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(JobRecord)
                .where(JobRecord.status == JobStatus.QUEUED.value)
            )
        return int(count or 0)

    def tokens_used_since(self, owner: str | None, since: datetime) -> int:
        """Tokens of the owner's jobs created since `since` that did not fail or get canceled."""
        counted = [JobStatus.QUEUED.value, JobStatus.PROCESSING.value, JobStatus.SUCCEEDED.value]
        with self.session() as session:
            used = session.scalar(
                select(func.coalesce(func.sum(JobRecord.tokens), 0)).where(
                    _owned_by(owner), JobRecord.created_at >= since, JobRecord.status.in_(counted)
                )
            )
        return int(used or 0)

    def oldest_queued(self, limit: int) -> list[tuple[str, int]]:
        """(id, attempt) of the queued jobs next in line."""
        with self.session() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.attempt)
                .where(JobRecord.status == JobStatus.QUEUED.value)
                .order_by(JobRecord.queued_at, JobRecord.created_at)
                .limit(limit)
            ).all()
        return [(job_id, int(attempt)) for job_id, attempt in rows]

    def processing_jobs(self) -> list[tuple[str, int]]:
        with self.session() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.attempt).where(
                    JobRecord.status == JobStatus.PROCESSING.value
                )
            ).all()
        return [(job_id, int(attempt)) for job_id, attempt in rows]

    def queued_before(self, cutoff: datetime) -> list[tuple[str, EditRequest, str]]:
        """(id, request, flavour) of jobs queued since before `cutoff`."""
        with self.session() as session:
            records = session.scalars(
                select(JobRecord).where(
                    JobRecord.status == JobStatus.QUEUED.value, JobRecord.queued_at < cutoff
                )
            ).all()
            return [(r.id, stored_request(r), r.flavour) for r in records]

    def output_path(self, token: str) -> str:
        """The recorded path of a live output; NotFound when unknown, deleted or expired."""
        with self.session() as session:
            record = session.get(OutputRecord, token)
            if record is None or record.deleted or record.expires_at <= utcnow():
                raise NotFound("no such file (it may have expired)")
            return record.path

    def expired_outputs(self, now: datetime) -> list[tuple[str, str]]:
        """(token, path) of outputs past their expiry and not yet deleted."""
        with self.session() as session:
            rows = session.execute(
                select(OutputRecord.token, OutputRecord.path).where(
                    OutputRecord.expires_at <= now, OutputRecord.deleted.is_(False)
                )
            ).all()
        return [(token, path) for token, path in rows]

    # ---------------------------------------------------------------- records as views

    def _view(self, record: JobRecord) -> JobView:
        outputs: dict[OutputKind, list[OutputView]] = {kind: [] for kind in OutputKind}
        for o in record.outputs:
            outputs[OutputKind(o.kind or OutputKind.IMAGE)].append(
                OutputView(
                    token=o.token,
                    url=f"{self.base_url}/files/{Path(o.path).name}",
                    seed=o.seed,
                    nsfw=o.nsfw,
                    format=o.format,
                    width=o.width,
                    height=o.height,
                    expires_at=o.expires_at,
                )
            )
        error = (
            ErrorView(record.error_code, record.error_message or "") if record.error_code else None
        )
        webhook = None
        if record.webhook_url and record.webhook_state:
            webhook = WebhookView(
                url=record.webhook_url,
                state=record.webhook_state,
                attempts=record.webhook_attempts or 0,
                last_attempt_at=record.webhook_last_at,
                last_status=record.webhook_last_status,
                last_error=record.webhook_last_error,
                next_attempt_at=record.webhook_due_at,
            )
        stages = {
            k: round(float(v) * 1000, 1) for k, v in json.loads(record.timings_json or "{}").items()
        }
        return JobView(
            id=record.id,
            status=record.job_status,
            flavour=record.flavour,
            owner=record.owner,
            request=stored_request(record),
            seed=record.seed,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            progress=ProgressView(
                record.progress_step, record.progress_total, record.progress_stage
            ),
            outputs=tuple(outputs[OutputKind.IMAGE]),
            region_masks=tuple(outputs[OutputKind.REGION_MASK]),
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
            webhook=webhook,
            tokens=record.tokens,
            wire_input=json.loads(record.input_json) if record.input_json else None,
        )


def changes_for(target: JobStatus, now: datetime, attempt: int) -> dict[str, Any]:
    """What entering `target` records, from (status, `attempt`)."""
    if target is JobStatus.PROCESSING:
        return {
            "attempt": attempt + 1,
            "started_at": now,
            "progress_step": 0,
            "progress_stage": "starting",
        }
    if target is JobStatus.QUEUED:  # back in line after its worker died; `queued_at` kept
        return {
            "started_at": None,
            "worker_id": None,
            "progress_step": 0,
            "progress_stage": "queued",
        }
    if target is JobStatus.SUCCEEDED:
        return {
            "finished_at": now,
            "progress_step": JobRecord.progress_total,
            "progress_stage": "done",
        }
    if target is JobStatus.FAILED:
        return {"finished_at": now, "progress_stage": "failed"}
    return {
        "finished_at": now,
        "progress_stage": "canceled",
        "error_code": "canceled",
        "error_message": CANCELED_MESSAGE,
    }


def stored_request(record: JobRecord) -> EditRequest:
    """The request as accepted, seed included."""
    request = EditRequest.from_json(record.request_json)
    if request.seed is None:  # a row from before requests were stored with their seed
        request = dataclasses.replace(request, seed=record.seed)
    return request


_TERMINAL = [s.value for s in JobStatus if s.is_terminal]


def _running(job_id: str, attempt: int) -> Any:
    return update(JobRecord).where(
        JobRecord.id == job_id,
        JobRecord.status == JobStatus.PROCESSING.value,
        JobRecord.attempt == attempt,
    )


def _get(session: Session, job_id: str) -> JobRecord:
    record = session.get(JobRecord, job_id)
    assert record is not None
    return record


def _output_record(job_id: str, index: int, output: StoredOutput) -> OutputRecord:
    return OutputRecord(
        token=output.token,
        job_id=job_id,
        index=index,
        kind=output.kind.value,
        seed=output.seed,
        nsfw=output.nsfw,
        format=output.format,
        path=output.path,
        width=output.width,
        height=output.height,
        created_at=utcnow(),
        expires_at=output.expires_at,
        deleted=False,
    )


def _owned_by(owner: str | None) -> Any:
    return JobRecord.owner.is_(None) if owner is None else JobRecord.owner == owner


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _create_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the API read while the worker writes; foreign keys are off by default.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


# Nullable columns added after the first release: create_all makes new tables only, so an older
# database gets them here (a nullable column needs no backfill), with their indexes.
_LATER_COLUMNS = {
    "jobs": {
        "reasoning_json": "TEXT",
        "worker_id": "VARCHAR(96)",
        "input_json": "TEXT",
        "webhook_due_at": "TIMESTAMP WITH TIME ZONE",
        "webhook_attempts": "INTEGER",
        "webhook_last_at": "TIMESTAMP WITH TIME ZONE",
        "webhook_last_status": "INTEGER",
        "webhook_last_error": "TEXT",
        "idempotency_scope": "VARCHAR(64)",
        "attempts_released": "INTEGER",
        "output_salt": "VARCHAR(64)",
        "mask_path": "VARCHAR(512)",
    },
    "job_outputs": {"kind": "VARCHAR(16)"},
}
_LATER_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS ix_jobs_idempotency_scope ON jobs (idempotency_scope)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_webhook_due_at ON jobs (webhook_due_at)",
)


def add_missing_columns(
    engine: Engine, later: Mapping[str, Mapping[str, str]], indexes: Sequence[str] = ()
) -> None:
    """Give the existing tables of `later` ({table: {column: SQL type}}) the columns they lack,
    then create `indexes` (statements with IF NOT EXISTS)."""
    inspector = inspect(engine)
    for table, columns in later.items():
        if not inspector.has_table(table):
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        missing = {name: kind for name, kind in columns.items() if name not in present}
        if not missing:
            continue
        with engine.begin() as connection:
            for name, sql_type in missing.items():
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))
            for statement in indexes:
                connection.execute(text(statement))


def _unavailable(exc: DBAPIError) -> ServiceUnavailable:
    """The database cannot be used: down (ServiceUnavailable), or out of disk space."""
    return (
        InsufficientStorage(_DISK_FULL) if is_disk_full(exc) else ServiceUnavailable(_UNAVAILABLE)
    )


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100), or ENOSPC in the message."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
        return True
    message = str(orig).lower()
    return "disk is full" in message or "no space left on device" in message
