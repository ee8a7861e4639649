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
``command``, ``path``, ``headers``, ``authorized``, ``read_body``/``read_json``,
``send_json``/``send_text``/``send_error_json``, ``send_response``/
``send_header``/``end_headers`` + ``wfile``/``connection`` for streams,
``headers_sent`` and ``close_connection``. During a handler the client socket is
blocking with ``io_timeout`` (the relay switches it to kernel timeouts).
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http
import ipaddress
import json
import queue
import re
import selectors
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dx import __version__, metrics
from dx.errors import http_answer
from dxverify.errors import ConfigurationError

MiB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Everything that bounds what one client can make the server do.

    Memory: a connection waiting for its request buffers at most
    ``max_header_bytes`` of its head, so all of them together stay under
    ``max_connections`` x 64 KiB (64 MiB at the defaults, reached only by a
    deliberate flood; an idle socket holds no buffer, about 1 KiB in all).
    Measured (bench_idle_connections.py): 1,000 idle or slow connections +0.6 MB
    RSS; 1,000 holding 60 KB of head each 90-115 MB, back to idle once closed.
    """

    max_body: int = 32 * MiB
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # idle keep-alive + request line + headers
    body_timeout: float = 60.0
    io_timeout: float = 300.0  # one blocking send/recv on the client socket
    max_connections: int = 1024  # open sockets (waiting or in a request)
    max_requests: int = 128  # requests in progress = worker threads


class App:
    """What the handlers share: config, the engine manager, the model resolver, the web policy."""

    def __init__(
        self, manager: Any, resolver: Any, api_key: str | None,
        limits: ServerLimits | None = None, access_log: bool = False,
        allowed_hosts: Iterable[str] = (), allow_origins: Iterable[str] = (),
    ) -> None:
        self.manager = manager
        self.resolver = resolver
        self.api_key = api_key
        self.limits = limits or ServerLimits()
        self.access_log = access_log
        self.allowed_hosts = tuple(allowed_hosts)
        self.origins = OriginPolicy(allow_origins)
        self.sessions: Any = None  # dx.server.login.Sessions, made when the port is known (auth on)
        self.started = time.time()


class HTTPError(Exception):
    """A handler's answer that is an error: status + one-line message (+ OpenAI error type)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


# (method, path) -> (handler, public): the route table's lookup (dx.server.routes.resolve).
Resolve = Callable[[str, str], tuple[Callable[[Any], None], bool]]


# ---------------------------------------------------------------- Host and Origin
def split_host(value: str) -> tuple[str, str] | None:
    """``Host`` (or an origin's netloc) -> (lower-case name without brackets or final dot, port or "").

    None when it is not a host[:port] at all.
    """
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:/@?#]+)(?::(\d{1,5}))?", value)
    if m is None:
        return None
    name = m.group(1).lower()
    if name.startswith("["):
        name = name[1:-1]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return name.rstrip(".") if name != "." else "", m.group(2) or ""


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which ``Host`` names this server answers (DNS rebinding protection).

    A page on ``http://attacker.example`` can make a browser connect to
    127.0.0.1 by re-pointing its own DNS name, but the browser still sends
    ``Host: attacker.example``: refusing names that are not ours stops it. An IP
    literal cannot be re-pointed, and neither can a loopback name. Allowed:

    * loopback: ``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``;
    * the address or name given to ``--host``;
    * bound to every interface (0.0.0.0, ::): any IP literal and this machine's
      host name (what clients on the network can type);
    * ``--allowed-hosts`` entries: exact names, ``*.example.com`` for its
      subdomains, ``*`` to turn the check off (a reverse proxy that checks it).

    The port is not compared: the name is what a rebinding attack forges, and
    behind a port forward the port a client used may differ from ours. A refusal
    is 403, as Ollama answers since its fix, not 421 (which invites a retry on
    another connection, and no connection to this server will do).
    """

    def __init__(self, bind_host: str, allowed: Iterable[str] = ()) -> None:
        self.any = False
        self.names = {"localhost"}
        self.suffixes = [".localhost"]
        for entry in allowed:
            entry = entry.strip().lower()
            if entry == "*":
                self.any = True
                continue
            wildcard = entry.startswith("*.")
            parsed = split_host(entry[2:] if wildcard else entry)
            if not entry or parsed is None or parsed[1]:
                raise ConfigurationError(
                    f"--allowed-hosts: {entry!r} is not a host name",
                    hint="give names without scheme or port, e.g. --allowed-hosts myhost.lan,*.example.com",
                )
            if wildcard:
                self.suffixes.append("." + parsed[0])
            else:
                self.names.add(parsed[0])
        bind = bind_host.strip("[]").lower()
        self.wildcard = bind in ("", "0.0.0.0", "::")
        if self.wildcard:
            hostname = socket.gethostname().lower().rstrip(".")
            self.names |= {hostname, hostname.split(".", 1)[0]}
        else:
            self.names.add(bind.rstrip("."))
        self.suffixes_t = tuple(self.suffixes)

    def allows(self, name: str) -> bool:
        if self.any or name in self.names or name.endswith(self.suffixes_t):
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.wildcard)


def _origin_key(origin: str) -> tuple[str, str, str] | None:
    """An origin (``scheme://host[:port]``) -> (scheme, host, port or "" when default), or None."""
    parts = urllib.parse.urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    hp = split_host(parts.netloc)
    if hp is None or not hp[0]:
        return None
    port = "" if hp[1] == {"http": "80", "https": "443"}[parts.scheme] else hp[1]
    return parts.scheme, hp[0], port


class OriginPolicy:
    """Which cross-site ``Origin``s may call the API (``--allow-origins``); CORS answers for them.

    Same-origin requests (the origin's host:port is the request's Host: llama.cpp's
    web UI served by dx itself) need no listing. Anything else is refused: a
    page on another site must not be able to use, or read from, a local server.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        keys = set()
        for entry in allowed:
            if not entry.strip():
                continue
            key = _origin_key(entry)
            if key is None:
                raise ConfigurationError(
                    f"--allow-origins: {entry!r} is not an origin",
                    hint="list each origin in full, e.g. --allow-origins http://localhost:3000 ('*' is not accepted)",
                )
            keys.add(key)
        self.allowed = frozenset(keys)

    def listed(self, origin: str) -> bool:
        return _origin_key(origin) in self.allowed


def same_origin(origin: str, host: str) -> bool:
    key, hp = _origin_key(origin), split_host(host)
    if key is None or hp is None:
        return False
    default = {"http": "80", "https": "443"}[key[0]]
    return (key[1], key[2]) == (hp[0], "" if hp[1] == default else hp[1])


# ---------------------------------------------------------------- parsing the head
class Headers:
    """Request header fields, case-insensitive (the part of email.message.Message handlers use)."""

    __slots__ = ("_by_name", "_items")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._by_name: dict[str, list[str]] = {}
        for name, value in items:
            self._by_name.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: Any = None) -> Any:
        return list(self._by_name.get(name.lower(), ())) or default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


class WireError(Exception):
    """A request that cannot be taken as HTTP at all: answered and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: Headers
    body_length: int
    keep_alive: bool


def parse_head(block: bytes) -> Head:
    """Request line + header fields (``block`` without the blank line that ends it), strictly.

    Framing is decided here, for every request, whether or not a handler reads
    the body: a request whose length is ambiguous is refused, never guessed.
    """
    lines = block.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise WireError(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/\d(\.\d)?", version):  # 400, not 505: the client chose the version
            raise WireError(400, f"{version} is not supported here; use HTTP/1.1")
        raise WireError(400, "malformed request line")
    if not (target.startswith("/") or target == "*") or any(c <= " " or c == "\x7f" for c in target):
        raise WireError(400, "malformed request target")
    items: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also obs-fold and space before the colon (RFC 9112 5.1)
            raise WireError(400, "malformed header line")
        value = value.strip(b" \t")
        if b"\r" in value or b"\0" in value:
            raise WireError(400, "malformed header value")
        items.append((name.decode("latin-1"), value.decode("latin-1")))
    headers = Headers(items)
    hosts = headers.get_all("Host", [])
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise WireError(400, "an HTTP/1.1 request needs exactly one Host header")
    lengths = headers.get_all("Content-Length", [])
    codings = headers.get_all("Transfer-Encoding", [])
    if lengths and codings:
        raise WireError(400, "Content-Length together with Transfer-Encoding is ambiguous; send only Content-Length")
    if codings:
        if ",".join(codings).strip().lower() == "chunked":
            raise WireError(411, "chunked request bodies are not accepted; send Content-Length")
        raise WireError(400, f"Transfer-Encoding {', '.join(codings)!r} is not supported; send Content-Length")
    if len(lengths) > 1:
        raise WireError(400, "more than one Content-Length header")
    body_length = 0
    if lengths:
        if not _DIGITS.fullmatch(lengths[0]):
            raise WireError(400, f"Content-Length {lengths[0][:40]!r} is not a non-negative number")
        body_length = int(lengths[0])
    tokens = {t.strip().lower() for t in ",".join(headers.get_all("Connection", [])).split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    return Head(method, target, version, headers, body_length, keep)


def _api_of(target: str) -> str:
    return "ollama" if target.startswith("/api/") else "openai"


def _target_of(buf: bytes | bytearray) -> str:
    """The request target of a possibly incomplete head (for the error shape), else ""."""
    first = bytes(buf[:2048]).split(b"\n", 1)[0].split(b" ")
    return first[1].decode("latin-1") if len(first) > 1 else ""


def _error_doc(api: str, status: int, message: str, kind: str) -> dict[str, Any]:
    if api == "ollama":
        return {"error": message}
    return {"error": {"message": message, "type": kind, "code": status}}


_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}
_SERVER = f"dx/{__version__}"
_date_cache: list[Any] = [0, ""]


def _date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date_cache[1]


def _status_line(version: str, status: int) -> str:
    return f"{version} {status} {_PHRASES.get(status, '')}\r\nServer: {_SERVER}\r\nDate: {_date()}\r\n"


def _error_bytes(target: str, status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    """A complete error answer that closes the connection (for errors before a request exists)."""
    body = json.dumps(_error_doc(_api_of(target), status, message, kind), separators=(",", ":")).encode()
    extra = "Retry-After: 1\r\n" if status in (429, 503) else ""
    head = (
        f"{_status_line('HTTP/1.1', status)}Content-Type: application/json; charset=utf-8\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


# ---------------------------------------------------------------- connections and workers
class _Conn:
    """One client socket and the bytes read from it that no request has used yet."""

    __slots__ = ("addr", "buf", "deadline", "scanned", "sock")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.deadline = 0.0
        self.scanned = 0  # how far the buffer has been searched for the end of the head


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
            from dx.server.login import Sessions

            app.sessions = Sessions(app.api_key, self.server_address[1])
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._back: collections.deque[tuple[_Conn, bool]] = collections.deque()
        self._waiting: collections.OrderedDict[_Conn, None] = collections.OrderedDict()  # oldest first
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
                _send_quietly(sock, _error_bytes("", 503, "server busy: too many open connections, retry shortly"))
                sock.close()
                continue
            self._open += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._wait(_Conn(sock, addr))

    def _wait(self, conn: _Conn) -> None:
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

    def _read(self, conn: _Conn, recv: bool = True) -> None:
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
            self._refuse(conn, exc.status, exc.message, _target_of(block))
            return
        self._unwatch(conn)
        if not self.workers.submit((conn, head)):
            metrics.REJECTED.inc("requests")
            _send_quietly(conn.sock, _error_bytes(head.target, 503, "server busy: too many requests in progress, "
                                                  "retry shortly", "server_error"))
            self._drop(conn, watched=False)

    def _refuse(self, conn: _Conn, status: int, message: str, target: str | None = None) -> None:
        _send_quietly(conn.sock, _error_bytes(_target_of(conn.buf) if target is None else target, status, message))
        self._drop(conn)

    def _unwatch(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)

    def _drop(self, conn: _Conn, watched: bool = True) -> None:
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
            _send_quietly(conn.sock, _error_bytes(_target_of(conn.buf), 503,
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
                _send_quietly(conn.sock, _error_bytes(_target_of(conn.buf), 408,
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
    def _work(self, job: tuple[_Conn, Head]) -> Callable[[], None]:
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

    def _pipelined(self, conn: _Conn) -> Head | None:
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


def _find_head_end(conn: _Conn) -> re.Match[bytes] | None:
    """Where the head in ``conn.buf`` ends; each byte is searched once, however slowly it arrives."""
    if not conn.scanned:
        while conn.buf[:1] in (b"\r", b"\n"):  # blank lines before a request line are ignored (RFC 9112 2.2)
            del conn.buf[:1]
    end = _HEAD_END.search(conn.buf, max(0, conn.scanned - 3))
    conn.scanned = 0 if end is not None else len(conn.buf)
    return end


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """A short answer on a socket about to be closed; a client that is not reading loses it."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(data)


def _listen(address: tuple[str, int]) -> socket.socket:
    host, port = address
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
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
def authenticate(req: Request) -> bool:
    """Is this request from someone holding the key? The one place that decides it.

    ``Authorization: Bearer <key>``; or no key configured (``--no-auth``); or a browser's
    session cookie from the login URL (``dx.server.login``) — for a write only when the request
    comes from the page's own origin (the Host was checked before this).
    """
    from dx.server.auth import bearer_matches

    key = req.app.api_key
    if key is None or bearer_matches(req.headers.get("Authorization"), key):
        return True
    sessions = req.app.sessions
    if sessions is None or not sessions.valid(sessions.session_of(req.headers.get("Cookie"))):
        return False
    from dx.server.login import cookie_may_act

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

    def __init__(self, server: DXServer, conn: _Conn, head: Head) -> None:
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
        self._head = [_status_line("HTTP/1.1", code)]

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
        self.send_json(status, _error_doc(_api_of(self.path), status, message, kind), headers)

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

    def body_read_fully(self) -> bool:
        """The connection can carry another request only when this one's body was read to its end."""
        return self._body_left == 0

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
        allowed = ", ".join(n for n in names if _TOKEN.fullmatch(n.encode("latin-1", "replace")))
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
                    raise HTTPError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                    kind="authentication_error")
                handler(self)
        except HTTPError as exc:
            self.send_error_json(exc.status, exc.message, exc.kind)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            answer = http_answer(exc)  # each failure carries its status and error type (dx.errors)
            if answer is not None:
                self.send_error_json(answer[0], str(exc), answer[1])
            else:  # a bug in dx: still an answer in the API's shape
                self.close_connection = True
                print(f"dx: internal error on {method} {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
                with contextlib.suppress(OSError):
                    self.send_error_json(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        self._log_access(method)

    def _log_access(self, method: str) -> None:
        if self.app.access_log:
            host = self.client_address[0] if isinstance(self.client_address, tuple) else "-"
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            print(f'{host} - - [{stamp}] "{method} {self.path} {self.request_version}" {self._status} -',
                  file=sys.stderr)


Handler = Request  # the name the handler modules use for it


def make_server(host: str, port: int, app: App, resolve: Resolve) -> DXServer:
    """Bind the server (raises ConfigurationError when the address is taken)."""
    try:
        return DXServer((host, port), app, resolve)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another server (Ollama?) may be using it; pick another with --port",
        ) from None
