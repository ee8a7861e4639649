"""The dx server's HTTP transport: connections, limits, deadlines, auth, errors in each API's shape.

A stdlib threaded HTTP server (fast to import; this runs in every minted
executable). What a route does lives with its API's handlers
(``dx.ollama_routes``, ``dx.openai_routes``), which routes answer what is one
table (``dx.routes``); this module is what stands between them and a client:

* auth: ``Authorization: Bearer <key>`` on every non-public route (``authenticate``);
* bounds: header bytes, body bytes, a deadline for reading a request (a
  slow-loris client is cut off, not waited for), a cap on open connections
  answered with 503 + Retry-After instead of a hang;
* errors in each API's own shape: Ollama ``{"error": "..."}``, OpenAI
  ``{"error": {"message", "type", "code"}}``.

Handlers get the request object (``Handler``) and use only its documented
surface: ``app``, ``command``, ``path``, ``headers``, ``authorized``,
``read_body``/``read_json``, ``send_json``/``send_text``/``send_error_json``,
``send_response``/``send_header``/``end_headers`` + ``wfile``/``connection``
for streams, ``headers_sent`` and ``close_connection``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dx import __version__
from dx.engine_access import EngineError, ModelNotFound
from dx.ollama_api import BadRequest
from dxverify.errors import ConfigurationError, DXError

MiB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Everything that bounds what one client can make the server do."""

    max_body: int = 32 * MiB
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # idle keep-alive + request line + headers
    body_timeout: float = 60.0
    io_timeout: float = 300.0  # one blocking send/recv on the client socket
    max_connections: int = 128


class App:
    """What the handlers share: config, the engine manager, the model resolver."""

    def __init__(
        self, manager: Any, resolver: Any, api_key: str | None,
        limits: ServerLimits | None = None, access_log: bool = False,
    ) -> None:
        self.manager = manager
        self.resolver = resolver
        self.api_key = api_key
        self.limits = limits or ServerLimits()
        self.access_log = access_log
        self.started = time.time()


class HTTPError(Exception):
    """A handler's answer that is an error: status + one-line message (+ OpenAI error type)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


# (method, path) -> (handler, public): the route table's lookup (dx.routes.resolve).
Resolve = Callable[[str, str], tuple[Callable[[Any], None], bool]]


class _Deadlines:
    """Cuts off connections that take too long to send a request (slow loris).

    One thread for all connections; it sleeps while nothing is pending, so an idle
    server costs no CPU.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[socket.socket, float] = {}
        self._thread = threading.Thread(target=self._loop, name="dx-deadlines", daemon=True)
        self._thread.start()

    def set(self, sock: socket.socket, seconds: float) -> None:
        with self._cond:
            was_idle = not self._due
            self._due[sock] = time.monotonic() + seconds
            if was_idle:
                self._cond.notify()

    def clear(self, sock: socket.socket) -> None:
        with self._cond:
            self._due.pop(sock, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                now = time.monotonic()
                late = [s for s, due in self._due.items() if due <= now]
                for s in late:
                    del self._due[s]
                if not late:
                    self._cond.wait(min(0.25, min(self._due.values()) - now))
            for s in late:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class _HeaderBudget:
    """Wraps the request stream while headers are read: at most ``budget`` bytes."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self.left = budget
        self.exceeded = False

    def readline(self, limit: int = -1) -> bytes:
        if self.exceeded:
            return b"\r\n"
        want = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line = self._raw.readline(want)
        self.left -= len(line)
        if self.left < 0:
            self.exceeded = True
            return b"\r\n"  # end the header block here; parse_request then answers 431
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class DXHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App, resolve: Resolve) -> None:
        self.app = app
        self.resolve = resolve
        self.deadlines = _Deadlines()
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= self.app.limits.max_connections
            if not full:
                self._active += 1
        if full:
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._active_lock:
            self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return  # a client that went away is not a server error
        print(f"dx: internal error serving {client_address}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _refuse_busy(sock: socket.socket) -> None:
    body = b'{"error":"server busy: too many open connections, retry shortly"}'
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )


def authenticate(req: Handler) -> bool:
    """Is this request from someone holding the key? The one place that decides it.

    Today: ``Authorization: Bearer <key>``, or no key configured (``--no-auth``).
    """
    from dx.auth import bearer_matches

    key = req.app.api_key
    return key is None or bearer_matches(req.headers.get("Authorization"), key)


class Handler(BaseHTTPRequestHandler):
    server: DXHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"dx/{__version__}"

    def version_string(self) -> str:
        return self.server_version

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        super().setup()
        self.app: App = self.server.app
        self.connection.settimeout(self.app.limits.io_timeout)
        self._raw_rfile = self.rfile

    def handle_one_request(self) -> None:
        self.headers_sent = False
        self.authorized = False
        self._budget = _HeaderBudget(self._raw_rfile, self.app.limits.max_header_bytes)
        self.rfile = self._budget  # type: ignore[assignment]
        self.server.deadlines.set(self.connection, self.app.limits.header_timeout)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        finally:
            self.server.deadlines.clear(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.rfile = self._raw_rfile
        if ok and self._budget.exceeded:
            self.close_connection = True
            self.send_error(431, "Request Header Fields Too Large")
            return False
        self.server.deadlines.clear(self.connection)  # headers are in; the body has its own deadline
        return ok

    def end_headers(self) -> None:
        self.headers_sent = True
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if self.app.access_log:
            super().log_message(format, *args)

    def _api(self) -> str:
        return "ollama" if self.path.startswith("/api/") else "openai"

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_text(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        if self.headers_sent:
            return
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="dx"'}
        if self._api() == "ollama":
            self.send_json(status, {"error": message}, headers)
        else:
            self.send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise HTTPError(411, "chunked request bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise HTTPError(400, "Content-Length is negative")
        if length > self.app.limits.max_body:
            self.close_connection = True  # the body stays unread; do not reuse the connection
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {self.app.limits.max_body}")
        self.server.deadlines.set(self.connection, self.app.limits.body_timeout)
        data = self.rfile.read(length)
        self.server.deadlines.clear(self.connection)
        if len(data) != length:
            self.close_connection = True
            raise HTTPError(400, "request body ended early")
        return data

    def read_json(self) -> dict[str, Any]:
        body = self.read_body()
        if not body:
            raise HTTPError(400, "the request needs a JSON body")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return doc

    # ------------------------------------------------------------ dispatch
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            handler, public = self.server.resolve(method, path)
            self.authorized = authenticate(self)
            if not public and not self.authorized:
                raise HTTPError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                kind="authentication_error")
            handler(self)
        except HTTPError as exc:
            self.send_error_json(exc.status, exc.message, exc.kind)
        except BadRequest as exc:
            self.send_error_json(400, str(exc))
        except ModelNotFound as exc:
            self.send_error_json(404, str(exc), "not_found_error")
        except EngineError as exc:
            self.send_error_json(exc.status, exc.message, "server_error")
        except DXError as exc:
            status = 404 if type(exc).__name__ == "ModelNotFoundError" else 500
            if type(exc).__name__ == "ReadOnlyModelError":
                status = 403
            self.send_error_json(status, str(exc), "server_error")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug in dx: still an answer in the API's shape
            self.close_connection = True
            print(f"dx: internal error on {method} {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.send_error_json(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def make_server(host: str, port: int, app: App, resolve: Resolve) -> DXHTTPServer:
    """Bind the server (raises ConfigurationError when the address is taken)."""
    try:
        return DXHTTPServer((host, port), app, resolve)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another server (Ollama?) may be using it; pick another with --port",
        ) from None
