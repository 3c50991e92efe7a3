"""Tables of the scale-out mode, beside the job tables: worker heartbeats.

Which worker runs a job is the job's own `worker_id`, set by the claim itself (one guarded
UPDATE); databases from before that keep an unused `job_claims` table.

Kept on their own metadata so the single-machine store is unchanged; `create_tables` adds them
to the job store's database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from stepedit.jobs.models import UTCDateTime
from stepedit.jobs.store import add_missing_columns


class DistributedBase(DeclarativeBase):
    pass


class WorkerRecord(DistributedBase):
    """One row per worker process, refreshed every heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    current_job: Mapped[str | None] = mapped_column(String(32))
    busy_ratio: Mapped[float] = mapped_column(Float, default=0.0)  # moving average, 0..1
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    # The LoRA adapters its model preloaded (`LoadedLora` dicts, JSON), for the API nodes'
    # GET /v1/loras and their check of a request's `loras`.
    loras_json: Mapped[str | None] = mapped_column(Text)


# Nullable columns added after the first release (create_all makes new tables only).
_LATER_COLUMNS = {"workers": {"loras_json": "TEXT"}}


def create_tables(engine: Engine) -> None:
    DistributedBase.metadata.create_all(engine)
    add_missing_columns(engine, _LATER_COLUMNS)
