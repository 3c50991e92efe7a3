"""Real infrastructure on loopback for the scale-out tests.

- `redis`: a `redis-server` without persistence on a free port; `stop()`/`start()` simulate an
  outage (like a real restart without persistence, queued messages are lost).
- `postgres`: a throwaway PostgreSQL cluster (initdb + pg_ctl, trust auth on 127.0.0.1); each
  test gets a fresh database from `database_url`.
- `cluster`: starts `stepedit serve --queue --db` API nodes and `stepedit worker` processes.
- `webhook_receiver`: an HTTP server on loopback that records every POST.

Tests skip, saying why, only when the redis-server or PostgreSQL binaries are absent.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from jobs.receivers import wavespeed_verifies

WEBHOOK_SECRET = "whsec_" + "ab" * 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 7 % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ redis


class RedisServer:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._answers, 10, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@pytest.fixture
def redis(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, tmp_path)
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------ postgres


@dataclass
class PostgresCluster:
    bindir: Path
    datadir: Path
    port: int
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off"
        self.pg_ctl("-o", options, "-l", str(self.datadir / "server.log"), "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres() -> PostgresCluster | None:
    """A throwaway cluster on a free loopback port; None when PostgreSQL is not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        return None
    bindir = Path(candidates[-1]).parent
    datadir = Path(tempfile.mkdtemp(prefix="stepedit-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        shutil.chown(datadir, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
         "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    cluster = PostgresCluster(bindir, datadir, free_port(), run_as)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = start_postgres()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    yield cluster
    cluster.destroy()


@pytest.fixture
def database_url(postgres: PostgresCluster) -> str:
    return postgres.create_database()


# ------------------------------------------------------------------------------------ webhooks


@dataclass
class WebhookReceiver:
    """Records every POST, with whether it verifies as WaveSpeedAI's docs say (with
    WEBHOOK_SECRET); answers `statuses` in turn, then 204."""

    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def by_job(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call["id"]] = counts.get(call["id"], 0) + 1
        return counts


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                receiver.calls.append(
                    {
                        "id": self.headers.get("webhook-id"),
                        "body": json.loads(body),
                        "verified": wavespeed_verifies(WEBHOOK_SECRET, headers, body),
                    }
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 204
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()


# ------------------------------------------------------------------------------------ processes


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


FAST_TIMINGS = {
    "STEPEDIT_HEARTBEAT_INTERVAL_S": "0.5",
    "STEPEDIT_HEARTBEAT_TIMEOUT_S": "3",
    "STEPEDIT_SWEEP_INTERVAL_S": "0.5",
    "STEPEDIT_DISPATCH_GRACE_S": "2",
    "STEPEDIT_WEBHOOK_BACKOFF_S": "0.1",
    "STEPEDIT_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "STEPEDIT_ALLOW_PRIVATE_URLS": "true",
    "STEPEDIT_SAFETY_CHECKER": "false",
    "STEPEDIT_MAX_QUEUE": "200",
    "STEPEDIT_BROKER_TIMEOUT_S": "1",
}


class Cluster:
    def __init__(self, tmp_path: Path, queue_url: str, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.queue_url = queue_url
        self.database_url = database_url
        self.shared_dir = tmp_path / "shared"
        self.nodes: list[Node] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None) -> Node:
        log_path = self.tmp_path / f"{name}-{len(self.nodes)}.log"
        full_env = {**os.environ, **FAST_TIMINGS, **(env or {})}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "stepedit.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        node = Node(process, log_path)
        self.nodes.append(node)
        return node

    def api(
        self, *args: str, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> Node:
        port = free_port()
        node = self._spawn(
            "api",
            ["serve", "--queue", self.queue_url, "--db", self.database_url, "--port", str(port),
             "--data-dir", str(data_dir or self.shared_dir), *args],
            env,
        )  # fmt: skip
        node.base_url = f"http://127.0.0.1:{port}"
        self.wait_ready(node)
        return node

    def worker(
        self,
        model: str = "fake:0.1",
        *args: str,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> Node:
        return self._spawn(
            "worker",
            ["worker", "--queue", self.queue_url, "--db", self.database_url, "--model", model,
             "--data-dir", str(data_dir or self.shared_dir), *args],
            env,
        )  # fmt: skip

    def wait_ready(self, node: Node, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"node exited:\n{node.log()}")
            try:
                if httpx.get(f"{node.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node not ready:\n{node.log()}")

    def wait_workers(self, api: Node, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = []

        def seen() -> bool:
            nonlocal workers
            response = httpx.get(f"{api.base_url}/health", timeout=2)
            workers = response.json().get("workers", []) if response.status_code == 200 else []
            return len(workers) >= count

        try:
            wait_until(seen, timeout_s, f"{count} workers")
        except AssertionError:
            logs = "\n".join(n.log()[-3000:] for n in self.nodes)
            raise AssertionError(f"workers did not report in:\n{logs}") from None
        return workers

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis: RedisServer, database_url: str) -> Iterator[Cluster]:
    started = Cluster(tmp_path, redis.url, database_url)
    yield started
    started.stop()


@pytest.fixture
def moto_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """`moto_server` on loopback: a real S3-compatible endpoint, with one bucket."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with (tmp_path / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(endpoint, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, 30, "moto_server")
        import boto3

        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="stepedit-test"
        )
        yield {"endpoint": endpoint, "credentials": credentials}
    finally:
        process.terminate()
        process.wait(10)
