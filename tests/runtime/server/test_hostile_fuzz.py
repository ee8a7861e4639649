"""Hundreds of malformed requests, with the key, against a real dx serve and engine: never a 5xx, never a hang.

A seeded generator mixes what clients get wrong on the wire (methods, targets, Content-Length,
Transfer-Encoding, Host, header syntax) and in bodies (truncated and non-object JSON, lone
surrogates, overflowing numbers, NaN, wrong types, bad model names) on every route. Every
answer must be a complete HTTP response with a status below 500, and the server must still
answer a real client afterwards.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import time
from pathlib import Path

import pytest
from support.serve_harness import DXServer, engine_binary, start_dx

from dx.models.catalog import Store

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
N = 400
ROUTES = ["/api/generate", "/api/chat", "/api/show", "/api/embed", "/api/embeddings", "/api/pull",
          "/api/delete", "/api/copy", "/api/tags", "/api/ps", "/api/version", "/v1/chat/completions",
          "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/x", "/props", "/tokenize", "/"]
BAD_NAMES = ["../../x", "/etc/passwd", "", "a" * 600, "x\u0000y", "hf:../x", "..", "a:b:c", "%2e%2e/x", 7, None]
BAD_VALUES = ["\ud800", 1e308 * 10, -1e308 * 10, float("nan"), 2**70, -(2**70), [], {}, "x" * 5000, True, None]


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    base: dict[str, object] = {"model": MODEL, "max_tokens": 1, "options": {"num_predict": 1}, "stream": False,
                               "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}], "input": "Hi"}
    if kind == 0:
        return json.dumps(base).encode()[: rng.randrange(1, 60)]  # truncated
    if kind == 1:
        return rng.choice([b"[]", b"null", b"42", b'"s"', b"{", b"\xff\xfe{}", b"{'a': 1}", b""])
    if kind == 2:
        base["model"] = rng.choice(BAD_NAMES)
        for k in ("source", "destination", "name"):
            base[k] = rng.choice(BAD_NAMES)
    else:
        key = rng.choice(["model", "prompt", "messages", "options", "max_tokens", "temperature", "stream",
                          "input", "format", "keep_alive", "tools", "n_predict", "seed", "stop"])
        base[key] = rng.choice(BAD_VALUES)
    text = json.dumps(base, allow_nan=True)
    return re.sub(r'"\\\\ud800"', r'"\\ud800"', text).encode("utf-8", "surrogatepass")


def _request(rng: random.Random, port: int, key: str) -> bytes:
    method = rng.choice(["GET", "POST", "POST", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "G\x00T"])
    target = rng.choice(ROUTES) + rng.choice(["", "", "?a=1", "?token=x", "/../..", "%00", "//x"])
    body = _body(rng)
    headers = [f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {key}", "Content-Type: application/json"]
    cl = rng.randrange(8)
    if cl == 0:
        headers.append(f"Content-Length: {rng.choice(['-1', 'abc', '1e3', '+5', ' '])}")
    elif cl == 1:
        headers += [f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 1}"]
    elif cl == 2:
        headers += [f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"]
    elif cl == 3:
        headers.append(f"Content-Length: {len(body) + rng.randrange(1, 5)}")  # promises more than it sends
        headers.append("Connection: close")
    else:
        headers.append(f"Content-Length: {len(body)}")
    if rng.random() < 0.1:
        headers.append(rng.choice(["Bad Header: x", " folded", "X-Long: " + "y" * 70000, "Host: evil.example"]))
    rng.shuffle(headers)
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTX/1.1"])
    head = f"{method} {target} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("latin-1", "replace") + body


def _status(raw: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    return int(m.group(1)) if m else None


_ENGINE_ROUTES = re.compile(rb"POST /(api/(generate|chat|embed|embeddings|rerank)|v1/(chat/completions|completions|"
                            rb"embeddings|responses|messages|rerank)|completion|completions|infill)[?\s]")


def _asks_the_engine(raw: bytes) -> bool:
    """A whole request (its declared body all sent) to a route whose answer the engine works out."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lengths = re.findall(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$", head)
    whole = sep and len(lengths) == 1 and len(body) >= int(lengths[0])
    return bool(whole) and _ENGINE_ROUTES.match(raw) is not None


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fuzz")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp, "--ctx", "512", "--parallel", "2", engine=engine_binary(request), model=MODEL)
    yield server
    server.stop()


@pytest.mark.parametrize("seed", [16, 1, 2])
def test_malformed_requests_never_get_a_5xx(dx: DXServer, seed: int) -> None:
    rng = random.Random(seed)
    assert dx.api_key
    seen: dict[int, int] = {}
    bad: list[str] = []
    deadline = time.monotonic() + 600
    for i in range(N):
        assert time.monotonic() < deadline, f"{i} requests in 600 s: the server stalls"
        raw = _request(rng, dx.port, dx.api_key)
        with socket.create_connection(("127.0.0.1", dx.port), timeout=30) as s:
            with contextlib.suppress(OSError):  # refused mid-send (431/413): the answer is still read below
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            chunks = []
            try:
                while len(b"".join(chunks)) < 1 << 16 and (c := s.recv(65536)):
                    chunks.append(c)
            except ConnectionResetError:
                pass
        answer = b"".join(chunks)
        status = _status(answer)
        if status is None:
            if raw.startswith(b"HEAD "):
                continue
            if _asks_the_engine(raw):
                continue  # half-closed after a whole request: a client gone (as to nginx, Go), its work cancelled
            bad.append(f"#{i} no HTTP answer to {raw[:120]!r}: {answer[:80]!r}")
            continue
        seen[status] = seen.get(status, 0) + 1
        if status >= 500:
            bad.append(f"#{i} {status} for {raw[:160]!r}: {answer[-200:]!r}")
    assert not bad, f"{len(bad)} bad answers (statuses {seen}):\n" + "\n".join(bad[:15])
    assert sum(n for s, n in seen.items() if 400 <= s < 500) > N // 2, seen
    # and a real client is still served
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=60)
    conn.request("POST", "/api/generate", body=json.dumps({"model": MODEL, "prompt": "Hi", "stream": False,
                                                           "options": {"num_predict": 2}}),
                 headers=dx.headers)
    assert conn.getresponse().status == 200


def test_the_served_model_cannot_be_deleted_under_the_server(dx: DXServer) -> None:
    """Deleting the model dx serve was started with would leave every later request failing: 409 instead."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=60)
    conn.request("DELETE", "/api/delete", body=json.dumps({"model": MODEL}), headers=dx.headers)
    resp = conn.getresponse()
    assert resp.status == 409 and "started with" in json.loads(resp.read())["error"]
    conn.request("POST", "/api/show", body=json.dumps({"model": MODEL}), headers=dx.headers)
    assert conn.getresponse().status == 200
