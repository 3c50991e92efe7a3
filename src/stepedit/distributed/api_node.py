"""An API node of the scale-out mode: every API flavour, no model, no torch, no worker.

The app is the single machine's (`create_app`) over the fleet's `JobService`: jobs are committed
to the shared database and dispatched to Celery, and `/health` renders the service's
`FleetHealth` (ready when the database and the broker answer, with the live workers). The
sweeper runs beside it. `stepedit serve --queue ... --db ...` starts one
(`stepedit.commands.serve`).
"""

from __future__ import annotations

from fastapi import FastAPI

from stepedit.api.app import create_app
from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import CeleryDispatcher
from stepedit.distributed.service import fleet_service
from stepedit.distributed.sweeper import BrokerDispatcher, Sweeper
from stepedit.jobs.service import JobService


def create_api_node(
    settings: DistributedSettings, dispatcher: BrokerDispatcher | None = None
) -> tuple[FastAPI, JobService, Sweeper]:
    dispatcher = dispatcher or CeleryDispatcher(settings)
    service = fleet_service(settings, role="api", dispatcher=dispatcher)
    return create_app(settings, service), service, Sweeper(service, dispatcher, settings)
