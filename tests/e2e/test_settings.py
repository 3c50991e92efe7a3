"""Settings: every duration takes a plain number of seconds (STEPEDIT_OUTPUT_TTL=3600 used to
stop the server at start with a pydantic traceback), and docs/settings.md is the generated
table of every setting."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from stepedit.commands.settings import rows, settings_markdown
from stepedit.distributed.config import DistributedSettings
from stepedit.settings import Settings

from e2e_support import get_job, start_server, submit, wait_until  # isort: skip

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def duration_fields() -> list[str]:
    """Fields in seconds (`*_s`) and timedeltas (`output_ttl`, `job_retention`...)."""
    return [
        name
        for name, info in DistributedSettings.model_fields.items()
        if name.endswith("_s") or "timedelta" in str(info.annotation)
    ]


def test_every_duration_setting_takes_plain_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    names = duration_fields()
    assert {"output_ttl", "job_retention", "webhook_timeout_s", "heartbeat_timeout_s"} <= set(names)
    for name in names:
        monkeypatch.setenv(f"STEPEDIT_{name.upper()}", "3600")
    settings = DistributedSettings()
    for name in names:
        value = getattr(settings, name)
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        assert seconds == 3600, name


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800),
                          ("PT1H", 3600), ("1.5", 1.5)],
)  # fmt: skip
def test_durations_take_units_and_iso_8601(text: str, seconds: float) -> None:
    assert Settings(output_ttl=text).output_ttl == timedelta(seconds=seconds)  # type: ignore[arg-type]
    assert Settings(webhook_timeout_s=text).webhook_timeout_s == seconds  # type: ignore[arg-type]


def test_a_retention_of_never_keeps_jobs() -> None:
    assert Settings(job_retention="never").job_retention is None  # type: ignore[arg-type]


def test_the_settings_reference_is_generated_and_current() -> None:
    """Regenerate with `stepedit settings --markdown > docs/settings.md`."""
    assert DOC.read_text() == settings_markdown()
    documented = {variable for _name, variable, _default, _description in rows()}
    assert len(documented) == len(DistributedSettings.model_fields)
    for name in DistributedSettings.model_fields:
        assert f"`STEPEDIT_{name.upper()}`" in DOC.read_text()


def test_the_command_prints_the_table() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "stepedit.cli", "settings", "--markdown"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert printed.stdout == settings_markdown()


@pytest.mark.slow
def test_the_server_starts_with_an_output_ttl_in_plain_seconds(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env={"STEPEDIT_OUTPUT_TTL": "3600"})
    try:
        job_id = submit(server.base_url, steps=2)
        wait_until(lambda: get_job(server.base_url, job_id)["status"] == "succeeded")
        service_view = httpx.get(f"{server.base_url}/v1/jobs/{job_id}", timeout=10).json()
        assert service_view["outputs"], service_view
    finally:
        server.stop()
    from stepedit.jobs.service import JobService

    service = JobService(Settings(data_dir=tmp_path / "data"))
    try:
        view = service.get_sync(job_id, None)
        (output,) = view.outputs
        assert view.finished_at is not None
        lifetime = output.expires_at - view.finished_at
        assert timedelta(minutes=59) < lifetime < timedelta(minutes=61)
        assert isinstance(output.expires_at, datetime)
    finally:
        service.close()
