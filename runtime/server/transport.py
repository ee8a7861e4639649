"""The dx server's HTTP transport: connections, limits, deadlines, Host/Origin checks, auth, errors.

Stdlib only (fast to import; this runs in every minted executable). What a route
does lives with its API's handlers (``dx.server.ollama``, ``dx.server.openai``),
which routes answer what is one table (``dx.server.routes``); this module is what
stands between them and a client.

Shape: one selector thread owns every connection that is waiting for a request
(new, kept alive, or part-way through its headers) and reads headers without
blocking; only a request whose headers are complete takes a worker thread, and
a kept-alive connection goes back to the selector between requests. So idle and
slow clients cost a few hundred bytes each, never a thread, and cannot lock real
clients out:

* header bytes (431), a deadline for headers (408, or a quiet close of an idle
  kept-alive connection), body bytes (413) and a deadline for the body;
* a cap on open connections; at the cap the connection that has waited longest
  for its request is closed to let the new one in (nginx reuses idle
  connections the same way), so a flood of idle sockets cannot starve a client
  that sends its request at once; a cap on requests in progress (workers),
  answered 503 + Retry-After beyond it;
* the wire is checked before anything else: a bad or repeated Content-Length, or
  Content-Length with Transfer-Encoding, is a 400 (request smuggling), a chunked
  body alone a 411;
* ``Host`` must name this server (DNS rebinding: 403), a cross-site ``Origin``
  must be listed in ``--allow-origins`` (403), CORS preflights for listed origins
  are answered here, and the engine's own ``Access-Control-*`` headers never
  reach a client;
* auth (``authenticate``) on every non-public route;
* errors in each API's own shape: Ollama ``{"error": "..."}``, OpenAI
  ``{"error": {"message", "type", "code"}}``.

Handlers get a ``Request`` and use only its documented surface: ``app``,
``command``, ``path``, ``headers``, ``authorized``, ``read_body``,
``send_json``/``send_text``/``send_error_json``, ``send_response``/
``send_header``/``end_headers`` + ``wfile``/``connection`` for streams,
``headers_sent`` and ``close_connection``. During a handler the client socket is
blocking with ``io_timeout`` (the relay switches it to kernel timeouts).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dx import metrics
from dx.server.context import App, Resolve
from dx.server.login import Sessions
from dx.server.request import Conn, Request
from dx.server.site import HostPolicy
from dx.server.wire import HEAD_END, Head, WireError, error_bytes, parse_head, target_of
from dxverify.errors import ConfigurationError


class _Workers:
    """Threads for requests in progress: at most ``cap``, started on demand, ended after a minute idle."""

    def __init__(self, cap: int, run: Callable[[Any], Callable[[], None]]) -> None:
        self.cap = cap
        self._run = run
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._total = 0

    def submit(self, job: Any) -> bool:
        """Hand ``job`` to a worker; False when all ``cap`` are busy."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)  # under the lock: a reserved worker always finds its job
                return True
            if self._total >= self.cap:
                return False
            self._total += 1
        threading.Thread(target=self._loop, args=(job,), name="dx-worker", daemon=True).start()
        return True

    def _loop(self, job: Any) -> None:
        while True:
            done = self._run(job)
            with self._lock:
                self._idle += 1
            done()  # only now, so the next request this hands on finds this worker free, not a new one
            while True:
                try:
                    job = self._jobs.get(timeout=60.0)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():
                            self._idle -= 1
                            self._total -= 1
                            return


def raise_fd_limit() -> int:
    """Raise the open-file soft limit to the hard limit (each connection is a file); return the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    for want in (target, 1 << 16, 10240):  # macOS refuses more than OPEN_MAX with an infinite hard limit
        if want <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            continue
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class DXServer:
    """The listening socket, the selector thread (``serve_forever``) and the workers."""

    def __init__(self, address: tuple[str, int], app: App, resolve: Resolve) -> None:
        self.app = app
        self.resolve = resolve
        self.hosts = HostPolicy(address[0], app.allowed_hosts)
        limits = app.limits
        fd_limit = raise_fd_limit()
        reserve = 64 + 2 * limits.max_requests  # engines' sockets and pipes, logs, the store
        self.max_connections = max(1, min(limits.max_connections, fd_limit - reserve))
        if self.max_connections < limits.max_connections:
            print(f"dx: at most {self.max_connections} open connections (open-file limit {fd_limit})",
                  file=sys.stderr)
        self.socket = _listen(address)
        self.server_address = self.socket.getsockname()
        if app.api_key is not None and app.sessions is None:  # browsers log in with a one-time URL

            app.sessions = Sessions(app.api_key, self.server_address[1])
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._back: collections.deque[tuple[Conn, bool]] = collections.deque()
        self._waiting: collections.OrderedDict[Conn, None] = collections.OrderedDict()  # oldest first
        self._open = 0
        self._stop = False
        self._paused_until = 0.0
        self.workers = _Workers(limits.max_requests, self._work)

    # -------------------------------------------------- selector thread
    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Run the selector loop until ``shutdown`` (or a signal's exception); ``poll_interval`` is unused."""
        sel = self._sel
        sel.register(self.socket, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                timeout = None
                if self._waiting:
                    timeout = max(0.0, next(iter(self._waiting)).deadline - time.monotonic())
                if self._paused_until:
                    timeout = min(timeout if timeout is not None else 0.25, 0.25)
                for key, _mask in sel.select(timeout):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        try:
                            self._read(key.data)
                        except Exception as exc:  # a bug here must cost one connection, not the server
                            print(f"dx: internal error reading from {key.data.addr}: {type(exc).__name__}: {exc}",
                                  file=sys.stderr)
                            if key.data.sock.fileno() != -1:
                                self._drop(key.data, watched=key.data in self._waiting)
                self._take_back()
                self._expire()
                if self._paused_until and time.monotonic() >= self._paused_until:
                    self._paused_until = 0.0
                    sel.register(self.socket, selectors.EVENT_READ, "listen")
        finally:
            with contextlib.suppress(KeyError, ValueError, OSError):
                sel.unregister(self.socket)
            with contextlib.suppress(KeyError, ValueError, OSError):
                sel.unregister(self._wake_r)

    def shutdown(self) -> None:
        self._stop = True
        self._wake()

    def server_close(self) -> None:
        self._stop = True
        self.socket.close()
        for conn in list(self._waiting):
            conn.sock.close()
        self._waiting.clear()
        self._sel.close()

    def _accept(self) -> None:
        for _ in range(64):  # then let reads and deadlines have a turn
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: make room, or stop accepting for a moment
                if not self._evict_oldest():
                    self._sel.unregister(self.socket)
                    self._paused_until = time.monotonic() + 0.25
                return
            if self._open >= self.max_connections and not self._evict_oldest():
                metrics.REJECTED.inc("connections")
                _send_quietly(sock, error_bytes("", 503, "server busy: too many open connections, retry shortly"))
                sock.close()
                continue
            self._open += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._wait(Conn(sock, addr))

    def _wait(self, conn: Conn) -> None:
        """Watch ``conn`` until its next request's headers are in (or its header deadline passes)."""
        conn.deadline = time.monotonic() + self.app.limits.header_timeout
        self._waiting[conn] = None
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            self._drop(conn)
            return
        if conn.buf:
            self._read(conn, recv=False)  # a pipelined request may already be complete

    def _read(self, conn: Conn, recv: bool = True) -> None:
        if conn not in self._waiting:
            return  # closed earlier in this round of events (evicted to make room)
        limit = self.app.limits.max_header_bytes
        if recv:
            try:
                data = conn.sock.recv(min(65536, max(1, limit + 5 - len(conn.buf))))  # never much past the limit
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return
            conn.buf += data
        end = _find_head_end(conn)
        if (end.start() if end is not None else len(conn.buf)) > limit:
            self._refuse(conn, 431, f"request header fields are over the limit of {limit} bytes")
            return
        if end is None:
            return
        block = bytes(conn.buf[: end.start()])
        del conn.buf[: end.end()]
        try:
            head = parse_head(block)
        except WireError as exc:
            self._refuse(conn, exc.status, exc.message, target_of(block))
            return
        self._unwatch(conn)
        if not self.workers.submit((conn, head)):
            metrics.REJECTED.inc("requests")
            _send_quietly(conn.sock, error_bytes(head.target, 503, "server busy: too many requests in progress, "
                                                  "retry shortly", "server_error"))
            self._drop(conn, watched=False)

    def _refuse(self, conn: Conn, status: int, message: str, target: str | None = None) -> None:
        _send_quietly(conn.sock, error_bytes(target_of(conn.buf) if target is None else target, status, message))
        self._drop(conn)

    def _unwatch(self, conn: Conn) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)

    def _drop(self, conn: Conn, watched: bool = True) -> None:
        if watched:
            self._unwatch(conn)
        conn.sock.close()
        self._open -= 1

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its request, to make room for a new one."""
        if not self._waiting:
            return False
        conn = next(iter(self._waiting))
        if conn.buf:  # part of a request: say why
            metrics.REJECTED.inc("connections")
            _send_quietly(conn.sock, error_bytes(target_of(conn.buf), 503,
                                                  "server busy: too many open connections, retry shortly"))
        self._drop(conn)
        return True

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            conn = next(iter(self._waiting))
            if conn.deadline > now:
                return
            if conn.buf:  # part-way through a request: 408; an idle kept-alive connection just closes
                timeout = self.app.limits.header_timeout
                _send_quietly(conn.sock, error_bytes(target_of(conn.buf), 408,
                                                      f"request headers not received within {timeout:g}s"))
            self._drop(conn)

    def _take_back(self) -> None:
        while self._back:
            conn, keep = self._back.popleft()
            if keep:
                with contextlib.suppress(OSError):
                    conn.sock.setblocking(False)
                self._wait(conn)
            else:
                self._open -= 1  # the worker closed it

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -------------------------------------------------- worker threads
    def _work(self, job: tuple[Conn, Head]) -> Callable[[], None]:
        """Serve the requests whose heads are in; returns how to hand the connection back."""
        conn, head = job
        keep = False
        try:
            conn.sock.settimeout(self.app.limits.io_timeout)
            while True:
                req = Request(self, conn, head)
                req.handle()
                keep = not req.close_connection and req.body_read_fully()
                if not keep:
                    break
                nxt = self._pipelined(conn)
                if nxt is None:
                    break
                head = nxt
        except Exception as exc:  # never lose a connection to a bug in here
            keep = False
            print(f"dx: internal error serving {conn.addr}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not keep:
            with contextlib.suppress(OSError):
                conn.sock.close()

        def hand_back() -> None:
            self._back.append((conn, keep))
            self._wake()

        return hand_back

    def _pipelined(self, conn: Conn) -> Head | None:
        """The next request's head when it is already in the buffer (HTTP pipelining), else None."""
        end = _find_head_end(conn)
        if end is None or end.start() > self.app.limits.max_header_bytes:
            return None  # the selector reads the rest (or answers 431)
        try:
            head = parse_head(bytes(conn.buf[: end.start()]))
        except WireError:
            return None  # the selector answers it
        del conn.buf[: end.end()]
        return head


def _find_head_end(conn: Conn) -> re.Match[bytes] | None:
    """Where the head in ``conn.buf`` ends; each byte is searched once, however slowly it arrives."""
    if not conn.scanned:
        while conn.buf[:1] in (b"\r", b"\n"):  # blank lines before a request line are ignored (RFC 9112 2.2)
            del conn.buf[:1]
    end = HEAD_END.search(conn.buf, max(0, conn.scanned - 3))
    conn.scanned = 0 if end is not None else len(conn.buf)
    return end


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """A short answer on a socket about to be closed; a client that is not reading loses it."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(data)


def _listen(address: tuple[str, int]) -> socket.socket:
    host, port = address
    # An ASCII name goes as bytes: a str is IDNA-encoded first, which loads the idna codec, stringprep
    # and unicodedata (~0.5 MB) for a "127.0.0.1" that needs none of them.
    name: str | bytes | None = (host.encode("ascii") if host.isascii() else host) if host else None
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # like the stdlib server: IPv4 first for "localhost"
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and sockaddr[0] == "::":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
        sock.bind(sockaddr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- one request

def make_server(host: str, port: int, app: App, resolve: Resolve) -> DXServer:
    """Bind the server (raises ConfigurationError when the address is taken)."""
    try:
        return DXServer((host, port), app, resolve)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another server (Ollama?) may be using it; pick another with --port",
        ) from None
