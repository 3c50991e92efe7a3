"""Slow and hostile clients against the real server, over raw sockets: an oversized header is
refused without the memory it would take; clients that trickle their headers or body are cut
off; half-open connections cannot starve /health, which is answered even when every
connection is busy."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import httpx
import pytest

from e2e_support import (  # isort: skip
    LiveServer,
    get_job,
    rss_bytes,
    start_server,
    submit,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    env = {
        "STEPEDIT_HTTP_MAX_HEADER_BYTES": "16384",
        "STEPEDIT_HTTP_HEADER_TIMEOUT_S": "2",
        "STEPEDIT_HTTP_BODY_TIMEOUT_S": "2",
        "STEPEDIT_HTTP_MAX_CONNECTIONS": "20",
    }
    server = start_server(tmp_path / "data", model="fake:0.5", env=env)
    yield server
    server.stop()


def connect(server: LiveServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a guard timeout of 60 s
    against a server that never does)."""
    received = b""
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_an_oversized_header_is_refused_without_taking_the_memory(server: LiveServer) -> None:
    pid = server.process.pid
    before = rss_bytes(pid)
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):  # up to 64 MB; the server stops reading long before
                sock.sendall(b"a" * (1024 * 1024))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert rss_bytes(pid) - before < 32 * 1024 * 1024
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_clients_that_trickle_their_headers_are_cut_off(server: LiveServer) -> None:
    """Fifteen clients (under the connection limit) each sending a byte of their request now
    and then: all are answered 408 and closed once the header timeout passes, however slowly
    they keep sending."""
    stop = threading.Event()
    answers: list[bytes] = []
    lock = threading.Lock()

    def trickle() -> None:
        with closing(connect(server)) as sock:
            with suppress(OSError):
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
                    if stop.wait(0.5):
                        break
                    sock.sendall(bytes([byte]))
            answer = read_until_closed(sock)
            with lock:
                answers.append(answer)

    clients = [threading.Thread(target=trickle) for _ in range(15)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(90)
    stop.set()
    assert len(answers) == 15
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_a_client_that_stalls_in_its_body_is_cut_off(server: LiveServer) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"prompt": '
        )
        answer = read_until_closed(sock)  # nothing more is sent
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_half_open_connections_cannot_starve_health(server: LiveServer) -> None:
    """Sixty connections that never send a byte (the limit is 20): the oldest are evicted, so
    /health and the API still answer."""
    idle = [connect(server) for _ in range(60)]
    try:
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.base_url}/v1/jobs", timeout=10).status_code == 200
        evicted = 0
        for sock in idle[:30]:
            sock.settimeout(10)
            with suppress(OSError):
                evicted += sock.recv(1) == b""
        assert evicted >= 30 - 20
    finally:
        for sock in idle:
            sock.close()


def test_health_is_answered_when_every_connection_is_busy(server: LiveServer) -> None:
    """Twenty event streams hold every connection with a request in progress: other requests
    are answered 503 with Retry-After, /health and /metrics 200."""
    job_id = submit(server.base_url, steps=100)  # 50 s: the streams stay open
    streams = []
    try:
        for _ in range(20):
            sock = connect(server)
            sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
            streams.append(sock)
        busy = httpx.get(f"{server.base_url}/v1/jobs/{job_id}", timeout=10)
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) > 0
        assert busy.json()["error"]["code"] == "overloaded"
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 200
    finally:
        for sock in streams:
            sock.close()
    wait_until(lambda: _answers(server, job_id), 30, "room again")
    httpx.post(f"{server.base_url}/v1/jobs/{job_id}/cancel", timeout=10)  # no 50 s job at stop


def _answers(server: LiveServer, job_id: str) -> bool:
    with suppress(httpx.HTTPError, ValueError, KeyError):
        return bool(get_job(server.base_url, job_id)["id"])
    return False
