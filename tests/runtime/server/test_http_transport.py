"""The transport against a real `dx serve`, over raw sockets: idle and slow connections, framing,
keep-alive, Host (DNS rebinding) and Origin (cross-site) checks, CORS. No engine is needed: no
request here gets as far as loading a model (the relay's CORS headers are checked with the real
engine at the end)."""

from __future__ import annotations

import json
import socket
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, start_dx
from support.waits import wait_until

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT = 1.5
ALLOWED_ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DXServer]:
    server = start_dx(
        tmp_path_factory.mktemp("transport"), "--request-timeout", str(REQUEST_TIMEOUT),
        "--allowed-hosts", "dx.example,*.lan.example", "--allow-origins", ALLOWED_ORIGIN,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DXServer]:
    """--no-auth: the case where a browser page could otherwise use the server freely."""
    server = start_dx(tmp_path_factory.mktemp("transport-noauth"), "--no-auth",
                      env={"DX_ALLOWED_HOSTS": "dx.example", "DX_ALLOW_ORIGINS": ALLOWED_ORIGIN})
    yield server
    server.stop()


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, lower-cased headers, body); status 0 when the server closed first.

    Bytes past its end (the next pipelined answer) are kept for the next call on the same socket.
    """
    buf = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    body, _unread[sock] = body[:length], body[length:]
    return int(lines[0].split(" ", 2)[1]), headers, body


def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(port) as sock:
        sock.sendall(data)
        return _read_answer(sock)


def _get(path: str, host: str = "127.0.0.1", key: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}\r\n".encode()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _server_sockets(port: int) -> list[int]:
    """Bytes not yet read by the server, per established connection it holds on ``port`` (from /proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [int(r[4].split(":")[1], 16) for r in rows if int(r[1].split(":")[1], 16) == port and r[3] == "01"]


def _server_has_read(port: int, connections: int) -> bool:
    """The server holds exactly ``connections`` connections and has read every byte sent on them."""
    unread = _server_sockets(port)
    return len(unread) == connections and not any(unread)


def _waiting(sock: socket.socket) -> bool:
    """Open, and nothing answered on it yet."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


# ---------------------------------------------------------------- idle and slow connections
def test_idle_and_half_sent_connections_hold_no_thread_and_do_not_lock_out_a_client(tmp_path: Path) -> None:
    # The others are given 60 s: a client served only once they time out would not be answered within 30 s.
    server = start_dx(tmp_path, "--request-timeout", "60")
    threads_before = _threads(server.proc.pid)
    idle = [_connect(server.port) for _ in range(150)]
    slow = [_connect(server.port) for _ in range(150)]
    try:
        for s in slow:
            s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        wait_until(lambda: _server_has_read(server.port, 300), "the server to accept and read all 300 connections")
        for _ in range(5):
            resp = httpx.get(f"{server.url}/api/tags", headers=server.headers, timeout=30)
            assert resp.status_code == 200, resp.text
        assert all(_waiting(s) for s in idle + slow)  # served while they still wait, not after they were let go
        assert _threads(server.proc.pid) <= threads_before + 2  # 300 open connections, no thread each
    finally:
        for s in idle + slow:
            s.close()
        server.stop()


def test_at_the_connection_cap_the_longest_waiting_make_room(tmp_path: Path) -> None:
    server = start_dx(tmp_path, "--max-connections", "64", "--request-timeout", "30")
    slow: list[socket.socket] = []
    try:
        for batch in (64, 86):  # the cap's worth, read by the server, then more that push the first ones out
            for _ in range(batch):
                slow.append(_connect(server.port))
                slow[-1].sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            wait_until(lambda: _server_has_read(server.port, 64), "the server to hold 64 connections, all read")
        resp = httpx.get(f"{server.url}/v1/models", headers=server.headers, timeout=10)
        assert resp.status_code == 200, resp.text
        status, headers, body = _read_answer(slow[0])  # it had sent part of a request: it is told why
        assert status == 503 and headers["retry-after"] == "1"
        assert "too many open connections" in json.loads(body)["error"]["message"]
    finally:
        for s in slow:
            s.close()
        server.stop()


def test_past_max_requests_a_complete_request_gets_503_at_once(tmp_path: Path) -> None:
    # The worker waits up to 60 s for the body: a request queued behind it would not be answered within 30 s.
    server = start_dx(tmp_path, "--max-requests", "1", "--request-timeout", "60")
    try:
        with _connect(server.port) as busy, _connect(server.port) as second:
            busy.sendall(  # takes the one worker: it waits for a body that does not come
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.api_key}\r\n"
                "Content-Length: 100\r\n\r\n{".encode()
            )
            wait_until(lambda: _raw(server.port, _get("/v1/models", key=server.api_key))[0] == 503,
                       "the one worker to be taken by the request that waits for its body")
            second.settimeout(30)
            second.sendall(_get("/v1/models", key=server.api_key))
            status, headers, body = _read_answer(second)
            assert status == 503 and headers["retry-after"] == "1"
            assert "too many requests in progress" in json.loads(body)["error"]["message"]
        resp = httpx.get(f"{server.url}/api/version", headers=server.headers, timeout=10)  # the worker is free again
        assert resp.status_code == 200
    finally:
        server.stop()


def test_a_half_sent_request_gets_408_and_an_idle_kept_alive_connection_just_closes(dx: DXServer) -> None:
    with _connect(dx.port) as half, _connect(dx.port) as kept:
        half.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        kept.sendall(_get("/health"))
        assert _read_answer(kept)[0] == 200
        t0 = time.monotonic()
        status, _, body = _read_answer(half)
        assert status == 408 and "not received within" in json.loads(body)["error"]
        assert time.monotonic() - t0 < 8  # at its 1.5 s deadline, not the 10 s default (generous for a busy machine)
        kept.settimeout(REQUEST_TIMEOUT + 5)
        assert kept.recv(1024) == b""  # no request, no answer: the idle connection is closed quietly


def test_keep_alive_and_pipelined_requests_are_answered_in_order(dx: DXServer) -> None:
    with _connect(dx.port) as sock:
        for _ in range(3):
            sock.sendall(_get("/api/version", key=dx.api_key))
            status, headers, body = _read_answer(sock)
            assert status == 200 and "connection" not in headers and "version" in json.loads(body)
        sock.sendall(_get("/api/version", key=dx.api_key) + _get("/health") + _get("/api/nothing", key=dx.api_key))
        assert [_read_answer(sock)[0] for _ in range(3)] == [200, 200, 404]
        sock.sendall(_get("/health", extra="Connection: close\r\n"))
        status, headers, _ = _read_answer(sock)
        assert status == 200 and headers["connection"] == "close"
        assert _closed(sock)


def test_a_request_body_that_arrives_in_pieces_is_read_whole(dx: DXServer) -> None:
    body = json.dumps({"model": "nosuch", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    with _connect(dx.port) as sock:
        sock.sendall(
            f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100]
        )
        time.sleep(0.2)
        sock.sendall(body[100:])
        status, _, answer = _read_answer(sock)
        assert status == 404 and "not found" in json.loads(answer)["error"]  # parsed: the model is unknown
        sock.sendall(_get("/health"))  # and the connection is still in step
        assert _read_answer(sock)[0] == 200


# ---------------------------------------------------------------- framing
BAD_FRAMING = [
    ("Content-Length: -1\r\n", "not a non-negative number"),
    ("Content-Length: abc\r\n", "not a non-negative number"),
    ("Content-Length: +5\r\n", "not a non-negative number"),
    ("Content-Length: 1e3\r\n", "not a non-negative number"),
    ("Content-Length: 2\r\nContent-Length: 2\r\n", "more than one Content-Length"),
    ("Content-Length: 2, 2\r\n", "not a non-negative number"),
    ("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "together with Transfer-Encoding"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", "together with Transfer-Encoding"),
    ("Transfer-Encoding: gzip\r\n", "not supported"),
]


@pytest.mark.parametrize(("framing", "fragment"), BAD_FRAMING)
@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_ambiguous_or_bad_framing_is_400_in_the_apis_shape_and_closes(
    dx: DXServer, open_dx: DXServer, framing: str, fragment: str, api: str,
) -> None:
    path = "/api/chat" if api == "ollama" else "/v1/chat/completions"
    for server in (dx, open_dx):
        with _connect(server.port) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n{{}}".encode())
            status, headers, body = _read_answer(sock)
            assert status == 400, body
            err = json.loads(body)["error"]
            assert fragment in (err if api == "ollama" else err["message"])
            if api == "openai":
                assert err["code"] == 400 and err["type"] == "invalid_request_error"
            assert headers["connection"] == "close" and _closed(sock)


def test_a_bad_content_length_is_refused_on_a_route_without_a_body_too(dx: DXServer) -> None:
    status, _, body = _raw(dx.port, _get("/api/tags", key=dx.api_key, extra="Content-Length: -5\r\n"))
    assert status == 400 and "Content-Length" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("request_bytes", "fragment"),
    [
        (b"GET /api/tags\r\nHost: 127.0.0.1\r\n\r\n", "malformed request line"),
        (b"GET /api/tags HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", "HTTP/2.0 is not supported"),
        (b"GET /api/tags HTTP/1.1\r\n\r\n", "exactly one Host"),
        (b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", "exactly one Host"),
        (b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Name: x\r\n\r\n", "malformed header line"),
        (b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n folded\r\n\r\n", "malformed header line"),
        (b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A : 1\r\n\r\n", "malformed header line"),
    ],
)
def test_malformed_requests_are_400(open_dx: DXServer, request_bytes: bytes, fragment: str) -> None:
    status, _, body = _raw(open_dx.port, request_bytes)
    assert status == 400, body
    assert fragment in json.loads(body)["error"]


def test_expect_100_continue_is_honoured(dx: DXServer) -> None:
    body = b'{"model": "nosuch", "prompt": "x"}'
    with _connect(dx.port) as sock:
        sock.sendall(
            f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n"
            f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert _read_answer(sock)[0] == 404


# ---------------------------------------------------------------- Host: DNS rebinding
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:11434", "localhost.attacker.example",
                                  "lan.example", "10.1.2.3", "[2001:db8::1]:80"])
def test_a_foreign_host_is_403_before_auth(dx: DXServer, open_dx: DXServer, host: str) -> None:
    for server in (open_dx, dx):
        status, _, body = _raw(server.port, _get("/api/tags", host=host, key=server.api_key))
        assert status == 403, body
        assert "is not allowed" in json.loads(body)["error"] and "--allowed-hosts" in json.loads(body)["error"]
    status, _, body = _raw(dx.port, _get("/v1/models", host=host))  # no key: still 403, not 401
    err = json.loads(body)["error"]
    assert status == 403 and err["type"] == "permission_error" and err["code"] == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "localhost:{port}", "LOCALHOST.",
                                  "[::1]:{port}", "app.localhost:{port}", "127.0.0.2", "dx.example", "dx.example:80"])
def test_loopback_names_and_allowed_hosts_are_served(open_dx: DXServer, host: str) -> None:
    status, _, body = _raw(open_dx.port, _get("/api/tags", host=host.format(port=open_dx.port)))
    assert status == 200, body


def test_allowed_host_wildcards_cover_subdomains_only(dx: DXServer) -> None:
    assert _raw(dx.port, _get("/api/tags", host="box.lan.example:8080", key=dx.api_key))[0] == 200
    assert _raw(dx.port, _get("/api/tags", host="lan.example", key=dx.api_key))[0] == 403


def test_a_malformed_host_is_400(open_dx: DXServer) -> None:
    for host in ("a b", "user@127.0.0.1", "[zz::1]", "127.0.0.1:99999x"):
        status, _, body = _raw(open_dx.port, _get("/api/tags", host=host))
        assert status == 400 and "Host" in json.loads(body)["error"], (host, body)


# ---------------------------------------------------------------- Origin: cross-site reads
def test_a_cross_site_origin_is_403_even_without_auth(open_dx: DXServer) -> None:
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{open_dx.port + 1}", "https://localhost:3000"):
        status, headers, body = _raw(open_dx.port, _get("/api/tags", extra=f"Origin: {origin}\r\n"))
        assert status == 403, (origin, body)
        assert "--allow-origins" in json.loads(body)["error"]
        assert "access-control-allow-origin" not in headers


def test_a_same_origin_request_is_served_without_cors_headers(open_dx: DXServer) -> None:
    host = f"127.0.0.1:{open_dx.port}"
    status, headers, _ = _raw(open_dx.port, _get("/api/tags", host=host, extra=f"Origin: http://{host}\r\n"))
    assert status == 200
    assert not any(k.startswith("access-control-") for k in headers)


def test_an_allowed_origin_gets_its_own_origin_back_never_a_star(dx: DXServer, open_dx: DXServer) -> None:
    for server in (open_dx, dx):
        status, headers, _ = _raw(server.port, _get("/api/tags", key=server.api_key,
                                                    extra=f"Origin: {ALLOWED_ORIGIN}\r\n"))
        assert status == 200
        assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN and headers["vary"] == "Origin"
    # errors carry it too, so the page can read why
    status, headers, _ = _raw(dx.port, _get("/v1/models", extra=f"Origin: {ALLOWED_ORIGIN}\r\n"))
    assert status == 401 and headers["access-control-allow-origin"] == ALLOWED_ORIGIN


def test_cors_preflight_is_answered_for_allowed_origins_only(dx: DXServer) -> None:
    preflight = (
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n"
        "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type, "
        "x-stainless-os\r\n\r\n"
    )
    status, headers, body = _raw(dx.port, preflight.format(origin=ALLOWED_ORIGIN).encode())  # no key: browsers send none
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    status, headers, _ = _raw(dx.port, preflight.format(origin="http://evil.example").encode())
    assert status == 403 and "access-control-allow-origin" not in headers


def test_bad_web_policy_options_are_one_line_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    from support.serve_harness import dx_env

    for args, fragment in (
        (["--allow-origins", "*"], "--allow-origins: '*' is not an origin"),
        (["--allowed-hosts", "http://x.example/"], "--allowed-hosts: 'http://x.example/' is not a host name"),
    ):
        proc = subprocess.run([sys.executable, "-m", "dx", "serve", "--port", "0", *args], env=dx_env(tmp_path, None),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"dx: error: {fragment}") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- through the real engine
def test_the_engines_own_cors_headers_never_reach_the_client(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path,
) -> None:
    """llama-server answers every request with Access-Control-Allow-Origin (echoing any Origin, '*' by
    default); through dx only the transport's own answer for a listed origin goes out."""
    from support.serve_harness import engine_binary

    server = start_dx(tmp_path, "--allow-origins", ALLOWED_ORIGIN, "--ctx", "512",
                      engine=engine_binary(request), model=str(smollm2_gguf), timeout=300)
    try:
        for origin in (ALLOWED_ORIGIN, None):
            extra = {"Origin": origin} if origin else {}
            props = httpx.get(f"{server.url}/props", headers={**server.headers, **extra}, timeout=120)
            assert props.status_code == 200, props.text
            chat = httpx.post(f"{server.url}/v1/chat/completions", headers={**server.headers, **extra}, timeout=120,
                              json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert chat.status_code == 200, chat.text
            options = httpx.options(f"{server.url}/props", headers=server.headers, timeout=60)  # the engine's OPTIONS
            for resp in (props, chat, options):
                cors = {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}
                assert cors == ({"access-control-allow-origin": origin} if origin and resp is not options else {})
    finally:
        server.stop()
