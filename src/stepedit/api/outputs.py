"""Output images inline, for the flavours that can answer with base64 instead of URLs."""

from __future__ import annotations

import asyncio
import base64

from stepedit.jobs.service import JobService
from stepedit.jobs.views import JobView


def read_outputs_base64(jobs: JobService, view: JobView) -> list[str]:
    """The job's output files, base64-encoded, in output order (blocking file reads)."""
    return [
        base64.b64encode(jobs.output_path(output.token).read_bytes()).decode()
        for output in view.outputs
    ]


async def outputs_base64(jobs: JobService, view: JobView) -> list[str]:
    """`read_outputs_base64` off the event loop."""
    return await asyncio.to_thread(read_outputs_base64, jobs, view)
