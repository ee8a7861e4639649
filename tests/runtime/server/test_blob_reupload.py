"""``POST /api/blobs/<digest>`` of a blob DX already has, as clients that write the whole body first send it.

Open WebUI's "Upload a GGUF model" (aiohttp) streams the file and reads the answer only after the last
byte; when DX answered 200 with the body unread and closed the connection, aiohttp's write failed and
Open WebUI said "Ollama: Could not create blob" for a GGUF it had uploaded before under another file
name. Raw HTTP here: the whole body, then a second request on the same connection.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import httpx
import pytest
from support.gguf_handcraft import tiny_model
from support.serve_harness import DXServer, engine_binary, start_dx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DXServer]:
    server = start_dx(tmp_path_factory.mktemp("reupload"), engine=engine_binary(request))
    yield server
    server.stop()


def _answers(dx: DXServer, raw: bytes, count: int) -> list[str]:
    """Send ``raw`` on one connection; the status lines of up to ``count`` answers (fewer if it closes)."""
    host, port = dx.url.removeprefix("http://").split(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(raw)
        while got.count(b"HTTP/1.1 ") < count:
            data = s.recv(65536)
            if not data:
                break
            got += data
    return [line for line in got.decode(errors="replace").split("\r\n") if line.startswith("HTTP/1.1 ")]


def _post(dx: DXServer, digest: str, body: bytes, *extra: str) -> bytes:
    host = dx.url.removeprefix("http://")
    auth = "".join(f"{k}: {v}\r\n" for k, v in dx.headers.items())
    head = "".join(f"{h}\r\n" for h in extra)
    return (f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n{auth}{head}Content-Type: application/octet-stream"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _head(dx: DXServer, digest: str) -> bytes:
    host = dx.url.removeprefix("http://")
    auth = "".join(f"{k}: {v}\r\n" for k, v in dx.headers.items())
    return f"HEAD /api/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()


def test_the_same_blob_again_is_read_and_answered_200_on_a_live_connection(dx: DXServer) -> None:
    data = tiny_model(n_vocab=21).build().data
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    first = httpx.post(f"{dx.url}/api/blobs/{digest}", headers=dx.headers, content=data, timeout=60)
    assert first.status_code == 201, first.text
    # the whole body again, then another request on the same connection: both answered
    assert _answers(dx, _post(dx, digest, data) + _head(dx, digest), 2) == ["HTTP/1.1 200 OK"] * 2
    # twice more in a row on one connection (Open WebUI's pooled session)
    twice = _post(dx, digest, data) + _post(dx, digest, data) + _head(dx, digest)
    assert _answers(dx, twice, 3) == ["HTTP/1.1 200 OK"] * 3
    assert not list((dx.home / "models" / "tmp").iterdir())  # nothing was written for them


def test_a_body_that_cannot_be_the_blob_is_not_read(dx: DXServer) -> None:
    """Another length, or ``Expect: 100-continue``: 200 at once (Ollama's answer), the connection closes."""
    data = tiny_model(n_vocab=22).build().data
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{dx.url}/api/blobs/{digest}", headers=dx.headers, content=data, timeout=60).status_code == 201
    assert _answers(dx, _post(dx, digest, b"GGUF") + _head(dx, digest), 2) == ["HTTP/1.1 200 OK"]
    expect = _post(dx, digest, b"", "Expect: 100-continue").replace(b"Content-Length: 0", f"Content-Length: {len(data)}".encode())
    assert _answers(dx, expect, 2) == ["HTTP/1.1 200 OK"]  # no "100 Continue": the client never sends it
