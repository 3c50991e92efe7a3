"""SQLAlchemy 2 tables for jobs and their outputs. Portable SQL only (SQLite and PostgreSQL).

State changes go through the methods of `JobRecord`, which check the state machine and stamp
the times; nothing else assigns `status`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from stepedit.jobs.state import JobStatus, check_transition


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    flavour: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    request_json: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    input_path: Mapped[str | None] = mapped_column(String(512))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_state: Mapped[str | None] = mapped_column(String(16))  # pending | delivered | failed
    idempotency_key: Mapped[str | None] = mapped_column(String(255), index=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_stage: Mapped[str] = mapped_column(String(32), default="queued")

    prompt_used: Mapped[str | None] = mapped_column(Text)
    passes_json: Mapped[str] = mapped_column(Text, default="[]")
    timings_json: Mapped[str] = mapped_column(Text, default="{}")
    reasoning_json: Mapped[str | None] = mapped_column(Text)  # rounds and verdicts (v1.2)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    outputs: Mapped[list[OutputRecord]] = relationship(
        back_populates="job", order_by="OutputRecord.index", cascade="all, delete-orphan"
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def _move(self, target: JobStatus) -> None:
        check_transition(self.id, self.job_status, target)
        self.status = target.value

    def start(self, now: datetime) -> None:
        self._move(JobStatus.PROCESSING)
        self.started_at = now
        self.attempt += 1
        self.progress_step = 0
        self.progress_stage = "starting"

    def succeed(self, now: datetime) -> None:
        self._move(JobStatus.SUCCEEDED)
        self.finished_at = now
        self.progress_stage = "done"

    def fail(self, now: datetime, code: str, message: str) -> None:
        self._move(JobStatus.FAILED)
        self.finished_at = now
        self.error_code = code
        self.error_message = message
        self.progress_stage = "failed"

    def cancel(self, now: datetime) -> None:
        self._move(JobStatus.CANCELED)
        self.finished_at = now
        self.error_code = "canceled"
        self.error_message = "canceled by the client"
        self.progress_stage = "canceled"

    def requeue(self, now: datetime) -> None:
        """Back to the queue after the server died while this job ran.

        `queued_at` is kept, so the job keeps its place at the head of the queue.
        """
        self._move(JobStatus.QUEUED)
        self.started_at = None
        self.progress_step = 0
        self.progress_stage = "queued"


class OutputRecord(Base):
    __tablename__ = "job_outputs"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    format: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    job: Mapped[JobRecord] = relationship(back_populates="outputs")
