"""Settings of the scale-out mode: the single-machine `Settings` plus broker, timing and storage.

Every field reads `STEPEDIT_*` like the rest; `queue_url` set means "distributed".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stepedit.settings import Seconds, Settings

ModelVersion = Literal["v1.0", "v1.1", "v1.2"]


class DistributedSettings(Settings):
    queue_url: str | None = Field(
        default=None,
        description="Broker URL (redis://host:6379/0): set, the node is part of a fleet.",
    )
    default_model_version: ModelVersion = Field(
        default="v1.1", description="Fleet: the version that runs requests naming none."
    )

    # Workers.
    heartbeat_interval_s: Seconds = Field(
        default=5.0, description="Fleet: how often workers heartbeat."
    )
    heartbeat_timeout_s: Seconds = Field(
        default=20.0, description="Fleet: a worker unseen this long is dead; its job is run again."
    )
    job_timeout_s: Seconds = Field(
        default=600.0, description='Fleet: per run of a job; past it the job fails with "timeout".'
    )

    # API node sweeper.
    sweep_interval_s: Seconds = Field(
        default=2.0,
        description="Fleet: how often API nodes look for dead workers and lost dispatches.",
    )
    dispatch_grace_s: Seconds = Field(
        default=30.0,
        description="Fleet: a queued job with no broker message this old is sent again.",
    )

    # Broker.
    visibility_timeout_s: Seconds = Field(
        default=3600.0,
        description="Fleet: Redis re-delivers an unacknowledged task after this long (a killed "
        "worker's); the sweeper usually gets there first, after heartbeat_timeout_s.",
    )
    broker_timeout_s: Seconds = Field(
        default=2.0, description="Fleet: connect/publish budget before the API answers 503."
    )

    # Shared output storage.
    storage_url: str | None = Field(
        default=None,
        description="Fleet: s3://bucket/prefix for S3-compatible object storage; unset: files "
        "under data_dir (a mount every node shares).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Fleet: endpoint of a non-AWS S3 service (MinIO, Ceph...)."
    )
    s3_region: str | None = Field(default=None, description="Fleet: the S3 region.")

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
