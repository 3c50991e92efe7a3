"""Jobs: the state machine, its store, dispatch, image storage, the webhook outbox, health."""

from stepedit.jobs.health import Health, HealthStatus
from stepedit.jobs.service import ClaimedJob, ClaimLost, JobService, ProducedImage, to_native_dict
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import JobView

__all__ = [
    "ClaimLost",
    "ClaimedJob",
    "Health",
    "HealthStatus",
    "JobService",
    "JobStatus",
    "JobView",
    "ProducedImage",
    "to_native_dict",
]
