"""X-Request-Id: the caller's when it is short and plain, otherwise one made here; echoed on
every response and logged with the request, one access-log line each, which holds no query
string and no key."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from stepedit.api.access import sanitised_request_id
from stepedit.api.limits import body_limit_for
from stepedit.settings import Settings

ACCESS_LOGGER = "stepedit.api.access"
GENERATED = re.compile(r"req_[0-9a-f]{32}")
ACCESS_LINE = re.compile(
    r"method=(?P<method>\S+) path=(?P<path>\S+) status=(?P<status>\d{3}) "
    r"duration_ms=(?P<duration>[0-9.]+) request_id=(?P<request_id>\S+) flavour=(?P<flavour>\S+)"
)


def png(make_image: Callable[..., bytes]) -> dict[str, Any]:
    return {"image": ("a.png", make_image(64, 64), "image/png")}


@pytest.mark.parametrize(
    "given",
    ["abc", "trace-1_2.3:4", "x" * 128, "0123456789abcdef0123456789abcdef"],
)
def test_a_safe_request_id_is_kept(given: str) -> None:
    assert sanitised_request_id(given) == given


@pytest.mark.parametrize(
    "given",
    [None, "", "x" * 129, "has space", "slash/es", "semi;colon", 'quo"te', "new\nline", "é"],
)
def test_an_unsafe_request_id_is_replaced(given: str | None) -> None:
    assert GENERATED.fullmatch(sanitised_request_id(given))


def test_every_response_carries_the_request_id(
    client: TestClient, settings: Settings, make_image: Callable[..., bytes]
) -> None:
    mine = {"X-Request-Id": "trace-42"}
    created = client.post("/v1/jobs", data={"prompt": "p"}, files=png(make_image), headers=mine)
    assert created.status_code == 202
    job_id = created.json()["id"]
    for _ in range(200):
        job = client.get(f"/v1/jobs/{job_id}", headers=mine).json()
        if job["status"] == "succeeded":
            break
        time.sleep(0.02)
    file_path = httpx.URL(job["outputs"][0]["url"]).path
    too_large = "A" * (body_limit_for(settings.max_upload_bytes) + 1)
    answers = {
        "created": created,
        "job": client.get(f"/v1/jobs/{job_id}", headers=mine),
        "file": client.get(file_path, headers=mine),
        "health": client.get("/health", headers=mine),
        "metrics": client.get("/metrics", headers=mine),
        "openapi": client.get("/openapi.json", headers=mine),
        "playground": client.get("/", headers=mine),
        "validation": client.post("/v1/jobs", json={}, headers=mine),
        "not found": client.get("/v1/jobs/nope", headers=mine),
        "wrong method": client.delete("/v1/jobs", headers=mine),
        "unknown path": client.get("/v1/nothing", headers=mine),
        "too large": client.post(
            "/v1/images/generations", content=too_large, headers={**mine, "content-type": "x"}
        ),
        "sync edit": client.post(
            "/v1/images/edits",
            data={"model": "step-1x-edit", "prompt": "p"},
            files=png(make_image),
            headers=mine,
        ),
    }
    for name, response in answers.items():
        assert response.headers.get_list("x-request-id") == ["trace-42"], name


def test_an_unsafe_id_is_replaced_everywhere_it_is_shown(client: TestClient) -> None:
    response = client.post("/v1/images/generations", json={}, headers={"X-Request-Id": "x" * 500})
    request_id = response.headers["x-request-id"]
    assert GENERATED.fullmatch(request_id)
    assert response.json()["error"]["param"] == request_id  # seed 003 names it in errors


def test_requests_without_an_id_get_distinct_ones(client: TestClient) -> None:
    ids = {client.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(GENERATED.fullmatch(i) for i in ids)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    lines = []
    for record in caplog.records:
        if record.name == ACCESS_LOGGER:
            match = ACCESS_LINE.fullmatch(record.getMessage())
            assert match, record.getMessage()
            lines.append(match.groupdict())
    return lines


def test_one_access_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture, make_image: Callable[..., bytes]
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    client.get("/health", headers={"X-Request-Id": "one"})
    client.post(
        "/api/v3/wavespeed-ai/step1x-edit?webhook=https://example.com/hook?token=s3cret",
        json={"prompt": "p"},
        headers={"X-Request-Id": "two", "Authorization": "Bearer sk-very-secret"},
    )
    client.get("/v1/images/edits", headers={"X-Request-Id": "three"})
    lines = access_lines(caplog)
    assert [line["request_id"] for line in lines] == ["one", "two", "three"]
    health, edit, wrong = lines
    assert (health["method"], health["path"], health["status"]) == ("GET", "/health", "200")
    assert health["flavour"] == "native"
    assert (edit["method"], edit["path"], edit["status"]) == (
        "POST",
        "/api/v3/wavespeed-ai/step1x-edit",
        "400",
    )
    assert edit["flavour"] == "wavespeed"
    assert (wrong["status"], wrong["flavour"]) == ("405", "openai_edits")
    logged = caplog.text
    assert "s3cret" not in logged and "example.com" not in logged and "sk-very-secret" not in logged


def test_an_output_files_secret_name_is_not_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    client.get("/files/SECRETTOKEN123.png")
    (line,) = access_lines(caplog)
    assert line["path"] == "/files/{filename}" and line["status"] == "404"
    assert "SECRETTOKEN123" not in caplog.text


def test_a_path_cannot_forge_a_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    client.get("/v1/jobs/x%0Amethod=GET path=/admin status=200")
    (line,) = access_lines(caplog)
    assert line["path"] == "/v1/jobs/x\\nmethod=GET%20path=/admin%20status=200"
    assert line["status"] == "404"


@pytest.mark.slow
def test_a_real_server_logs_each_request_once_without_query_or_key(
    live_server: Callable[..., Any],
) -> None:
    server = live_server("--api-key", "sk-live-secret")
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        answer = http.get(
            "/v1/jobs?limit=5&token=q-secret",
            headers={"Authorization": "Bearer sk-live-secret", "X-Request-Id": "live-1"},
        )
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "live-1"
        refused = http.get("/v1/jobs", headers={"X-Request-Id": "live-2"})
        assert refused.status_code == 401
    deadline = time.monotonic() + 30
    while "request_id=live-2" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    lines = [line for line in log.splitlines() if "request_id=live-" in line]
    assert len(lines) == 2, log
    assert "method=GET path=/v1/jobs status=200" in lines[0] and "flavour=native" in lines[0]
    assert "status=401" in lines[1]
    assert "q-secret" not in log and "sk-live-secret" not in log and "limit=5" not in log
    assert "HTTP/1.1" not in log  # uvicorn's own access log (with the query string) is off
