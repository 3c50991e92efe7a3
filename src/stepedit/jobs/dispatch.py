"""Dispatchers: how an accepted (or re-queued) job reaches a worker.

The job is committed to the store first, so a dispatch that fails or is lost loses nothing.
- `LocalDispatcher` (single machine): wakes the in-process worker, which claims from the store.
- `stepedit.distributed.dispatch.CeleryDispatcher` (fleet API node): one Celery task per job on
  its model version's queue.
- `stepedit.distributed.dispatch.NoDispatcher` (fleet worker): sends nothing.
"""

from __future__ import annotations

import threading
from typing import Protocol

from stepedit.request import EditRequest


class Dispatcher(Protocol):
    def check_available(self) -> None:
        """Raise ServiceUnavailable when jobs cannot be dispatched right now."""
        ...

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        """Hand a queued job to the workers (ServiceUnavailable when that failed)."""
        ...

    def wait_for_work(self, timeout_s: float) -> None:
        """For an in-process worker: return once a job may be waiting, or after `timeout_s`."""
        ...

    def version_for(self, request: EditRequest) -> str | None:
        """The model version `request` will run on; None: whichever model this process runs."""
        ...


class LocalDispatcher:
    """The single machine's: a wake-up for the one in-process worker."""

    def __init__(self) -> None:
        self._pending = threading.Event()

    def check_available(self) -> None:
        pass

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        self._pending.set()

    def wait_for_work(self, timeout_s: float) -> None:
        self._pending.wait(timeout_s)
        self._pending.clear()

    def version_for(self, request: EditRequest) -> str | None:
        return None
