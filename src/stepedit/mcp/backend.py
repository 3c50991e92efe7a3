"""What the MCP tools run on: a `Backend`, in this process (`InProcessBackend`) or a running
stepedit server (`RemoteBackend`). The tools build an `EditRequest` and an `ImageArg`; a backend
returns results as plain records, and raises `stepedit.errors` types, whose message the tool
hands back as an MCP tool error."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepedit.mcp.images import ImageArg
from stepedit.request import EditRequest

# (step, total steps, stage): called as an edit advances; steps restart in a new round.
ProgressFn = Callable[[int, int, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class OutputImage:
    data: bytes  # encoded as `mime_type` says
    mime_type: str
    seed: int
    width: int
    height: int
    url: str | None = None  # where a stepedit server keeps it (remote only)


@dataclass(frozen=True)
class EditResult:
    images: list[OutputImage]
    prompt_used: str  # the instruction the model was conditioned on (after enhance/thinking)
    passes: list[str]
    model_version: str | None
    job_id: str | None = None  # remote only


@dataclass(frozen=True)
class JobResult:
    """A remote job as the native API shows it (its JobView), and its images when asked."""

    view: dict[str, Any]
    images: list[OutputImage] = field(default_factory=list)


class Backend(Protocol):
    """Entered once for the server's life (`async with`): loads the model or opens a client."""

    mode: str  # "in-process" | "remote"
    has_jobs: bool  # whether edits are jobs that can be looked up later (`job`)

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def edit(self, image: ImageArg, request: EditRequest, progress: ProgressFn) -> EditResult:
        """Run one edit to its end."""
        ...

    async def enhance(self, prompt: str, image: ImageArg | None) -> str:
        """The prompt enhancer alone: `prompt` rewritten (no edit)."""
        ...

    async def job(self, job_id: str, *, include_images: bool) -> JobResult:
        """A job by id (only where `has_jobs`)."""
        ...

    async def models(self) -> dict[str, Any]:
        """What this backend serves: status, model version, and a fleet's live workers."""
        ...
