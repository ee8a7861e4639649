"""The streaming relay's chunk bookkeeping (dx.engine.relay.ChunkedBody and relay).

DX forwards the engine's chunked answers with their framing as is, so the
bookkeeping must find every chunk boundary whatever way the bytes are split
across socket reads, and must tell a finished body from one that broke off.
The socket tests use a raw loopback server standing in for an engine that
misbehaves in ways the real one cannot be made to on demand; the real engine's
streams are covered in test_clients.py and test_supervisor.py.
"""

from __future__ import annotations

import http.client
import io
import itertools
import re
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.engine.relay import ChunkedBody, iter_chunks, relay
from dx.errors import EngineUnavailable


def encode(parts: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    trailer=st.sampled_from([b"", b"X-Checksum: 1\r\n"]),
)
def test_every_split_of_a_chunked_body_is_followed_to_its_end(parts, cuts, trailer) -> None:
    raw = encode(parts, trailer)
    body, data, used = ChunkedBody(), [], 0
    for block in [*split(raw, cuts), b"after the body"]:
        if body.complete:
            break
        used += body.feed(block, data)
    assert body.complete
    assert used == len(raw)  # nothing after the body is counted
    assert b"".join(data) == b"".join(parts)


def test_a_body_cut_short_is_not_complete_and_says_where_it_stopped() -> None:
    raw = encode([b"data: one\n\n", b"data: two\n\n"])
    body = ChunkedBody()
    body.feed(raw[: raw.index(b"data: two")])
    assert not body.complete and not body.at_boundary  # inside the second chunk
    body = ChunkedBody()
    body.feed(raw[: raw.index(b"b\r\ndata: two")])
    assert not body.complete and body.at_boundary


@pytest.mark.parametrize("bad", [b"zz\r\n", b"-5\r\n", b"\r\n"])
def test_a_malformed_chunk_size_is_an_engine_error(bad: bytes) -> None:
    with pytest.raises(EngineUnavailable, match="malformed chunked body"):
        ChunkedBody().feed(bad)


def test_an_endless_size_line_is_refused() -> None:
    with pytest.raises(EngineUnavailable, match="malformed"):
        ChunkedBody().feed(b"1" * 5000)


# ---------------------------------------------------------------- over sockets
class _Upstream:
    """A one-shot loopback server that sends ``raw`` then closes."""

    def __init__(self, raw: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.raw = raw
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        request = b""
        while b"\r\n\r\n" not in request:  # read the whole request, so closing sends FIN, not RST
            request += conn.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += conn.recv(65536)
        conn.sendall(self.raw)
        conn.close()
        self.sock.close()

    def response(self) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/v1/completions", b"{}", {"Connection": "close"})
        return conn, conn.getresponse()


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Writer:
    """The handler side of relay(): a socketpair stands in for the client connection."""

    def __init__(self) -> None:
        self.connection, self.peer = socket.socketpair()
        self.connection.settimeout(10)
        self.wfile = self.connection.makefile("wb", buffering=0)
        self.head = io.StringIO()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.head.write(f"{code}\n")

    def send_header(self, keyword: str, value: str) -> None:
        self.head.write(f"{keyword}: {value}\n")

    def end_headers(self) -> None:
        pass

    def received(self) -> bytes:
        self.wfile.close()
        self.connection.close()
        out = b""
        while data := self.peer.recv(65536):
            out += data
        return out


def test_relay_forwards_the_engines_framing_byte_for_byte() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(40)]
    body = encode(events)
    conn, resp = _Upstream(_HEAD + body).response()
    w = _Writer()
    relay(w, conn, resp)
    assert w.connection.gettimeout() == 10  # the handler's own timeout is back after the stream
    assert w.received() == body
    assert "Transfer-Encoding: chunked" in w.head.getvalue()


def test_an_engine_that_stops_between_chunks_gets_an_error_event_and_a_proper_end() -> None:
    partial = encode([b"data: {}\n\n"])[: -len(b"0\r\n\r\n")]
    conn, resp = _Upstream(_HEAD + partial).response()
    w = _Writer()
    with pytest.raises(EngineUnavailable, match="connection closed"):
        relay(w, conn, resp)
    got = w.received()
    assert got.startswith(partial)
    assert b'"code": 503' in got and got.endswith(b"0\r\n\r\n")
    decoded = b"".join(p for p in iter_chunks_of(got))
    assert decoded.count(b"data: ") == 2


def test_an_engine_that_stops_inside_a_chunk_leaves_the_stream_unterminated() -> None:
    raw = encode([b"data: {}\n\n"])
    conn, resp = _Upstream(_HEAD + raw[:6]).response()
    w = _Writer()
    with pytest.raises(EngineUnavailable):
        relay(w, conn, resp)
    got = w.received()
    assert got == raw[:6]  # no terminator: the client sees a broken stream, not a short one


def test_iter_chunks_decodes_what_the_engine_sends() -> None:
    events = [b"data: %d\n\n" % i for i in range(100)]
    conn, resp = _Upstream(_HEAD + encode(events)).response()
    assert b"".join(iter_chunks(resp)) == b"".join(events)
    conn.close()


def iter_chunks_of(raw: bytes) -> list[bytes]:
    parts: list[bytes] = []
    ChunkedBody().feed(raw, parts)
    return parts


def test_a_head_answer_announcing_a_chunked_body_is_relayed_without_waiting_for_one() -> None:
    up = _Upstream(_HEAD)  # headers only, as a server answers HEAD; the socket then closes
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    conn.request("HEAD", "/", headers={"Connection": "close"})
    resp = conn.getresponse()
    w = _Writer()
    relay(w, conn, resp)
    assert w.received() == b""  # a HEAD answer has no body: nothing may follow the headers
