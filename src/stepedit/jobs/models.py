"""SQLAlchemy 2 tables for jobs and their outputs. Portable SQL only (SQLite and PostgreSQL).

`status` is written in one place only: `JobStore.transition`, a conditional UPDATE guarded by
(status, attempt) and checked against the state machine (`jobs/state.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
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

from stepedit.jobs.state import JobStatus


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
    # The edit's mask ("L" PNG, white = may change) beside the image, if it came with one; both
    # are let go of together when the job ends.
    mask_path: Mapped[str | None] = mapped_column(String(512))
    input_json: Mapped[str | None] = mapped_column(Text)  # the wire request as sent (echoed)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # The webhook outbox entry: pending | sending | delivered | failed. `webhook_due_at` is when
    # a sender may take it next (a retry's time, or a claim's lease while sending).
    webhook_state: Mapped[str | None] = mapped_column(String(16))
    webhook_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    webhook_attempts: Mapped[int | None] = mapped_column(Integer)
    webhook_last_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_last_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status, if answered
    webhook_last_error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), index=True)
    # sha256 of (owner, key): unique, so two API nodes cannot both accept one key.
    idempotency_scope: Mapped[str | None] = mapped_column(String(64), unique=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # the fencing token of each run
    # Runs handed back by a graceful shutdown: they do not count against max_attempts.
    attempts_released: Mapped[int | None] = mapped_column(Integer)
    # Output tokens are derived from it (per attempt and index): names are known before writing.
    output_salt: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(96))  # who runs it (fleet workers)
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

    @property
    def counted_attempts(self) -> int:
        return self.attempt - (self.attempts_released or 0)


class OutputKind(StrEnum):
    IMAGE = "image"
    REGION_MASK = "region_mask"


class OutputRecord(Base):
    __tablename__ = "job_outputs"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    # "image" (None in rows from before kinds), or "region_mask": where an image may have
    # changed (an "L" PNG; the i-th region mask belongs to the i-th image)
    kind: Mapped[str | None] = mapped_column(String(16))
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


class WebhookSecretRecord(Base):
    """The webhook signing secret of one owner (an API key's hash; "" for anonymous callers).
    After a rotation the previous secret still signs deliveries for a while."""

    __tablename__ = "webhook_secrets"

    owner_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
