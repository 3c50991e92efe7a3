"""/metrics shows HTTP metrics (per route template: requests by status, latency) next to the
job metrics, from the app's own registry."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from stepedit.api.limits import body_limit_for
from stepedit.settings import Settings


def test_http_and_job_metrics_side_by_side(
    client: TestClient, settings: Settings, make_image: Callable[..., bytes]
) -> None:
    image = {"image": ("a.png", make_image(64, 64), "image/png")}
    assert client.post("/v1/jobs", data={"prompt": "p"}, files=image).status_code == 202
    for job_id in ("one", "two"):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    too_large = "A" * (body_limit_for(settings.max_upload_bytes) + 1)
    assert client.post("/v1/images/generations", content=too_large).status_code == 413
    metrics = client.get("/metrics").text
    # route templates, not raw paths: the two ids make one series
    assert (
        'stepedit_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 2.0'
        in (metrics)
    )
    assert 'route="/v1/jobs",status="202"' in metrics
    assert "/v1/jobs/one" not in metrics
    assert 'status="413"' in metrics
    assert (
        'stepedit_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"}'
        in (metrics)
    )
    assert 'stepedit_jobs_submitted_total{flavour="native"} 1.0' in metrics
