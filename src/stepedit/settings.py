"""Server settings: one pydantic-settings class, read from `STEPEDIT_*` environment variables.

Built once by the CLI (or a test) and passed explicitly to whatever needs it; nothing here runs
at import time.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WEBHOOK_SECRET_PREFIX = "whsec_"

_UNITS_S = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TIMEDELTA = TypeAdapter(timedelta)
_AMOUNT = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*(s|m|min|h|d)?\s*$", re.IGNORECASE)


def to_seconds(value: Any) -> Any:
    """A duration as seconds: a number, text such as "3600", "90s", "15m", "1h", "7d", or an
    ISO 8601 duration ("PT1H"). Anything else is left for pydantic to refuse."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str) and (found := _AMOUNT.match(value)):
        return float(found.group(1)) * _UNITS_S[(found.group(2) or "").lower()]
    if isinstance(value, str) and value.strip().upper().startswith("P"):
        try:
            return _TIMEDELTA.validate_python(value.strip()).total_seconds()
        except ValidationError:
            return value
    return value


def to_timedelta(value: Any) -> Any:
    """A duration as a timedelta: plain numbers are seconds (STEPEDIT_OUTPUT_TTL=3600)."""
    seconds = to_seconds(value)
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return timedelta(seconds=seconds)
    return value


# Every duration setting takes a number of seconds, a number with a unit (s, m, h, d) or an ISO
# 8601 duration (PT1H).
Seconds = Annotated[float, BeforeValidator(to_seconds)]
Duration = Annotated[timedelta, BeforeValidator(to_timedelta)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEPEDIT_", extra="ignore")

    # Model and device. Every field has a description: docs/settings.md is generated from them
    # (`stepedit settings --markdown`), and a test fails when it is stale.
    model: str | None = Field(
        default=None,
        description="The model: a checkpoint directory, a Hugging Face repo id in the local cache "
        '(org/name[@revision]) or "dummy:<preset>"; "fake[:seconds per step]" is the test-only '
        "fake editor.",
    )
    model_version: Literal["v1.0", "v1.1", "v1.2"] | None = Field(
        default=None, description="The release the model is; unset: detected from the checkpoint."
    )
    text_encoder: str | None = Field(
        default=None,
        description="The Qwen2.5-VL text encoder (folder or repo id) for checkpoints without one; "
        "unset: the checkpoint's own, else Qwen/Qwen2.5-VL-7B-Instruct from the cache.",
    )
    download: bool = Field(
        default=False,
        description="Download what the Hugging Face cache lacks of the model when loading.",
    )
    device: str | None = Field(
        default=None, description="cuda, cuda:1, cpu...; unset: cuda when present, else cpu."
    )
    dtype: str | None = Field(
        default=None,
        description="bf16, fp16 or fp32; unset: the pipeline's default for the device.",
    )
    offload: bool = Field(
        default=False, description="Keep idle model parts on the CPU (less VRAM)."
    )
    loras: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="LoRA adapters to preload, comma-separated [NAME=]PATH[:SCALE]; SCALE (default "
        "1) is applied to requests that name none, 0 preloads for requests only (docs/lora.md).",
    )
    optimize: str = Field(
        default="auto",
        description='Speed switches: a preset ("exact", "fast", "24gb", "plain"...) with +/- '
        'switches; "auto": exact on CUDA, as loaded on the CPU (docs/performance.md).',
    )

    # Storage.
    data_dir: Path = Field(
        default=Path("data"),
        description="Jobs database (SQLite), uploaded inputs and outputs. Created when missing; "
        "the server refuses to start when it cannot write there.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the job store; unset: SQLite under data_dir."
    )
    public_base_url: str | None = Field(
        default=None, description="Origin used in output URLs; unset: http://HOST:PORT."
    )
    output_ttl: Duration = Field(
        default=timedelta(days=7),
        description="How long outputs are served (the seeds promise 7 days).",
    )
    job_retention: Duration | None = Field(
        default=timedelta(days=30),
        description="Finished jobs are deleted this long after they ended (their outputs too); "
        '"never" keeps them.',
    )
    cleanup_interval_s: Seconds = Field(
        default=600.0,
        description="How often expired outputs, old jobs and orphaned files are deleted.",
    )
    orphan_grace_s: Seconds = Field(
        default=3600.0,
        description="Stored files no job refers to (a crash between writing a file and "
        "recording it) are deleted once this old; at a single machine's start, at once.",
    )
    min_free_disk_mb: int = Field(
        default=100,
        description="Submissions are refused (insufficient storage, Retry-After) while data_dir "
        "has less free space than this, so running jobs can still store their outputs.",
    )

    # Access.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted Bearer keys, comma-separated; empty: anonymous use.",
    )
    daily_token_quota: int | None = Field(
        default=None,
        description="Tokens per key (or anonymous caller) per UTC day; unset: unlimited.",
    )
    tokens_per_edit: int = Field(
        default=1000, description="Charge per output image (seed 004: ~1000)."
    )
    tokens_per_reasoning_edit: int = Field(
        default=2000,
        description="Charge per output image when thinking or reflection runs (seed 004: "
        "~2000), the release's defaults included.",
    )

    # Queue.
    max_queue: int = Field(
        default=32, description="Queued jobs before submissions answer busy (429)."
    )
    max_attempts: int = Field(
        default=2,
        description="Runs of a job whose server or worker died mid-run, before it fails; a run "
        "handed back by a graceful shutdown does not count.",
    )
    shutdown_grace_s: Seconds = Field(
        default=30.0,
        description="On SIGTERM, how long the running edit may take to finish before it is "
        "handed back to the queue (without counting an attempt).",
    )
    wait_recheck_s: Seconds = Field(
        default=10.0,
        description="Synchronous waits are woken by job events; they re-read the job this often "
        "as well, in case an event was missed.",
    )

    # Inputs (read by stepedit.inputs.rules_from_settings / fetch_policy_from_settings).
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, description="Largest accepted image.")
    max_input_pixels: int = Field(
        default=4096 * 4096, description="Largest accepted image area, checked before decoding."
    )
    allow_private_urls: bool = Field(
        default=False, description="Allow image URLs and webhooks on loopback or private addresses."
    )
    image_fetch_timeout_s: Seconds = Field(
        default=10.0, description="Budget for fetching an image URL."
    )

    # Webhooks.
    webhook_secret: str | None = Field(
        default=None,
        description="Signing secret (whsec_...) of anonymous callers' webhooks; unset: generated "
        "once and kept in data_dir. Each API key has its own, generated (docs/deployment.md).",
    )
    webhook_secret_overlap: Duration = Field(
        default=timedelta(hours=24),
        description="After a secret is rotated, deliveries carry signatures with the new and "
        "the old secret for this long.",
    )
    webhook_max_attempts: int = Field(default=12, description="Delivery attempts before giving up.")
    webhook_backoff_s: Seconds = Field(
        default=30.0, description="Wait before the first retry; doubled after each failed attempt."
    )
    webhook_max_backoff_s: Seconds = Field(
        default=7200.0, description="Longest wait between two attempts (12 attempts span ~8 hours)."
    )
    webhook_timeout_s: Seconds = Field(
        default=10.0, description="Budget of one delivery attempt, connection to answer."
    )
    webhook_concurrency: int = Field(
        default=8, description="Deliveries in flight at once per node."
    )
    webhook_per_destination: int = Field(
        default=2,
        description="Deliveries in flight at once to one host, so a slow one delays no other.",
    )

    # Safety checker (NudeNet, used when installed).
    safety_checker: bool = Field(
        default=True, description="Check outputs with NudeNet when installed."
    )
    nsfw_filter: bool = Field(
        default=True, description="Replace flagged outputs with a black image."
    )

    # HTTP.
    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8000, description="Port.")
    http_max_header_bytes: int = Field(
        default=64 * 1024, description="Largest request line and headers (431 beyond)."
    )
    http_header_timeout_s: Seconds = Field(
        default=10.0,
        description="A request's line and headers must arrive within this (408 beyond).",
    )
    http_body_timeout_s: Seconds = Field(
        default=120.0,
        description="A request's body must arrive within this after its headers (408).",
    )
    http_keep_alive_s: Seconds = Field(
        default=5.0, description="Idle keep-alive connections close after."
    )
    http_max_connections: int = Field(
        default=512,
        description="Open connections. Past it, a new connection first evicts the oldest one "
        "still sending its headers; with none to evict, requests other than /health and "
        "/metrics are answered 503.",
    )
    http_drain_s: Seconds = Field(
        default=30.0, description="On SIGTERM, how long in-flight requests may take to finish."
    )

    @field_validator("api_keys", "loras", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("job_retention", mode="before")
    @classmethod
    def _never(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "never", "none", "forever"):
            return None
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
