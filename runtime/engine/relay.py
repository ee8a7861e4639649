"""Talk to the engine: send a request, relay its answer to the client byte for byte.

OpenAI routes are passed through untouched: the request body DX received goes
to llama-server as is (plus the engine's secret key), and the response body —
SSE stream included — is copied to the client chunk by chunk as the engine
produces it. A chunked answer (every stream) is forwarded with its framing as
is: the only per-token work is one read, a few operations of chunk
bookkeeping (``ChunkedBody``) and one write.

When the engine dies mid-request the client gets a clean error instead of a
hang or a torn stream: a 503 if nothing was sent yet, otherwise one final SSE
``data: {"error": ...}`` event (which the openai client raises as an APIError)
followed by a proper end of the chunked body.

When the client goes away the engine stops too: while the engine works on a
request (a non-streaming answer, or a stream's prefill) ``engine_request``
waits on the engine's socket and the client's at once and, when the client
hangs up, closes the engine connection and raises ``ClientGone``; llama-server
notices the closed connection (its ``is_connection_closed`` poll, every second)
and cancels the task, freeing its slot. Once a stream flows, the relay waits for
the engine's next bytes and the client's hang-up at once (one poll per read), so
a client gone between two tokens ends the relay then, not at the next write
seconds later; ``hang_up`` closes the engine connection at once.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import time
from typing import TYPE_CHECKING, Protocol

from dx.errors import EngineUnavailable, EngineUnreachable

if TYPE_CHECKING:
    import http.client

    from dx.engine.process import Engine

# http.client is imported by the functions that talk to the engine, not at start: it pulls in
# ssl (libcrypto) and the email package, ~8 MB that an idle `dx serve` never touches.

ENGINE_TIMEOUT = 900.0  # a long prefill on a slow CPU still answers well inside this
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length", "server", "date",
        "access-control-allow-origin", "access-control-allow-credentials",
    }
)
_READ = 65536
# the client hung up (Linux tells a half-closed peer apart from one that sent more bytes: POLLRDHUP)
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
_HUNG_UP = _POLLRDHUP | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)


class ClientGone(ConnectionError):
    """The client closed its connection while the engine worked for it: nobody waits for the answer.

    A ConnectionError, so the transport treats it as any lost client: no answer, no log line.
    """


class ResponseWriter(Protocol):
    """The bits of the HTTP handler the relay needs."""

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...

    @property
    def connection(self) -> socket.socket: ...

    @property
    def wfile(self): ...  # type: ignore[no-untyped-def]


def engine_request(
    engine: Engine, method: str, path: str, body: bytes | None, content_type: str | None = "application/json",
    *, with_key: bool = True, timeout: float = ENGINE_TIMEOUT, forward: dict[str, str] | None = None,
    client: socket.socket | None = None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Open a connection to the engine and send one request; return it with the response.

    ``forward``: client request headers passed on (content negotiation for the web UI's assets).
    ``client``: the socket of the client the answer is for; when it hangs up before the engine
    starts answering, the engine connection is closed (the engine cancels the work) and
    ``ClientGone`` is raised.
    """
    import http.client

    if client is not None and client_left(client):
        # it waited for the engine (a load, a restart after a crash) and left meanwhile: sent now, the
        # engine would take a slot for nobody until it next looks at the connection
        raise ClientGone("the client closed its connection before the engine got the request")
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=timeout)
    headers = {**(forward or {}), "Connection": "close"}
    if with_key:
        headers["Authorization"] = f"Bearer {engine.api_key}"
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise EngineUnreachable(f"the engine is not answering ({exc.__class__.__name__})") from exc
    try:
        conn.request(method, path, body=body, headers=headers)
        if client is not None:
            _await_engine(conn, client, timeout)
        return conn, conn.getresponse()
    except ClientGone:
        conn.close()  # the engine sees its connection closed and cancels the task
        raise
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # it had the request: do not run it twice
        raise EngineUnavailable(f"the engine stopped while working on the request ({exc.__class__.__name__})") \
            from exc


def _await_engine(conn: http.client.HTTPConnection, client: socket.socket, timeout: float) -> None:
    """Wait until the engine starts answering, watching the client meanwhile (one poll, no busy loop).

    The engine's socket is watched for input, the client's for a hang-up only (POLLRDHUP: the
    peer closed its side), so a client that already sent its next request (pipelining) is not
    mistaken for one that left. Without POLLRDHUP (not Linux) a readable client is peeked at.
    """
    if not hasattr(select, "poll") or conn.sock is None:
        return  # no poll (Windows): the engine's answer alone is waited for, as before
    cfd = _client_fd(client)
    if cfd is None:
        raise ClientGone("the client closed its connection")
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    poller.register(cfd, _HUNG_UP if _POLLRDHUP else _HUNG_UP | select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the engine did not answer in time")
        events = dict(poller.poll(left * 1000))
        mask = events.get(cfd, 0)
        if mask & _HUNG_UP or (mask and _peer_closed(client)):
            raise ClientGone("the client closed its connection")
        if mask:  # bytes of a next request (no POLLRDHUP here): from now on, its hang-up alone
            poller.modify(cfd, _HUNG_UP)
        if len(events) > (1 if mask else 0):
            return  # the engine is answering (or closed: getresponse says which)


def client_left(client: socket.socket) -> bool:
    """Has the client hung up already? One poll, no wait (a pipelined next request is not a hang-up)."""
    if not hasattr(select, "poll"):
        return False
    cfd = _client_fd(client)
    if cfd is None:
        return True
    poller = select.poll()
    poller.register(cfd, _HUNG_UP if _POLLRDHUP else _HUNG_UP | select.POLLIN)
    mask = dict(poller.poll(0)).get(cfd, 0)
    return bool(mask & _HUNG_UP or (mask and _peer_closed(client)))


def _client_fd(client: socket.socket) -> int | None:
    """The client socket's descriptor to poll, or None once the socket is closed."""
    try:
        fd = client.fileno()
    except OSError:
        return None
    return fd if fd >= 0 else None


def _peer_closed(sock: socket.socket) -> bool:
    """A readable socket: has its peer closed it (EOF, reset), or sent bytes?"""
    try:
        return not sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def hang_up(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse | None) -> None:
    """Close the engine connection now, response included (the response owns the socket once it
    is read: closing ``conn`` alone leaves it open), so an engine still generating stops."""
    try:
        if resp is not None:
            resp.close()
    finally:
        conn.close()


def engine_json(engine: Engine, path: str, payload: dict | None = None,
                timeout: float = ENGINE_TIMEOUT) -> tuple[int, dict]:
    """POST JSON to the engine (GET without ``payload``) and read a JSON answer (non-streaming helpers)."""
    import http.client

    body = json.dumps(payload).encode() if payload is not None else None
    conn, resp = engine_request(engine, "POST" if body is not None else "GET", path, body, timeout=timeout)
    try:
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EngineUnavailable(f"the engine stopped while answering ({exc.__class__.__name__})") from exc
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {"error": {"message": raw[:200].decode("utf-8", "replace"), "type": "server_error"}}
    return resp.status, doc if isinstance(doc, dict) else {"data": doc}


class ChunkedBody:
    """Follows an HTTP/1.1 chunked body through raw reads, without copying it.

    The engine's streaming answers are chunked; DX forwards those bytes as they
    are (the framing is already right for the client) and only needs to know
    where chunks end: to stop after the last one, to tell a complete stream
    from one that broke off, and to add an error event at a chunk boundary.
    ``feed`` does that bookkeeping in a few operations per read, which is what
    keeps DX's cost per streamed token small (one read, one write).
    """

    __slots__ = ("complete", "head", "left", "trailer")

    def __init__(self) -> None:
        self.left = 0        # bytes still due in the current chunk (data + CRLF)
        self.head = b""      # a size or trailer line split across reads
        self.trailer = False  # past the last chunk, in the (normally empty) trailer section
        self.complete = False

    @property
    def at_boundary(self) -> bool:
        return self.left == 0 and not self.head and not self.trailer

    def feed(self, block: bytes, data: list[bytes] | None = None) -> int:
        """Account for ``block``; return how many of its bytes belong to the body.

        With ``data``, the chunks' payload bytes are appended to it (decoding).
        Bytes after the end of the body (none, from llama-server) are not counted.
        """
        i, n = 0, len(block)
        while i < n and not self.complete:
            if self.left:
                take = min(self.left, n - i)
                if data is not None and self.left > 2:
                    data.append(block[i : i + min(take, self.left - 2)])
                i += take
                self.left -= take
                continue
            eol = block.find(b"\n", i)
            if eol < 0:
                self.head += block[i:]
                if len(self.head) > 4096:
                    raise EngineUnavailable("the engine sent a malformed chunked body")
                return n
            line, self.head = (self.head + block[i:eol]).strip(), b""
            i = eol + 1
            if self.trailer:
                self.complete = not line  # an empty line ends the trailer section
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise EngineUnavailable("the engine sent a malformed chunked body") from None
            if size < 0:
                raise EngineUnavailable("the engine sent a malformed chunked body")
            if size == 0:
                self.trailer = True
            else:
                self.left = size + 2
        return i


def _raw_blocks(resp: http.client.HTTPResponse, client: socket.socket | None = None):  # type: ignore[no-untyped-def]
    """The engine's body bytes exactly as they arrive, one socket read each.

    Reads the socket directly (after what http.client had already buffered),
    in blocking mode with a kernel timeout: one system call per read.

    With ``client`` (the socket the stream goes to), each read is preceded by one poll on the
    engine's socket and the client's: a client that hangs up between two tokens raises
    ``ClientGone`` at once, instead of at the next write, which may be seconds away (a slow
    engine, a stop string holding text back). Two system calls per read, no more.
    """
    fp = resp.fp
    sock = fp.raw._sock  # the response owns the socket (Connection: close)
    watch = _hang_up_watch(sock, client)
    poll, ms, ready = watch if watch is not None else (None, None, None)
    with kernel_timeouts(sock):
        block, recv = _buffered(fp, sock), sock.recv
        while True:
            try:
                if not block and poll is not None and (events := poll(ms)) != ready:
                    _not_ready(events, ready)  # the client left (ClientGone), a timeout, or the engine closed
                block = block or recv(_READ)
            except OSError as exc:
                if isinstance(exc, ClientGone):
                    raise
                raise EngineUnavailable(f"the engine stopped mid-response ({exc.__class__.__name__})") from exc
            if not block:
                raise EngineUnavailable("the engine stopped mid-response (connection closed)")
            yield block
            block = b""


def _hang_up_watch(engine: socket.socket, client: socket.socket | None):  # type: ignore[no-untyped-def]
    """(poll, its timeout in ms, what it answers when only the engine has bytes) for the engine's socket
    and the client's; None where that cannot be done cheaply.

    None without a client, poll or POLLRDHUP (not Linux): the relay then notices a departed
    client at its next write, as before. Only a hang-up of the client counts (POLLRDHUP, POLLHUP,
    POLLERR): a client's next request (HTTP pipelining) is not one.
    """
    if client is None or not _POLLRDHUP or not hasattr(select, "poll"):
        return None
    cfd = _client_fd(client)
    if cfd is None:
        return None
    timeout = engine.gettimeout()
    poller = select.poll()
    poller.register(engine, select.POLLIN)
    poller.register(cfd, _HUNG_UP)
    return poller.poll, None if timeout is None else timeout * 1000, [(engine.fileno(), select.POLLIN)]


def _not_ready(events: list[tuple[int, int]], ready: list[tuple[int, int]]) -> None:
    """Poll said more (or less) than "the engine has bytes": raise if the client left or time ran out."""
    if not events:
        raise TimeoutError("timed out")  # as the read would have, after as long
    efd = ready[0][0]
    if any(fd != efd for fd, _mask in events):
        raise ClientGone("the client closed its connection mid-stream")
    # the engine's socket alone, closed or in error: the read that follows tells which


def _has_body(resp: http.client.HTTPResponse) -> bool:
    return resp._method != "HEAD" and resp.status not in (204, 304) and resp.status >= 200  # type: ignore[attr-defined]


def iter_chunks(resp: http.client.HTTPResponse, client: socket.socket | None = None):  # type: ignore[no-untyped-def]
    """Yield the engine's body as it arrives; EngineUnavailable if it breaks off.

    ``client``: the socket of the client the stream is for; when it hangs up between two
    chunks, ``ClientGone`` is raised at once (see ``_raw_blocks``).
    """
    import http.client

    if not resp.chunked or not _has_body(resp):
        try:
            while data := resp.read1(_READ):
                yield data
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(f"the engine stopped mid-response ({exc.__class__.__name__})") from exc
        return
    body = ChunkedBody()
    with contextlib.closing(_raw_blocks(resp, client)) as blocks:
        for block in blocks:
            parts: list[bytes] = []
            body.feed(block, parts)
            yield from parts
            if body.complete:
                return


def relay(writer: ResponseWriter, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
    """Copy the engine's response to the client: status, headers, body bytes."""
    import http.client

    try:
        length = resp.getheader("Content-Length")
        if length is not None:
            try:
                body = resp.read() if _has_body(resp) else None
            except (OSError, http.client.HTTPException) as exc:
                raise EngineUnavailable(f"the engine stopped while answering ({exc.__class__.__name__})") from exc
            status = resp.status
            if status >= 500 and body:
                status, body = client_fault(status, body)
            writer.send_response(status)
            _copy_headers(writer, resp)
            writer.send_header("Content-Length", length if body is None else str(len(body)))
            writer.end_headers()
            if body:
                writer.wfile.write(body)
            return
        content_type = resp.getheader("Content-Type", "")
        writer.send_response(resp.status)
        _copy_headers(writer, resp)
        writer.send_header("Transfer-Encoding", "chunked")
        writer.send_header("X-Accel-Buffering", "no")
        writer.end_headers()
        if not _has_body(resp):
            return  # HEAD, 204, 304: headers only, no body (not even an empty chunked one)
        if resp.chunked:
            _relay_chunked(writer, resp, "text/event-stream" in content_type)
            return
        out = writer.wfile
        try:
            for data in iter_chunks(resp):
                out.write(b"%x\r\n%b\r\n" % (len(data), data))
        except EngineUnavailable as exc:
            _end_with_error(out, exc, "text/event-stream" in content_type)
            raise
        out.write(b"0\r\n\r\n")
    finally:
        hang_up(conn, resp)


def client_fault(status: int, body: bytes) -> tuple[int, bytes]:
    """An engine 5xx that is really the client's mistake becomes a 400 (its message kept).

    llama-server answers 500 when its JSON library rejects a field of the request
    (``[json.exception.type_error…]``, ``parse_error``) and 501 for a feature this
    engine was not started with (``--props``, embeddings on a chat engine): what the
    client asked for, not what failed. Anything else (a real engine fault) stays.
    """
    try:
        doc = json.loads(body)
        err = doc["error"]
        message = str(err.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return status, body
    media = "input is not supported - hint:" in message  # image/audio/video to a model without a projector
    if media:
        err["message"] = message.split(" - hint:", 1)[0] + ": this model has no vision projector; send images to a vision model"
    if status == 501 or "json.exception" in message or media:
        err["code"] = 400
        if status != 501:
            err["type"] = "invalid_request_error"
        return 400, json.dumps(doc, separators=(",", ":")).encode()
    return status, body


def _relay_chunked(writer: ResponseWriter, resp: http.client.HTTPResponse, sse: bool) -> None:
    """Forward a chunked body as it is, read by read: the engine's framing is valid for the client too."""
    body, client = ChunkedBody(), writer.connection
    with kernel_timeouts(client), contextlib.closing(_raw_blocks(resp, client)) as blocks:
        send = client.sendall
        try:
            for block in blocks:
                used = body.feed(block)
                send(block if used == len(block) else block[:used])
                if body.complete:
                    return
        except EngineUnavailable as exc:
            if body.at_boundary:
                _end_with_error(writer.wfile, exc, sse)
            raise


def _buffered(fp, sock: socket.socket) -> bytes:  # type: ignore[no-untyped-def]
    """The bytes ``fp`` already holds, without waiting for more."""
    sock.setblocking(False)
    try:
        return fp.read1(_READ) or b""
    except OSError:
        return b""
    finally:
        sock.setblocking(True)


@contextlib.contextmanager
def kernel_timeouts(sock: socket.socket):  # type: ignore[no-untyped-def]
    """Run a socket in blocking mode with the kernel enforcing its timeout (SO_RCVTIMEO/SO_SNDTIMEO).

    Python's own socket timeout costs a poll() before every recv and send; on a
    token stream that doubles the system calls per token. The kernel timeout
    keeps the same bound (a stalled peer still ends with an OSError) for free.
    """
    timeout = sock.gettimeout()
    if timeout is None:
        yield
        return
    tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.settimeout(None)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _end_with_error(out, exc: Exception, sse: bool) -> None:  # type: ignore[no-untyped-def]
    """End a chunked answer the engine broke off: one SSE error event (for streams), then the last chunk."""
    if sse:
        event = {"error": {"message": f"{exc}; retry the request", "type": "server_error", "code": 503}}
        payload = b"data: " + json.dumps(event).encode() + b"\n\n"
        out.write(b"%x\r\n%b\r\n" % (len(payload), payload))
    out.write(b"0\r\n\r\n")


def _copy_headers(writer: ResponseWriter, resp: http.client.HTTPResponse) -> None:
    for name, value in resp.getheaders():
        if name.lower() not in _HOP_BY_HOP:
            writer.send_header(name, value)
