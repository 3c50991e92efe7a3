"""Schema-driven fuzzing: schemathesis generates requests from /openapi.json for every operation
and sends them to the real app (in process, the fake editor behind the queue). No answer may be
a 5xx, and documented answers must match their schema.

Bounded so the whole module stays well under three minutes on two cores.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from PIL import Image
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MAX_EXAMPLES = 40
# Streaming and file routes answer with bodies the schema cannot describe (SSE, images).
IMAGE_ROUTES = frozenset(
    {
        "/api/v3/wavespeed-ai/step1x-edit",
        "/v1/images/edits",
        "/v1/images/generations",
        "/v1/image/edit/",
        "/v1/jobs",
    }
)
SCHEMA_CHECKED_EXCEPT = ("/v1/jobs/{job_id}/events", "/files/{filename}", "/metrics", "/")


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    app_settings = Settings(
        model="fake",
        data_dir=data_dir,
        safety_checker=False,
        public_base_url="http://testserver",
        image_fetch_timeout_s=1.0,
        webhook_max_attempts=1,
        webhook_timeout_s=0.5,
    )
    service = JobService(app_settings)
    service.recover()
    editor = FakeEditor(step_delay_s=0.0)
    worker = InProcessWorker(service, lambda: editor, poll_s=0.02)
    worker.start()
    deadline = time.monotonic() + 5
    while not service.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
    yield create_app(app_settings, service)
    worker.stop()
    service.close()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_PNG = png_bytes()
VALID_DATA_URI = "data:image/png;base64," + base64.b64encode(VALID_PNG).decode()


def with_valid_image(case: schemathesis.Case) -> schemathesis.Case:
    """The case with a decodable image (and no webhook to a made-up host), so generated fields
    reach the queue and the editor: a generated image is almost never an image, and stops every
    request at decoding."""
    if case.operation.path in IMAGE_ROUTES and isinstance(case.body, dict):
        is_multipart = (case.media_type or "").startswith("multipart/")
        case.body = {**case.body, "image": VALID_PNG if is_multipart else VALID_DATA_URI}
    if case.query:
        case.query = {k: v for k, v in case.query.items() if k != "webhook"}
    return case


def strategy_for(operation: APIOperation, mode: GenerationMode) -> SearchStrategy[Any]:
    generated = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE:
        return generated
    return st.one_of(generated, generated.map(with_valid_image))


def run_operation(operation: APIOperation, mode: GenerationMode) -> list[str]:
    """Fuzz one operation in one generation mode; the failures found, as text."""
    failures: list[str] = []
    checks = [not_a_server_error]
    if operation.path not in SCHEMA_CHECKED_EXCEPT and mode is GenerationMode.POSITIVE:
        checks.append(response_schema_conformance)

    @given(case=strategy_for(operation, mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def fuzz(case: schemathesis.Case) -> None:
        try:
            case.call_and_validate(checks=checks)
        except AssertionError as exc:  # schemathesis failures are AssertionErrors
            failures.append(f"{operation.label} [{mode.value}]: {exc}\n{case.as_curl_command()}")

    try:
        fuzz()
    except Unsatisfiable:
        # nothing to make invalid (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def test_no_server_errors_on_any_operation(fuzz_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += run_operation(operation, mode)
    assert not failures, "\n\n".join(failures[:10])
