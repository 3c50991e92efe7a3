"""Read-only views of a job, handed to the API flavours. Frozen: the API cannot mutate a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stepedit.jobs.state import JobStatus
from stepedit.request import EditRequest


@dataclass(frozen=True)
class OutputView:
    """One output image, served at `url` (= `{base_url}/files/{token}.{ext}`) until `expires_at`."""

    token: str
    url: str
    seed: int
    nsfw: bool
    format: str  # "png" | "jpeg" | "webp"
    width: int
    height: int
    expires_at: datetime


@dataclass(frozen=True)
class ProgressView:
    step: int = 0
    total_steps: int = 0
    stage: str = "queued"


@dataclass(frozen=True)
class ErrorView:
    code: str
    message: str


@dataclass(frozen=True)
class TimingsView:
    inference_ms: float | None = None  # measured device time of the edit
    queue_ms: float | None = None  # created -> started
    total_ms: float | None = None  # created -> finished
    stages_ms: dict[str, float] = field(default_factory=dict)  # encode / denoise / decode ...


@dataclass(frozen=True)
class JobView:
    id: str
    status: JobStatus
    flavour: str
    owner: str | None
    request: EditRequest
    seed: int  # the base seed actually used (request.seed, or the one drawn at submit)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressView
    outputs: tuple[OutputView, ...]
    prompt_used: str | None
    passes: tuple[str, ...]
    error: ErrorView | None
    timings: TimingsView
    attempt: int
    webhook_url: str | None
    reasoning: dict[str, Any] | None = None  # see EditorResult.reasoning

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def has_nsfw(self) -> bool:
        return any(output.nsfw for output in self.outputs)
