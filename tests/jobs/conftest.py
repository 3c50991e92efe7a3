"""Database backends for the job tests: SQLite always, PostgreSQL when the server binaries,
a `postgres` system user and psycopg are present (a throw-away cluster on loopback)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_counter = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:  # initdb refuses to run as root
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A server URL without a database name, or None when PostgreSQL cannot be started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        yield None
        return
    # not under pytest's tmp dir: that one is private to the current user, and the server runs
    # as `postgres`
    root = Path(tempfile.mkdtemp(prefix="stepedit-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = _free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        subprocess.run(
            _as_postgres("initdb", "-D", str(data), "-A", "trust", "-U", "postgres"),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres(
                "pg_ctl", "-D", str(data), "-o", options, "-l", f"{root}/log", "-w", "start"
            ),
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError, LookupError):
        shutil.rmtree(root, ignore_errors=True)
        yield None
        return
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    subprocess.run(
        _as_postgres("pg_ctl", "-D", str(data), "-m", "immediate", "stop"), capture_output=True
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    server: str | None = request.getfixturevalue("postgres_url")
    if server is None:
        pytest.skip("PostgreSQL is not available here")
    import psycopg

    name = f"stepedit_test_{os.getpid()}_{next(_counter)}"
    plain = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
