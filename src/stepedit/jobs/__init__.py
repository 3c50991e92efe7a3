"""Jobs: the state machine, its store, the queue, image storage and webhooks."""

from stepedit.jobs.service import ClaimedJob, JobService, ProducedImage, to_native_dict
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import ErrorView, JobView, OutputView, ProgressView, TimingsView

__all__ = [
    "ClaimedJob",
    "ErrorView",
    "JobService",
    "JobStatus",
    "JobView",
    "OutputView",
    "ProducedImage",
    "ProgressView",
    "TimingsView",
    "to_native_dict",
]
