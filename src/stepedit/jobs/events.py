"""Job events: synchronous waits and event streams are woken, not polled.

`JobEvents` fans "job X changed" out to the asyncio tasks waiting on X. Any thread publishes
(the worker, a route's database thread); a waiter's event is set on its own loop. What a waiter
then reads is the committed row, so an event carries no data and a missed or duplicate one
costs nothing but a read: waiters also re-read every `wait_recheck_s` as a safety net.

Where jobs change:
- single machine: every transition and progress write runs in this process (`JobService`
  publishes after each);
- fleet: workers write to PostgreSQL, whose `NOTIFY stepedit_jobs` (sent by the store at commit)
  `PostgresListener` relays into the API node's `JobEvents`; one connection per node, started
  by the first waiter.

Two kinds: "s" (the status changed: what `wait` cares about) and "p" (progress: what event
streams show). A status waiter is not woken by progress, so 200 waiters on a 28-step job cost
one read each when it ends, not one per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Literal

from sqlalchemy import Engine

logger = logging.getLogger(__name__)

EventKind = Literal["s", "p"]
STATUS: EventKind = "s"
PROGRESS: EventKind = "p"


class Subscription:
    """One waiter's wake-up for one job (or for every job, `job_id` None)."""

    def __init__(
        self, job_id: str | None, kinds: frozenset[str], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.job_id = job_id
        self.kinds = kinds
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Thread-safe: wake the waiter."""
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> bool:
        """True when woken (the event is then cleared), False after `timeout_s`."""
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        self._event.clear()
        return True


class JobEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[str, set[Subscription]] = {}
        self._on_first_subscriber: list[Any] = []

    @contextlib.contextmanager
    def subscribe(
        self, job_id: str, kinds: tuple[EventKind, ...] = (STATUS,)
    ) -> Iterator[Subscription]:
        """Subscribe before reading the job, so no change after the read is missed."""
        subscription = Subscription(job_id, frozenset(kinds), asyncio.get_running_loop())
        with self._lock:
            self._by_job.setdefault(job_id, set()).add(subscription)
            starters, self._on_first_subscriber = self._on_first_subscriber, []
        for start in starters:
            start()
        try:
            yield subscription
        finally:
            with self._lock:
                waiting = self._by_job.get(job_id)
                if waiting is not None:
                    waiting.discard(subscription)
                    if not waiting:
                        del self._by_job[job_id]

    def when_first_subscribed(self, start: Any) -> None:
        """Run `start()` once, when the first waiter subscribes (a fleet's listener: workers,
        which never wait, never open its connection)."""
        with self._lock:
            self._on_first_subscriber.append(start)

    def publish(self, job_id: str, kind: EventKind = STATUS) -> None:
        with self._lock:
            waiting = [s for s in self._by_job.get(job_id, ()) if kind in s.kinds]
        for subscription in waiting:
            subscription.notify()

    def publish_all(self) -> None:
        """Wake every waiter (the model failed, the server is shutting down, events may have
        been missed)."""
        with self._lock:
            waiting = [s for subscriptions in self._by_job.values() for s in subscriptions]
        for subscription in waiting:
            subscription.notify()

    @property
    def waiters(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._by_job.values())


class PostgresListener:
    """Relays PostgreSQL's `NOTIFY stepedit_jobs` into `events`, on a daemon thread with one
    connection of its own; reconnects after an outage (and then wakes every waiter, since
    notifications sent meanwhile are lost)."""

    def __init__(self, engine: Engine, events: JobEvents, channel: str) -> None:
        self.engine = engine
        self.events = events
        self.channel = channel
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stepedit-job-events", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception as exc:  # the database went away: listen again once it is back
                logger.warning("job events: listener lost its connection (%s)", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            self.events.publish_all()

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        connection: Any = raw.driver_connection
        raw.detach()  # a connection of its own, never returned to the pool
        try:
            connection.autocommit = True
            connection.execute(f"LISTEN {self.channel}")
            self.listening.set()
            # What changed before LISTEN took effect was not notified: waiters read again.
            self.events.publish_all()
            while not self._stop.is_set():
                for note in connection.notifies(timeout=1.0):
                    job_id, _, kind = str(note.payload).partition(":")
                    self.events.publish(job_id, "p" if kind == "p" else "s")
        finally:
            self.listening.clear()
            with contextlib.suppress(Exception):
                connection.close()
