"""The swarm's wire: mutual-TLS 1.3 between machines, plain TCP only on loopback.

Each tunnel connection is one thread that moves bytes both ways between a
loopback socket (``llama-server``'s RPC client on the head, ``rpc-server`` on a
worker) and a TLS socket to the other machine. One thread does both
directions, because an OpenSSL connection must not be read and written from
two threads at once; the RPC protocol is request/response, so a blocking send
in one direction never waits on the other.

A worker connects to its ``rpc-server`` only after the peer has finished the
TLS handshake with the swarm certificate *and* sent its first byte of RPC: a
peer without the secret, a plain TCP client or raw RPC bytes never cause an
upstream connection (``TunnelStats.upstream`` counts them; tests read it).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

HANDSHAKE_TIMEOUT = 10.0  # seconds a peer has to finish TLS and the hello
HELLO_PREFIX = b"DXSWARM1 "
HELLO_MAX = 4096
CHUNK = 256 * 1024


class PeerRejected(Exception):
    """The peer did not prove it holds the swarm secret (or is not a dx worker)."""


@dataclass
class TunnelStats:
    """Counters for one tunnel end; read by `dx worker`'s status file and the bench."""

    accepted: int = 0  # TCP connections accepted on the network side
    rejected: int = 0  # ... that failed the handshake or the identity check
    authenticated: int = 0
    upstream: int = 0  # connections opened to the loopback side (rpc-server / the remote worker)
    active: int = 0
    bytes_in: int = 0  # plaintext bytes from the network peer
    bytes_out: int = 0  # plaintext bytes to the network peer
    tls_bytes_in: int = 0  # on the wire, TLS 1.3 record overhead estimated (22 bytes per record of <= 16 KiB)
    tls_bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _keepalive(sock: socket.socket) -> None:
    """A peer machine that vanishes (no FIN) is noticed in about 30 s instead of never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pump(local: socket.socket, remote: ssl.SSLSocket, stats: TunnelStats, lock: threading.Lock) -> None:
    """Move bytes both ways until either side closes; then close both."""
    local.setblocking(True)
    remote.setblocking(True)
    try:
        while True:
            if remote.pending():
                readable = [remote]
            else:
                readable, _, _ = select.select([local, remote], [], [])
            for sock in readable:
                data = sock.recv(CHUNK)
                if not data:
                    return
                if sock is remote:
                    local.sendall(data)
                    with lock:
                        stats.bytes_in += len(data)
                        stats.tls_bytes_in += len(data) + 22 * (1 + len(data) // 16384)
                else:
                    remote.sendall(data)
                    with lock:
                        stats.bytes_out += len(data)
                        stats.tls_bytes_out += len(data) + 22 * (1 + len(data) // 16384)
    except (OSError, ssl.SSLError):
        return
    finally:
        for sock in (local, remote):
            with contextlib.suppress(OSError):
                sock.close()


def check_peer(tls: ssl.SSLSocket, own_cert_der: bytes, identity: str) -> None:
    """The peer's certificate chained to the swarm CA (ssl did that); it must also be the swarm's one."""
    peer = tls.getpeercert(binary_form=True)
    info = tls.getpeercert() or {}
    names = {value for kind, value in info.get("subjectAltName", ()) if kind == "DNS"}
    if peer != own_cert_der or identity not in names:
        raise PeerRejected("the peer's certificate is not this swarm's")


def send_hello(tls: ssl.SSLSocket, facts: dict[str, str]) -> None:
    tls.sendall(HELLO_PREFIX + json.dumps(facts, sort_keys=True).encode() + b"\n")


def read_hello(tls: ssl.SSLSocket) -> dict[str, str]:
    """The worker's first line after TLS: which engine build it runs."""
    buf = b""
    while b"\n" not in buf:
        data = tls.recv(HELLO_MAX)
        if not data:
            raise PeerRejected("the worker closed the connection before its hello")
        buf += data
        if len(buf) > HELLO_MAX:
            raise PeerRejected("the worker's hello is too long")
    line, rest = buf.split(b"\n", 1)
    if rest:  # a worker speaks RPC only when asked; bytes here mean something else is talking
        raise PeerRejected("the worker sent data after its hello")
    if not line.startswith(HELLO_PREFIX):
        raise PeerRejected("not a dx worker (no swarm hello)")
    try:
        facts = json.loads(line[len(HELLO_PREFIX):])
    except ValueError:
        raise PeerRejected("not a dx worker (bad swarm hello)") from None
    if not isinstance(facts, dict):
        raise PeerRejected("not a dx worker (bad swarm hello)")
    return {str(k): str(v) for k, v in facts.items()}


class _Listener:
    """A listening socket with one accept thread; each connection gets its own thread."""

    def __init__(self, sock: socket.socket, handle: Callable[[socket.socket, tuple], None], name: str) -> None:
        self.sock = sock
        self._handle = handle
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            threading.Thread(target=self._handle, args=(conn, addr), name="dx-tunnel-conn", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


class WorkerTunnel(_Listener):
    """Network side of a worker: TLS in, then (only then) plain TCP to rpc-server on loopback."""

    def __init__(self, host: str, port: int, server_ctx: ssl.SSLContext, own_cert_der: bytes, identity: str,
                 upstream: tuple[str, int], facts: dict[str, str],
                 on_reject: Callable[[tuple, str], None] | None = None) -> None:
        self.stats = TunnelStats()
        self.lock = threading.Lock()
        self._ctx = server_ctx
        self._own = own_cert_der
        self._identity = identity
        self._upstream = upstream
        self._facts = facts
        self._on_reject = on_reject
        super().__init__(_listen(host, port), self._serve, "dx-worker-tunnel")

    def _reject(self, addr: tuple, why: str) -> None:
        with self.lock:
            self.stats.rejected += 1
        if self._on_reject is not None:
            self._on_reject(addr, why)

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        with self.lock:
            self.stats.accepted += 1
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            _keepalive(conn)
            tls = self._ctx.wrap_socket(conn, server_side=True)
            check_peer(tls, self._own, self._identity)
            send_hello(tls, self._facts)
        except (OSError, ssl.SSLError, PeerRejected) as exc:
            with contextlib.suppress(OSError):
                conn.close()
            self._reject(addr, _why(exc))
            return
        with self.lock:
            self.stats.authenticated += 1
        try:
            tls.settimeout(None)  # a head holds its RPC connection open while idle
            first = tls.recv(CHUNK)  # upstream only for a peer that actually speaks
            if not first:
                tls.close()
                return
            local = socket.create_connection(self._upstream, timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError):
            with contextlib.suppress(OSError):
                tls.close()
            return
        with self.lock:
            self.stats.upstream += 1
            self.stats.active += 1
            self.stats.bytes_in += len(first)
        try:
            local.settimeout(None)
            local.sendall(first)
            pump(local, tls, self.stats, self.lock)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                local.close()
            with contextlib.suppress(OSError):
                tls.close()
            with self.lock:
                self.stats.active -= 1


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the time limit"
    return str(exc) or type(exc).__name__


def open_to_worker(worker: tuple[str, int], client_ctx: ssl.SSLContext, own_cert_der: bytes,
                   identity: str) -> tuple[ssl.SSLSocket, dict[str, str]]:
    """Connect, do mutual TLS, check the worker's certificate and read its hello."""
    raw = socket.create_connection(worker, timeout=HANDSHAKE_TIMEOUT)
    try:
        _keepalive(raw)
        tls = client_ctx.wrap_socket(raw, server_side=False)
        check_peer(tls, own_cert_der, identity)
        facts = read_hello(tls)
    except BaseException:
        with contextlib.suppress(OSError):
            raw.close()
        raise
    tls.settimeout(None)
    return tls, facts


class HeadTunnel(_Listener):
    """Head side for one worker: a loopback listener for llama-server's RPC client, TLS onwards."""

    def __init__(self, worker: tuple[str, int], client_ctx: ssl.SSLContext, own_cert_der: bytes,
                 identity: str) -> None:
        self.worker = worker
        self.stats = TunnelStats()
        self.lock = threading.Lock()
        self._ctx = client_ctx
        self._own = own_cert_der
        self._identity = identity
        super().__init__(_listen("127.0.0.1", 0), self._serve, "dx-head-tunnel")

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        if addr[0] != "127.0.0.1":  # bound to loopback; belt and braces
            conn.close()
            return
        with self.lock:
            self.stats.accepted += 1
        try:
            tls, _facts = open_to_worker(self.worker, self._ctx, self._own, self._identity)
        except (OSError, ssl.SSLError, PeerRejected) as exc:
            print(f"dx: worker {self.worker[0]}:{self.worker[1]}: {_why(exc)}", file=sys.stderr, flush=True)
            conn.close()
            return
        with self.lock:
            self.stats.upstream += 1
            self.stats.active += 1
        try:
            pump(conn, tls, self.stats, self.lock)  # bytes_out: what the head sent to the worker
        finally:
            with self.lock:
                self.stats.active -= 1
