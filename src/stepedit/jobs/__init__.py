"""Jobs: the state machine, its store, dispatch, image storage, the webhook outbox, health."""

from stepedit.jobs.health import Health, HealthStatus
from stepedit.jobs.service import ClaimedJob, ClaimLost, JobService, ProducedImage, to_native_dict
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import (
    ErrorView,
    JobView,
    OutputView,
    ProgressView,
    TimingsView,
    WebhookView,
)

__all__ = [
    "ClaimLost",
    "ClaimedJob",
    "ErrorView",
    "Health",
    "HealthStatus",
    "JobService",
    "JobStatus",
    "JobView",
    "OutputView",
    "ProducedImage",
    "ProgressView",
    "TimingsView",
    "WebhookView",
    "to_native_dict",
]
