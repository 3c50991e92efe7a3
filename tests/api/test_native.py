"""The native job API through the app: submit, follow, files, cancel, auth, health, metrics."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor
from stepedit.jobs.service import JobService
from stepedit.settings import Settings


def make_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_terminal(client: TestClient, job_id: str, **kwargs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", **kwargs).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def submit(client: TestClient, **fields: Any) -> dict[str, Any]:
    data = {"prompt": "make it blue", "num_inference_steps": "3", **fields}
    response = client.post(
        "/v1/jobs", files={"image": ("a.png", make_png(), "image/png")}, data=data
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_multipart_job_runs_and_serves_its_output(client: TestClient) -> None:
    created = submit(client, seed="1234", guidance_scale="4.5")
    assert created["status"] in ("queued", "processing")
    job = wait_terminal(client, created["id"])
    assert job["status"] == "succeeded"
    assert job["request"]["guidance_scale"] == 4.5
    assert job["outputs"][0]["seed"] == 1234
    assert job["progress"] == {"step": 3, "total_steps": 3, "stage": "done"}
    assert job["timings"]["inference_ms"] >= 0
    url = job["outputs"][0]["url"]
    assert url.startswith("http://testserver/files/")
    image = client.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.get(url.replace(".png", ".jpg")).status_code == 404


def test_json_job_with_data_uri(client: TestClient) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    response = client.post("/v1/jobs", json={"prompt": "x", "image": data_uri, "seed": -1})
    assert response.status_code == 202, response.text
    job = wait_terminal(client, response.json()["id"])
    # -1 asks for a random seed: drawn at submit and stored with the request
    assert job["status"] == "succeeded" and job["request"]["seed"] == job["seed"] >= 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "image": "not base64 !!"}, "image"),
        ({"prompt": "x", "image": "http://127.0.0.1:1/a.png"}, "image"),
        ({"prompt": "", "image": "aGk="}, "prompt"),
        ({"prompt": "x", "image": "aGk=", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "image": "aGk=", "guidance_scale": "big"}, "guidance_scale"),
        ({"prompt": "x" * 5000, "image": "aGk="}, "prompt"),
    ],
)
def test_bad_json_input_gets_a_native_error(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "param"} and error["param"] == param


def test_not_an_image_and_not_json(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", files={"image": ("a.png", b"hello", "image/png")}, data={"prompt": "x"}
    )
    assert 400 <= response.status_code < 500 and "error" in response.json()
    response = client.post(
        "/v1/jobs", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    response = client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/" + "a" * 300):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.post("/v1/jobs/nope/cancel").status_code == 404
    assert client.get("/v1/jobs/nope/events").status_code == 404


def test_list_newest_first(client: TestClient) -> None:
    ids = [submit(client)["id"] for _ in range(3)]
    listed = client.get("/v1/jobs", params={"limit": 2}).json()
    assert listed["object"] == "list"
    assert [job["id"] for job in listed["data"]] == ids[::-1][:2]


def test_events_stream_ends_with_the_terminal_job(client: TestClient) -> None:
    job_id = submit(client)["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line.startswith("data:")]
    last = json.loads(events[-1].removeprefix("data:"))
    assert last["id"] == job_id and last["status"] == "succeeded"


def test_cancel_a_queued_job(settings: Settings, job_service: JobService) -> None:
    # no worker: the job stays queued
    with TestClient(create_app(settings, job_service)) as client:
        job_id = submit(client)["id"]
        canceled = client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert canceled["status"] == "canceled"
    assert not list((settings.data_dir / "inputs").iterdir())  # upload deleted


def test_queue_full_is_a_clean_busy_answer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_queue=1)
    service = JobService(settings)
    with TestClient(create_app(settings, service)) as client:
        submit(client)
        response = client.post(
            "/v1/jobs", files={"image": ("a.png", make_png(), "image/png")}, data={"prompt": "x"}
        )
    service.close()
    assert response.status_code in (429, 503)
    assert response.json()["error"]["code"] == "queue_full"
    assert "retry-after" in response.headers


def test_api_keys_isolate_owners(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_keys=["key-a", "key-b"])
    service = JobService(settings)
    alice = {"Authorization": "Bearer key-a"}
    bob = {"Authorization": "Bearer key-b"}
    with TestClient(create_app(settings, service)) as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = client.post(
            "/v1/jobs",
            files={"image": ("a.png", make_png(), "image/png")},
            data={"prompt": "x"},
            headers=alice,
        )
        job_id = response.json()["id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
        assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bob).status_code == 404
        assert client.get("/v1/jobs", headers=bob).json()["data"] == []
    service.close()


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPEDIT_API_KEYS", "one, two")
    assert Settings().api_keys == ["one", "two"]


def test_health_follows_the_model(settings: Settings, job_service: JobService) -> None:
    with TestClient(create_app(settings, job_service)) as client:
        assert client.get("/health").status_code == 503
        job_service.set_ready(True)
        response = client.get("/health")
    assert response.status_code == 200
    # (the body also carries the model's facts for the playground: is_dummy_model, defaults)
    assert response.json() | {"status": "ok", "model_version": None} == response.json()


def test_health_names_the_model_version(tmp_path: Path) -> None:
    settings = Settings(model="dummy:tiny-v1.2", data_dir=tmp_path / "data")
    service = JobService(settings)
    try:
        with TestClient(create_app(settings, service)) as client:
            assert client.get("/health").json()["model_version"] == "v1.2"
            service.model_version = "v1.1"  # what a loaded in-process worker reports
            assert client.get("/health").json()["model_version"] == "v1.1"
    finally:
        service.close()


def test_multipart_numeric_fields_are_coerced(client: TestClient) -> None:
    job = submit(
        client,
        size_level="1024",
        num_images="2",
        guidance_scale="4.5",
        seed="",  # an empty form input means "random"
        enable_thinking="false",
    )
    request = job["request"]
    assert (request["size_level"], request["num_images"], request["guidance_scale"]) == (
        1024,
        2,
        4.5,
    )
    assert request["seed"] == job["seed"] and request["enable_thinking"] is False  # drawn
    response = client.post(
        "/v1/jobs", files={"image": ("a.png", make_png(), "image/png")}, data={"prompt": "x",
        "size_level": "1000"},
    )  # fmt: skip
    # a field that fails validation: FastAPI's 422, in the native shape
    assert response.status_code == 422 and response.json()["error"]["param"] == "size_level"


def test_prompt_enhance_runs_through_the_queue(client: TestClient) -> None:
    response = client.post("/v1/prompt/enhance", json={"prompt": "make it nicer"})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["prompt"] == "make it nicer" and isinstance(payload["enhanced_prompt"], str)
    (job,) = [j for j in client.get("/v1/jobs").json()["data"] if j["request"]["enhance_only"]]
    assert job["request"]["enhance_image"] is False
    image = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    response = client.post("/v1/prompt/enhance", json={"prompt": "hat", "image": image})
    assert response.status_code == 200, response.text
    bad = client.post("/v1/prompt/enhance", json={"prompt": ""})
    assert bad.status_code == 400 or bad.status_code == 422


def test_metrics(client: TestClient) -> None:
    wait_terminal(client, submit(client)["id"])
    text = client.get("/metrics").text
    assert "stepedit_queue_depth 0.0" in text
    assert 'stepedit_jobs{status="succeeded"} 1.0' in text
    assert "stepedit_job_latency_seconds_count" in text
    assert "stepedit_job_gpu_seconds_count 1.0" in text


def test_openapi_documents_the_native_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/jobs"]["post"]["requestBody"]["content"]


def test_cfg_rescale_reaches_the_editor(client: TestClient, fake_editor: FakeEditor) -> None:
    job = wait_terminal(client, submit(client, cfg_rescale="never")["id"])
    assert job["status"] == "succeeded" and job["request"]["cfg_rescale"] == "never"
    assert fake_editor.calls[-1].cfg_rescale == "never"
    default = wait_terminal(client, submit(client)["id"])
    assert default["request"]["cfg_rescale"] is None  # the release's own rule
    response = client.post(
        "/v1/jobs",
        files={"image": ("a.png", make_png(), "image/png")},
        data={"prompt": "x", "cfg_rescale": "sometimes"},
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "cfg_rescale"


def test_openapi_documents_cfg_rescale(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    for media_type in ("multipart/form-data", "application/json"):
        schema = body["content"][media_type]["schema"]["properties"]["cfg_rescale"]
        assert {"official", "every_step", "never"} <= set(json.dumps(schema).split('"'))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "ftp://example.com/hook"])
def test_webhook_to_a_private_address_is_refused_at_submit(client: TestClient, url: str) -> None:
    response = client.post(
        "/v1/jobs",
        files={"image": ("a.png", make_png(), "image/png")},
        data={"prompt": "x", "webhook_url": url},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "webhook_url"
    assert client.get("/v1/jobs").json()["data"] == []
