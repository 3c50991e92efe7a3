"""Server settings: one pydantic-settings class, read from `STEPEDIT_*` environment variables.

Built once by the CLI (or a test) and passed explicitly to whatever needs it; nothing here runs
at import time.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WEBHOOK_SECRET_PREFIX = "whsec_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEPEDIT_", extra="ignore")

    # Model and device. `model` is a checkpoint directory or "dummy:<preset>"; "fake[:seconds]"
    # selects the test-only fake editor (no torch), sleeping `seconds` per step.
    model: str | None = None
    model_version: Literal["v1.0", "v1.1", "v1.2"] | None = None  # None: detected
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str | None = None  # None: the pipeline's default for the device
    offload: bool = False
    # Speed switches (stepedit.acceleration): a preset name with optional +/- switches, e.g.
    # "exact", "fast", "24gb", "plain", "exact-compile"; "auto": exact on CUDA, and on the CPU
    # the pipeline as loaded.
    optimize: str = "auto"

    # Storage.
    data_dir: Path = Path("data")
    database_url: str | None = None  # None: SQLite file under data_dir
    public_base_url: str | None = None  # None: http://{host}:{port}
    output_ttl: timedelta = timedelta(days=7)  # the seeds promise 7 days
    cleanup_interval_s: float = 600.0

    # Access.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: anonymous
    daily_token_quota: int | None = None  # per key (or per anonymous caller); None: unlimited
    tokens_per_edit: int = 1000  # seed 004: ~1000 tokens per edit,
    tokens_per_reasoning_edit: int = 2000  # double when thinking/reflection passes run

    # Queue.
    max_queue: int = 32
    max_attempts: int = 2  # a job interrupted by a restart is retried once, then failed

    # Inputs (names shared with stepedit.inputs.rules_from_settings / fetch_policy_from_settings).
    max_upload_bytes: int = 10 * 1024 * 1024
    allow_private_urls: bool = False  # image URLs (and webhooks) to loopback/private ranges
    image_fetch_timeout_s: float = 10.0

    # Webhooks.
    webhook_secret: str | None = None  # None: generated once and kept in data_dir
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 1.0  # doubled after each failed attempt
    webhook_timeout_s: float = 10.0

    # Safety checker (NudeNet, used when installed).
    safety_checker: bool = True
    nsfw_filter: bool = True  # replace flagged outputs with a black image

    # HTTP.
    host: str = "127.0.0.1"
    port: int = 8000

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'stepedit.db').resolve()}"

    @property
    def base_url(self) -> str:
        """The public origin used to build output URLs."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def resolved_webhook_secret(self) -> str:
        """The signing secret; generated on first use and persisted under data_dir."""
        if self.webhook_secret:
            return self.webhook_secret
        path = self.data_dir / "webhook_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = WEBHOOK_SECRET_PREFIX + secrets.token_hex(24)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secret)
        tmp.chmod(0o600)
        tmp.replace(path)
        return secret
