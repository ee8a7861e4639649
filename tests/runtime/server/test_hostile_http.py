"""Hostile and careless clients against a real `dx serve`: every one gets a clear 4xx/503, and the
server keeps serving. These need no engine: no request here gets as far as loading a model."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, dx_env, start_dx

REQUEST_TIMEOUT = 1.5
MAX_CONNECTIONS = 32

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = start_dx(
        tmp_path_factory.mktemp("hostile"),
        "--max-body", "1", "--request-timeout", str(REQUEST_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS),
    )
    yield server
    server.stop()


def _raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def _alive(dx: DXServer) -> None:
    resp = httpx.get(f"{dx.url}/api/tags", headers=dx.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"models": []}


def test_health_is_public_and_api_needs_the_key(dx: DXServer) -> None:
    assert httpx.get(f"{dx.url}/health").json() == {"status": "ok"}
    no_key = httpx.get(f"{dx.url}/api/tags")
    assert no_key.status_code == 401
    assert "API key" in no_key.json()["error"]
    wrong = httpx.get(f"{dx.url}/v1/models", headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"  # OpenAI's error shape on /v1
    chat = httpx.post(f"{dx.url}/api/chat", json={"model": "m", "messages": []})
    assert chat.status_code == 401
    _alive(dx)


def test_key_file_is_private(dx: DXServer) -> None:
    key_file = dx.home / "api_key"
    assert key_file.read_text().strip() == dx.api_key
    assert key_file.stat().st_mode & 0o077 == 0


def test_no_auth_on_a_public_address_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dx", "serve", "--no-auth", "--host", "0.0.0.0", "--port", "0"],
        env=dx_env(tmp_path, None), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dx: error: refusing to serve 0.0.0.0 without an API key")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "api_key").exists()


def test_oversized_body_is_refused_without_reading_it(dx: DXServer) -> None:
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {5 << 20}\r\n\r\n"
    ).encode()
    status, body = _raw(dx.port, head)  # the body is never sent: the answer must not wait for it
    assert status == 413
    assert "over the limit" in json.loads(body)["error"]
    _alive(dx)


def test_chunked_bodies_are_refused(dx: DXServer) -> None:
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ).encode()
    status, body = _raw(dx.port, req)
    assert status == 411
    assert "Content-Length" in json.loads(body)["error"]["message"]


def test_oversized_headers_are_refused(dx: DXServer) -> None:
    big = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _raw(dx.port, big)[0] == 431
    many = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(90)
    ) + b"\r\n"
    assert _raw(dx.port, many)[0] == 431
    _alive(dx)


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/api/chat", b"{not json", "invalid JSON"),
        ("/api/chat", b"[1, 2]", "JSON object"),
        ("/api/chat", b'{"model": 5, "messages": []}', "model must be a string"),
        ("/api/chat", b'{"model": "m", "messages": "hello"}', "messages must be a list"),
        ("/api/generate", b'{"model": "m", "prompt": ["a"]}', "prompt must be a string"),
        ("/api/generate", b'{"model": "m", "prompt": "a", "options": {"temperature": "hot"}}', "temperature"),
        ("/api/generate", b'{"model": "m", "prompt": "a", "stream": "no"}', "stream"),
        ("/api/embed", b'{"model": "m", "input": 42}', "input must be"),
        ("/api/chat", b"", "JSON body"),
    ],
)
def test_malformed_ollama_requests_get_400_in_ollama_shape(dx: DXServer, path: str, body: bytes, fragment: str) -> None:
    resp = httpx.post(f"{dx.url}{path}", content=body, headers=dx.headers, timeout=10)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{nope", "invalid JSON"), (b'"text"', "JSON object"), (b'{"model": ["a"]}', "model must be a string")],
)
def test_malformed_openai_requests_get_400_in_openai_shape(dx: DXServer, body: bytes, fragment: str) -> None:
    resp = httpx.post(f"{dx.url}/v1/chat/completions", content=body, headers=dx.headers, timeout=10)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert fragment in err["message"] and err["code"] == 400 and err["type"] == "invalid_request_error"


def test_unknown_models_and_routes_are_404(dx: DXServer) -> None:
    chat = httpx.post(f"{dx.url}/api/chat", headers=dx.headers,
                      json={"model": "nosuch:latest", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404 and "not found" in chat.json()["error"]
    oai = httpx.post(f"{dx.url}/v1/completions", headers=dx.headers, json={"model": "nosuch", "prompt": "x"})
    assert oai.status_code == 404 and oai.json()["error"]["type"] == "not_found_error"
    path_model = httpx.post(f"{dx.url}/api/generate", headers=dx.headers, json={"model": "/etc/passwd", "prompt": "x"})
    assert path_model.status_code == 404  # a file path is not a model name on the network API
    assert httpx.get(f"{dx.url}/api/nothing", headers=dx.headers).status_code == 404


def test_slow_loris_is_cut_off_and_others_are_served(dx: DXServer) -> None:
    sock = socket.create_connection(("127.0.0.1", dx.port), timeout=30)
    sock.sendall(b"GET /api/tags HTTP/1.1\r\n")
    closed = threading.Event()

    def dribble() -> None:
        try:
            for _ in range(60):
                sock.sendall(b"X")  # one byte every 0.2 s for 12 s, never finishing a header line
                time.sleep(0.2)
        except OSError:
            closed.set()

    t0 = time.monotonic()
    writer = threading.Thread(target=dribble)
    writer.start()
    _alive(dx)  # served while the slow client hangs on
    try:
        data = sock.recv(1024)  # EOF (or reset) when the server gives up on it
    except OSError:
        data = b""
    elapsed = time.monotonic() - t0
    sock.close()
    writer.join()
    assert data == b"" or data.startswith(b"HTTP/1.1 4")
    # cut off at its 1.5 s header deadline: before the 10 s default or the 12 s of dribbling, generous for a busy machine
    assert elapsed < 8, f"slow client held a connection for {elapsed:.1f}s"
    _alive(dx)


def _socket_fds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_open_connections_stay_under_the_cap_and_the_newest_are_served(dx: DXServer) -> None:
    base = _socket_fds(dx.proc.pid)
    socks = [socket.create_connection(("127.0.0.1", dx.port), timeout=20) for _ in range(200)]
    try:
        # at the cap each new connection closes the one that has waited longest without a request
        old, new = socks[: 200 - MAX_CONNECTIONS], socks[200 - MAX_CONNECTIONS :]
        deadline = time.monotonic() + 20
        pending = list(old)
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(pending, [], [], 1.0)
            for s in readable:
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1024) == b""  # closed quietly: it had sent nothing
                pending.remove(s)
        assert not pending, f"{len(pending)} of the oldest connections were not closed"
        assert _socket_fds(dx.proc.pid) <= base + MAX_CONNECTIONS
        request = f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n\r\n".encode()
        for s in new:
            s.sendall(request)
        assert [_read_answer(s)[0] for s in new] == [200] * MAX_CONNECTIONS
    finally:
        for s in socks:
            s.close()
    _alive(dx)
