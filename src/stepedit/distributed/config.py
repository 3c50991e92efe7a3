"""Settings of the scale-out mode: the single-machine `Settings` plus broker, timing and storage.

Every field reads `STEPEDIT_*` like the rest; `queue_url` set means "distributed".
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from stepedit.settings import Settings

ModelVersion = Literal["v1.0", "v1.1", "v1.2"]


class DistributedSettings(Settings):
    queue_url: str | None = None  # redis://host:6379/0
    default_model_version: ModelVersion = "v1.1"  # requests that name no version go here

    # Workers.
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 20.0  # a worker unseen this long is dead; its job is retried
    job_timeout_s: float = 600.0  # per attempt; the job fails with code "timeout"

    # API node sweeper.
    sweep_interval_s: float = 2.0  # also how soon a finished job's webhook is sent
    dispatch_grace_s: float = 30.0  # a queued job with no broker message this old is re-sent

    # Broker. Redis re-delivers an unacknowledged message after this long (a killed worker's
    # job); the sweeper usually gets there first, after heartbeat_timeout_s.
    visibility_timeout_s: float = 3600.0
    broker_timeout_s: float = 2.0  # connect/publish budget before the API answers 503

    # Shared output storage: None keeps files under data_dir (point it at a shared mount);
    # "s3://bucket/prefix" stores them in S3-compatible object storage.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # MinIO, Ceph, moto_server...
    s3_region: str | None = None

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None) -> str | None:
        # SQLAlchemy reads a bare postgresql:// as psycopg2; the extra installs psycopg 3.
        for prefix in ("postgresql://", "postgres://"):
            if value and value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @property
    def is_distributed(self) -> bool:
        return bool(self.queue_url)
