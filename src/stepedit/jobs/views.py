"""Read-only views of a job, handed to the API flavours. Frozen: the API cannot mutate a job."""

from __future__ import annotations

import dataclasses
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
class WebhookView:
    """Where a job's webhook delivery stands (the outbox entry)."""

    url: str
    state: str  # pending | sending | delivered | failed
    attempts: int = 0
    last_attempt_at: datetime | None = None
    last_status: int | None = None  # the receiver's HTTP status, when it answered
    last_error: str | None = None  # why the last attempt failed
    next_attempt_at: datetime | None = None  # while pending: when it is tried (again)


@dataclass(frozen=True)
class JobView:
    id: str
    status: JobStatus
    flavour: str
    owner: str | None
    request: EditRequest
    seed: int  # the base seed (= request.seed: drawn at submit when the client sent none)
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
    webhook: WebhookView | None = None
    tokens: int = 0  # what the job is charged (seed 004's tokens)
    # The wire request as the client sent it (large inline images elided), for flavours that
    # echo it (wavespeed's `input`); None when the API layer did not pass it.
    wire_input: dict[str, Any] | None = None
    # Where each output may have changed ("L" PNGs, the i-th for the i-th output), when the
    # edit had a region: a mask, an outpaint or preserve_unedited's estimate (docs/regions.md).
    region_masks: tuple[OutputView, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def has_nsfw(self) -> bool:
        return any(output.nsfw for output in self.outputs)


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
        "outputs": [
            {"url": o.url, "seed": o.seed, "nsfw": o.nsfw, "region_mask_url": region_mask_url}
            for o, region_mask_url in zip(view.outputs, region_mask_urls(view), strict=True)
        ],
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
        "webhook": to_webhook_dict(view.webhook),
    }


def region_mask_urls(view: JobView) -> list[str | None]:
    """Per output, the URL of its region mask (None where the edit had no region)."""
    urls = [mask.url for mask in view.region_masks]
    return [urls[i] if i < len(urls) else None for i in range(len(view.outputs))]


def to_webhook_dict(webhook: WebhookView | None) -> dict[str, Any] | None:
    """The delivery state shown in the native job view (None without a webhook)."""
    if webhook is None:
        return None
    return {
        "state": webhook.state,
        "attempts": webhook.attempts,
        "last_attempt_at": _iso(webhook.last_attempt_at),
        "last_status": webhook.last_status,
        "last_error": webhook.last_error,
        "next_attempt_at": _iso(webhook.next_attempt_at) if webhook.state == "pending" else None,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
