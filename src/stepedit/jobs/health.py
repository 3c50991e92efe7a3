"""Health as a state, not a bool (in the spirit of cog's `Health`).

A process that runs the model (the single machine, a fleet worker) moves through

    loading ──> ready ──> unavailable   (the worker stopped: shutting down)
       └──────> failed                  (the model could not be loaded; nothing will run)

A fleet API node has no model: it is ready while its database and broker answer, unavailable
while either is down (`stepedit.distributed.service.FleetHealth`).

`GET /health` renders any of them the same way: 200 when ready, 503 otherwise, with
`{"status", "model_version", "reason" (when there is one), ...details}`. Ready is spelled "ok" on
the wire, as it has been since the first release. A loaded model adds what it runs with
(`ModelFacts`): the speed switches in effect and the LoRA adapters it preloaded.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from stepedit.errors import ServiceUnavailable
from stepedit.settings import Settings

_VERSION = re.compile(r"v1\.[0-2]")


class HealthStatus(StrEnum):
    LOADING = "loading"
    READY = "ok"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    reason: str | None = None
    model_version: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. a fleet's live workers

    @property
    def is_ready(self) -> bool:
        return self.status is HealthStatus.READY

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status.value, "model_version": self.model_version}
        if self.reason is not None:
            body["reason"] = self.reason
        return {**body, **self.details}


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA adapter the model preloaded (`--lora`), as `GET /v1/loras` lists it: never its
    file's path (`stepedit.model.lora.LoraSet.info`)."""

    name: str
    format: str  # "official" | "diffusers"
    rank: int
    targets: int  # the Linears it changes
    default_scale: float  # applied to requests that name no adapters; 0: only on request
    merged: bool  # merged into the weights (the default set), or run as a low-rank path

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelFacts:
    """What a loaded model runs with, besides its version: the speed switches in effect
    (`PipelineEditor.optimizations`, JSON-ready) and its preloaded LoRA adapters."""

    optimizations: Mapping[str, Any] | None = None
    loras: tuple[LoadedLora, ...] = ()

    def to_details(self) -> dict[str, Any]:
        return {
            "optimizations": None if self.optimizations is None else dict(self.optimizations),
            "loras": [lora.name for lora in self.loras],
        }


class HealthCheck(Protocol):
    """What a `JobService` asks about the process's ability to run jobs."""

    @property
    def model_version(self) -> str | None:
        """The release this process runs, once known (None on a fleet API node)."""
        ...

    def health(self) -> Health:
        """The full state, for /health (a fleet API node probes its database and broker)."""
        ...

    def raise_if_failed(self) -> None:
        """Cheap: ServiceUnavailable when accepted jobs cannot run here at all."""
        ...

    def loaded_loras(self) -> tuple[LoadedLora, ...] | None:
        """The LoRA adapters requests may name; None while this process does not know them
        (the model is loading, or it runs elsewhere)."""
        ...


class ModelHealth:
    """The state of the model this process loads; the worker that loads it moves it."""

    def __init__(self, declared_version: str | None = None) -> None:
        self._lock = threading.Lock()
        self._status = HealthStatus.LOADING
        self._reason: str | None = None
        self._version = declared_version
        self._facts: ModelFacts | None = None  # once loaded
        self._listeners: list[Callable[[], None]] = []
        self._more: Callable[[], Mapping[str, Any]] | None = None

    def add_details(self, details: Callable[[], Mapping[str, Any]]) -> None:
        """`details()` joins every /health answer (`serve --gpus`: the devices and how they
        share the work)."""
        self._more = details

    def on_change(self, listener: Callable[[], None]) -> None:
        """`listener()` after every change (the service wakes synchronous waiters with it)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def model_version(self) -> str | None:
        return self._version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self._version = version

    @property
    def status(self) -> HealthStatus:
        return self._status

    def loaded(self, version: str | None = None, facts: ModelFacts | None = None) -> None:
        """Ready; `version` is what the loaded model reports (None keeps the declared one),
        `facts` what it runs with."""
        with self._lock:
            self._status, self._reason = HealthStatus.READY, None
            self._version = version or self._version
            self._facts = facts or ModelFacts()
        self._changed()

    def failed(self, reason: str) -> None:
        with self._lock:
            self._status, self._reason = HealthStatus.FAILED, reason
        self._changed()

    def stopped(self) -> None:
        """The worker stopped (shutdown). A failed load keeps its reason."""
        with self._lock:
            if self._status is not HealthStatus.FAILED:
                self._status, self._reason = HealthStatus.UNAVAILABLE, "the worker has stopped"
        self._changed()

    def health(self) -> Health:
        more = {} if self._more is None else dict(self._more())
        with self._lock:
            details = {} if self._facts is None else self._facts.to_details()
            return Health(self._status, self._reason, self._version, {**details, **more})

    def raise_if_failed(self) -> None:
        if self._status is HealthStatus.FAILED:
            raise ServiceUnavailable(f"the model could not be loaded ({self._reason})")

    def loaded_loras(self) -> tuple[LoadedLora, ...] | None:
        facts = self._facts
        return None if facts is None else facts.loras


def declared_version(settings: Settings) -> str | None:
    """The release named before loading: `--model-version`, else one in the model source's name
    (`dummy:tiny-v1.2`, `step1x-edit-v1p2`)."""
    if settings.model_version:
        return settings.model_version
    found = _VERSION.search((settings.model or "").lower().replace("v1p", "v1."))
    return found.group(0) if found else None


def describe_failure(exc: BaseException) -> str:
    """One line naming a load failure, for /health and the logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
