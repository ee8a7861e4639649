"""One request on a connection: what a handler sees (``Request``), and the checks before it runs.

Host and Origin (``dx.server.site``), then auth (``authenticate``: the one place
that decides who holds the key), then the route's handler; a failure becomes an
answer by its own HTTP status (``dx.errors``), in the API's shape.

Handlers use only the documented surface: ``app``, ``command``, ``path``,
``headers``, ``authorized``, ``read_body`` (or ``body_length`` + ``iter_body`` for an upload), ``send_json``/``send_text``/
``send_error_json``, ``send_response``/``send_header``/``end_headers`` +
``wfile``/``connection`` for streams, ``headers_sent`` and ``close_connection``.
"""


from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

from dx import metrics
from dx.errors import http_answer
from dx.server.auth import KEY_FORMS, key_matches
from dx.server.context import App, MiB, Resolve
from dx.server.login import cookie_may_act
from dx.server.site import HostPolicy, same_origin, split_host
from dx.server.wire import TOKEN, Head, HTTPError, api_of, error_doc, status_line


# ---------------------------------------------------------------- connections and workers
class Conn:
    """One client socket and the bytes read from it that no request has used yet."""

    __slots__ = ("addr", "buf", "deadline", "scanned", "sock")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.deadline = 0.0
        self.scanned = 0  # how far the buffer has been searched for the end of the head


class Server(Protocol):
    """What a request needs of the server that read it (``dx.server.transport.DXServer``)."""

    app: App
    hosts: HostPolicy
    resolve: Resolve


def authenticate(req: Request) -> bool:
    """Is this request from someone holding the key? The one place that decides it.

    The key in any form a client sends it (``key_matches``: Bearer, X-Api-Key, Basic); or no key
    configured (``--no-auth``); or a browser's session cookie from the login URL (``dx.server.login``)
    — for a write only when the request comes from the page's own origin (the Host was checked before this).
    """
    key = req.app.api_key
    if key is None or key_matches(req.headers, key):
        return True
    sessions = req.app.sessions
    if sessions is None or not sessions.valid(sessions.session_of(req.headers.get("Cookie"))):
        return False
    origin, host = req.headers.get("Origin"), req.headers.get("Host")
    return cookie_may_act(req.command, origin, req.headers.get("Sec-Fetch-Site"),
                          origin is not None and host is not None and same_origin(origin, host))


class _Writer:
    """``wfile``: unbuffered writes straight to the socket (one send per write)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


_PREFLIGHT_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"


class Request:
    """One request on a connection: what a handler sees, and the checks before it runs."""

    def __init__(self, server: Server, conn: Conn, head: Head) -> None:
        self.server = server
        self.app: App = server.app
        self.connection = conn.sock
        self.client_address = conn.addr
        self.command = head.method
        self.path = head.target
        self.request_version = head.version
        self.headers = head.headers
        self.close_connection = not head.keep_alive
        self.headers_sent = False
        self.authorized = False
        self.wfile = _Writer(conn.sock)
        self._conn = conn
        self._body_left = head.body_length
        self._cors_origin: str | None = None
        self._head: list[str] = []
        self._status = 0
        self._started = time.monotonic()
        self._streaming = False  # a chunked answer: its head goes out with the engine's first token (dx.metrics)
        self._auth_failed = False

    # -------------------------------------------------- responses
    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        self._head = [status_line("HTTP/1.1", code)]

    def send_header(self, keyword: str, value: str) -> None:
        low = keyword.lower()
        if low.startswith("access-control-"):
            return  # CORS is the transport's answer alone (llama-server echoes any Origin)
        if low == "connection" and value.lower() == "close":
            self.close_connection = True
        elif low == "transfer-encoding":
            self._streaming = True
        self._head.append(f"{keyword}: {value}\r\n")

    def _head_bytes(self) -> bytes:
        if self._cors_origin is not None:
            self._head.append(f"Access-Control-Allow-Origin: {self._cors_origin}\r\nVary: Origin\r\n")
        if self.close_connection:
            if not any(h.lower() == "connection: close\r\n" for h in self._head):
                self._head.append("Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            self._head.append("Connection: keep-alive\r\n")
        self._head.append("\r\n")
        if self._streaming:
            self._streaming = False
            metrics.first_token(self.path.split("?", 1)[0], self._started)
        data = "".join(self._head).encode("latin-1")
        self._head = []
        self.headers_sent = True
        return data

    def end_headers(self) -> None:
        self.connection.sendall(self._head_bytes())

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        head = self._head_bytes()
        self.connection.sendall(head if self.command == "HEAD" else head + body)  # one send, one packet

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        self._send(status, "application/json; charset=utf-8", body, headers)

    def send_text(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        self._send(status, content_type, text.encode())

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        if self.headers_sent:
            return
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="dx"'}
        self.send_json(status, error_doc(api_of(self.path), status, message, kind), headers)

    # -------------------------------------------------- the body
    def read_body(self) -> bytes:
        length, limits = self._body_left, self.app.limits
        if length > limits.max_body:
            self.close_connection = True  # the body stays unread; do not reuse the connection
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {limits.max_body}")
        if not length:
            return b""
        buf = self._conn.buf
        have = min(length, len(buf))
        parts = [bytes(buf[:have])]
        del buf[:have]
        need = length - have
        if need and self.headers.get("Expect", "").lower() == "100-continue":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = time.monotonic() + limits.body_timeout
        sock = self.connection
        try:
            while need:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(min(left, limits.io_timeout))
                chunk = sock.recv(min(need, MiB))
                if not chunk:
                    self.close_connection = True
                    raise HTTPError(400, "request body ended early")
                parts.append(chunk)
                need -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise HTTPError(408, f"request body not received within {limits.body_timeout:g}s") from None
        finally:
            self._body_left = need
            sock.settimeout(limits.io_timeout)
        return b"".join(parts)

    @property
    def body_length(self) -> int:
        """Bytes of the body not read yet (all of it before ``read_body``/``iter_body``)."""
        return self._body_left

    def iter_body(self, chunk: int = MiB) -> Iterator[bytes]:
        """The body in chunks, for an upload too big to hold (``POST /api/blobs``): no size limit (the
        handler sets its own), no deadline for the whole, ``io_timeout`` for each chunk. A body that
        ends early raises HTTPError(400) (408 when the client stalls), so a caller never keeps half."""
        buf = self._conn.buf
        if self._body_left and buf:
            have = min(self._body_left, len(buf))
            first = bytes(buf[:have])
            del buf[:have]
            self._body_left -= have
            yield first
        if self._body_left and self.headers.get("Expect", "").lower() == "100-continue":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock = self.connection
        sock.settimeout(self.app.limits.io_timeout)
        while self._body_left:
            try:
                data = sock.recv(min(self._body_left, chunk))
            except TimeoutError:
                self.close_connection = True
                raise HTTPError(408, "the upload stalled: no bytes within "
                                     f"{self.app.limits.io_timeout:g}s") from None
            if not data:
                self.close_connection = True
                raise HTTPError(400, "request body ended early")
            self._body_left -= len(data)
            yield data

    def body_read_fully(self) -> bool:
        """The connection can carry another request only when this one's body was read to its end."""
        return self._body_left == 0

    # -------------------------------------------------- checks and dispatch
    def _check_site(self) -> bool:
        """Host and Origin (before auth). False when this request was answered here."""
        host = self.headers.get("Host")
        if host is not None:
            hp = split_host(host)
            if hp is None:
                raise HTTPError(400, "the Host header is malformed")
            if not self.server.hosts.allows(hp[0]):
                raise HTTPError(403, f"host {hp[0]!r} is not allowed (DNS rebinding protection); "
                                     f"start dx with --allowed-hosts {hp[0]} to serve it", kind="permission_error")
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        listed = self.app.origins.listed(origin)
        if not listed and not (host is not None and same_origin(origin, host)):
            raise HTTPError(403, f"origin {origin[:100]!r} is not allowed; start dx with --allow-origins "
                                 f"{origin[:100]} to let its pages call this server", kind="permission_error")
        if listed:
            self._cors_origin = origin
        if self.command == "OPTIONS" and "Access-Control-Request-Method" in self.headers:
            self._preflight()
            return False
        return True

    def _preflight(self) -> None:
        """A CORS preflight from a permitted origin: which methods and headers may follow (no key needed)."""
        self.send_response(204)
        wanted = self.headers.get("Access-Control-Request-Headers", "")
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        allowed = ", ".join(n for n in names if TOKEN.fullmatch(n.encode("latin-1", "replace")))
        self._head.append(f"Access-Control-Allow-Methods: {_PREFLIGHT_METHODS}\r\n")
        if allowed:
            self._head.append(f"Access-Control-Allow-Headers: {allowed}\r\n")
        self._head.append("Access-Control-Max-Age: 600\r\nContent-Length: 0\r\n")
        if self._cors_origin is None:  # same-origin: nothing to allow, but answer the question
            self._head.append("Vary: Origin\r\n")
        self.end_headers()

    def handle(self) -> None:
        method, path = self.command, self.path.split("?", 1)[0]
        metrics.IN_FLIGHT.inc()
        try:
            self._handle(method, path)
        finally:
            metrics.request_done(path, self._status, self._started, self._auth_failed)

    def _handle(self, method: str, path: str) -> None:
        try:
            if self._check_site():
                handler, public = self.server.resolve(method, path)
                self.authorized = authenticate(self)
                if not public and not self.authorized:
                    self._auth_failed = True
                    raise HTTPError(401, f"missing or wrong API key: send it as {KEY_FORMS}",
                                    kind="authentication_error")
                handler(self)
        except HTTPError as exc:
            self._answer_error(exc.status, exc.message, exc.kind)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            answer = http_answer(exc)  # each failure carries its status and error type (dx.errors)
            if answer is not None:
                self._answer_error(answer[0], str(exc), answer[1])
            else:  # a bug in dx: still an answer in the API's shape
                self.close_connection = True
                print(f"dx: internal error on {method} {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
                self._answer_error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        self._log_access(method)

    def _answer_error(self, status: int, message: str, kind: str) -> None:
        """The error answer, unless the client already left: nobody to tell, nothing to log."""
        try:
            self.send_error_json(status, message, kind)
        except OSError:  # BrokenPipeError, ConnectionResetError, a send timeout
            self.close_connection = True

    def _log_access(self, method: str) -> None:
        if self.app.access_log:
            host = self.client_address[0] if isinstance(self.client_address, tuple) else "-"
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            print(f'{host} - - [{stamp}] "{method} {self.path} {self.request_version}" {self._status} -',
                  file=sys.stderr)


Handler = Request  # the name the handler modules use for it
