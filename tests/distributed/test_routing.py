"""Routing and delivery settings, without a broker."""

from __future__ import annotations

from stepedit.distributed.celery_app import make_celery, queue_for, version_of
from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import priority_for, version_for
from stepedit.request import EditRequest


def test_requests_route_to_their_model_versions_queue() -> None:
    assert queue_for(version_of("v1.2", "v1.1")) == "stepedit.v1.2"
    assert queue_for(version_of("step1x-edit-v1.2", "v1.1")) == "stepedit.v1.2"
    assert queue_for(version_of(None, "v1.1")) == "stepedit.v1.1"
    assert queue_for(version_of("step1x-edit", "v1.1")) == "stepedit.v1.1"
    assert version_of("dummy:tiny-v1.0", "v1.1") == "v1.0"


def test_reasoning_requests_go_to_v12_unless_they_name_a_version() -> None:
    assert version_for(EditRequest(prompt="p", enable_thinking=True), "v1.1") == "v1.2"
    assert (
        version_for(EditRequest(prompt="p", model="v1.1", enable_reflection=True), "v1.1") == "v1.1"
    )
    assert version_for(EditRequest(prompt="p"), "v1.1") == "v1.1"


def test_waiting_clients_go_before_asynchronous_jobs() -> None:
    assert priority_for("openai_edits") < priority_for("native")
    assert priority_for("generations") < priority_for("wavespeed")


def test_a_dead_workers_task_is_redelivered_and_workers_take_one_at_a_time() -> None:
    conf = make_celery(DistributedSettings(queue_url="redis://127.0.0.1:1/0")).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
