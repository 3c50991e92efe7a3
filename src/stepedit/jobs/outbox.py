"""The webhook outbox: durable, scheduled, isolated per destination.

A job submitted with a webhook is stored with `webhook_state="pending"` (the outbox entry,
written in the same transaction as the job). Its terminal transition makes the entry due
(`webhook_due_at` = now). `WebhookOutbox` delivers due entries; every node that has one (the
single machine, each fleet API node) may send any entry:

1. take: a conditional update pending -> sending whose `webhook_due_at` becomes a lease (the
   attempt's time budget plus a margin). One sender gets an entry however many try; an entry
   left "sending" by a sender that died is due again once its lease has passed (at once on a
   single machine, whose restart releases every lease).
2. send: one signed attempt in the job's flavour (`WebhookSender`, `WebhookSecrets`).
3. record: delivered; failed (given up, after `RetryPolicy.max_attempts`, or at once for a
   destination that resolves to a private address); or pending again, due after the policy's
   backoff, with the last failure (time, HTTP status or error) on the job.

Isolation: attempts run concurrently on one event loop, at most `concurrency` at once and at
most `per_destination` to one host:port. A receiver that hangs holds its own slots until each
attempt's time budget ends; entries for other hosts are taken past it.

Scheduling: the loop sleeps until the next entry is due, or until woken (a job finished here,
the fleet's sweeper), re-checking every `recheck_s`. Entries are found by their due time (an
indexed column), so an entry waiting for its next retry costs nothing until then.

`DeferredOutbox` is a fleet worker's: it sends nothing; the entries wait for the API nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from stepedit.jobs.models import utcnow
from stepedit.jobs.store import JobStore, TakenWebhook
from stepedit.jobs.views import JobView, to_native_dict
from stepedit.jobs.webhooks import (
    Attempt,
    RetryPolicy,
    WebhookSecrets,
    WebhookSender,
    destination_key,
)

logger = logging.getLogger(__name__)

WebhookRenderer = Callable[[JobView], Mapping[str, Any]]
LEASE_MARGIN_S = 60.0
_SCAN_PAGE = 200
_SCAN_MAX = 5000


class Outbox(Protocol):
    @property
    def sender(self) -> WebhookSender | None:
        """The sender of this process's webhooks; None where it sends none."""
        ...

    def register_renderer(self, flavour: str, render: WebhookRenderer) -> None:
        """`render(view)`: the JSON body POSTed for a job of `flavour` (default: native)."""
        ...

    def enqueue(self, job_id: str) -> None:
        """`job_id` just reached a terminal state (committed): its entry, if any, is due."""
        ...

    def wake(self) -> None:
        """Look for due entries now (the fleet's sweeper)."""
        ...

    def recover(self) -> None:
        """Single machine, at start: entries a dead process left "sending" are due again."""
        ...

    def close(self) -> None: ...


class WebhookOutbox:
    def __init__(
        self,
        store: JobStore,
        sender: WebhookSender,
        secrets: WebhookSecrets,
        policy: RetryPolicy,
        *,
        concurrency: int = 8,
        per_destination: int = 2,
        recheck_s: float = 30.0,
    ) -> None:
        self.store = store
        self.sender = sender
        self.secrets = secrets
        self.policy = policy
        self.concurrency = max(1, concurrency)
        self.per_destination = max(1, per_destination)
        self.recheck_s = recheck_s
        self.lease = timedelta(seconds=sender.timeout_s + LEASE_MARGIN_S)
        self._renderers: dict[str, WebhookRenderer] = {}
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None
        self._closing = False
        self._skipped = False
        # A daemon thread: a delivery in flight never holds up the process's exit (its lease
        # runs out and the entry is sent again).
        self._thread = threading.Thread(target=self._run, name="stepedit-webhooks", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def register_renderer(self, flavour: str, render: WebhookRenderer) -> None:
        self._renderers[flavour] = render

    def enqueue(self, job_id: str) -> None:
        self.wake()

    def wake(self) -> None:
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(woken.set)

    def recover(self) -> None:
        released = self.store.release_webhook_leases(utcnow())
        if released:
            logger.warning(
                "%d webhook deliveries were cut off by a restart; sending again", released
            )
        self.wake()

    def close(self) -> None:
        self._closing = True
        self.wake()
        self._thread.join(5)

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    # ---------------------------------------------------------------- the loop

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        self._ready.set()
        try:
            while not self._closing:
                self._woken.clear()
                wait_s = self.recheck_s
                try:
                    await self._start_due()
                    wait_s = await self._seconds_to_next_due()
                except Exception as exc:  # the database is down: entries wait in it
                    logger.warning("webhook outbox: %s; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), max(0.05, wait_s))
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.sender.aclose()

    async def _start_due(self) -> None:
        """Take due entries while there is room, skipping destinations at their limit."""
        self._skipped = False
        scanned = 0
        while self.in_flight < self.concurrency and scanned < _SCAN_MAX:
            now = utcnow()
            due = await asyncio.to_thread(self.store.due_webhooks, now, _SCAN_PAGE, scanned)
            scanned += len(due)
            for entry in due:
                if self.in_flight >= self.concurrency or self._closing:
                    return
                destination = destination_key(entry.url)
                if self._in_flight.get(destination, 0) >= self.per_destination:
                    self._skipped = True  # its attempts finishing wake the loop
                    continue
                taken = await asyncio.to_thread(
                    self.store.take_webhook, entry.job_id, now, now + self.lease
                )
                if taken is None:
                    continue  # another sender has it
                self._in_flight[destination] = self._in_flight.get(destination, 0) + 1
                task = asyncio.create_task(self._deliver(taken, destination))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(due) < _SCAN_PAGE:
                return

    async def _seconds_to_next_due(self) -> float:
        if self.in_flight >= self.concurrency:
            return self.recheck_s  # a finishing attempt wakes the loop
        # Entries skipped for a busy destination are due already: wait for the next one due
        # later (or for an attempt to finish), not for those.
        after = utcnow() if self._skipped else None
        due = await asyncio.to_thread(self.store.next_webhook_due, after)
        if due is None:
            return self.recheck_s
        return min(self.recheck_s, (due - utcnow()).total_seconds())

    async def _deliver(self, taken: TakenWebhook, destination: str) -> None:
        try:
            attempt = await self._attempt(taken)
            await asyncio.to_thread(self._record, taken, attempt)
        except Exception:  # e.g. the database is down: the lease runs out, it is sent again
            logger.warning("job %s: webhook outcome not recorded", taken.job_id, exc_info=True)
        finally:
            self._in_flight[destination] -= 1
            if not self._in_flight[destination]:
                del self._in_flight[destination]
            if self._woken is not None:
                self._woken.set()

    async def _attempt(self, taken: TakenWebhook) -> Attempt:
        try:
            render = self._renderers.get(taken.view.flavour, native_webhook_body)
            body = json.dumps(render(taken.view), separators=(",", ":")).encode()
            signing = await asyncio.to_thread(self.secrets.signing, taken.owner)
        except Exception as exc:
            logger.exception("job %s: webhook body or secret unavailable", taken.job_id)
            return Attempt(False, error=f"not sent: {type(exc).__name__}")
        return await self.sender.send(taken.url, taken.job_id, body, signing)

    def _record(self, taken: TakenWebhook, attempt: Attempt) -> None:
        attempts = taken.attempts + 1
        delay = None if attempt.is_permanent else self.policy.delay_after(attempts)
        if attempt.is_delivered:
            state, due_at = "delivered", None
        elif delay is None:
            state, due_at = "failed", None
        else:
            state, due_at = "pending", utcnow() + timedelta(seconds=delay)
        self.store.record_webhook_attempt(
            taken.job_id, state=state, due_at=due_at, status=attempt.status, error=attempt.error
        )
        if attempt.is_delivered:
            logger.info("job %s: webhook delivered (attempt %d)", taken.job_id, attempts)
        elif due_at is not None:
            logger.warning(
                "job %s: webhook attempt %d failed (%s); next in %.0f s",
                taken.job_id, attempts, attempt.error, delay,
            )  # fmt: skip
        else:
            logger.warning(
                "job %s: webhook given up after %d attempts (%s)",
                taken.job_id, attempts, attempt.error,
            )  # fmt: skip


def native_webhook_body(view: JobView) -> dict[str, Any]:
    """The default body: the native job view, without the delivery's own state."""
    body = to_native_dict(view)
    body.pop("webhook", None)
    return body


class DeferredOutbox:
    """A fleet worker's outbox: entries stay pending for the API nodes to deliver."""

    sender: WebhookSender | None = None

    def register_renderer(self, flavour: str, render: WebhookRenderer) -> None:
        pass

    def enqueue(self, job_id: str) -> None:
        pass

    def wake(self) -> None:
        pass

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass
