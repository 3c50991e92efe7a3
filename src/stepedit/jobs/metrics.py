"""Prometheus metrics of the job system, on a registry of their own (one per service)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stepedit.jobs.state import JobStatus

_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


class _QueueCollector(Collector):
    def __init__(self, count_by_status: Callable[[], Mapping[str, int]]) -> None:
        self._count_by_status = count_by_status

    def collect(self) -> Iterator[Metric]:
        counts = self._count_by_status()
        depth = GaugeMetricFamily("stepedit_queue_depth", "Jobs waiting in the queue")
        depth.add_metric([], counts.get(JobStatus.QUEUED.value, 0))
        yield depth
        jobs = GaugeMetricFamily("stepedit_jobs", "Jobs in the store by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs


class JobMetrics:
    def __init__(self, count_by_status: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(count_by_status))
        self.job_latency = Histogram(
            "stepedit_job_latency_seconds",
            "Time from submission to a terminal state",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "stepedit_job_gpu_seconds",
            "Measured device time per job",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "stepedit_jobs_finished",
            "Jobs that reached a terminal state",
            ["status"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "stepedit_jobs_submitted", "Jobs accepted", ["flavour"], registry=self.registry
        )
        self.rejected = Counter(
            "stepedit_jobs_rejected", "Submissions refused", ["reason"], registry=self.registry
        )
