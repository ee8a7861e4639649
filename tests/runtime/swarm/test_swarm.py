"""DX Swarm without the engine: the secret file, real mutual TLS, the worker tunnel's gate, log parsing.

The worker tunnel here fronts a plain loopback listener that stands where
rpc-server stands and counts who reaches it; the real rpc-server is in
test_swarm_integration.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import threading
from pathlib import Path

import pytest
from support.serve_harness import wait_for
from support.tools import need

from dx.swarm import head as swarm
from dx.swarm import tunnel
from dxverify.errors import ConfigurationError


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    return swarm.write_secret(tmp_path / "swarm" / "secret.pem")


class CountingUpstream:
    """A loopback listener that echoes and counts connections: what reached 'rpc-server'."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gate(secret_file: Path):  # type: ignore[no-untyped-def]
    sec = swarm.load_secret(secret_file)
    up = CountingUpstream()
    rejects: list[str] = []
    wt = tunnel.WorkerTunnel("127.0.0.1", 0, sec.server_context(), sec.cert_der, swarm.IDENTITY, up.address,
                             {"dx_swarm": "1", "llama_cpp": "abc"}, on_reject=lambda a, why: rejects.append(why))
    yield sec, wt, up, rejects
    wt.close()
    up.close()


def _recv_all_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while data := sock.recv(4096):
            out += data
    except ConnectionResetError:
        pass
    return out


def test_init_writes_a_0600_file_that_loads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = swarm.write_secret(tmp_path / "s" / "secret.pem")
    assert (path.stat().st_mode & 0o777) == 0o600
    sec = swarm.load_secret(path)
    assert ssl.DER_cert_to_PEM_cert(sec.cert_der) and "BEGIN CERTIFICATE" in sec.ca_pem
    with pytest.raises(ConfigurationError, match="already exists"):
        swarm.write_secret(path)
    assert swarm.write_secret(path, force=True) == path
    assert swarm.load_secret(path).cert_der != sec.cert_der  # a new swarm


def test_a_secret_others_can_read_is_refused(secret_file: Path) -> None:
    os.chmod(secret_file, 0o644)
    with pytest.raises(ConfigurationError, match="readable by others") as exc:
        swarm.load_secret(secret_file)
    assert exc.value.hint and "chmod 600" in exc.value.hint


def test_missing_or_foreign_secret_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dx swarm init"):
        swarm.load_secret(tmp_path / "nope.pem")
    other = tmp_path / "other.pem"
    other.write_text("not pem")
    other.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not a DX swarm secret"):
        swarm.load_secret(other)


def test_secret_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DX_SWARM_SECRET", raising=False)
    assert swarm.secret_path(None) == tmp_path / "home" / "swarm" / "secret.pem"
    monkeypatch.setenv("DX_SWARM_SECRET", str(tmp_path / "env.pem"))
    assert swarm.secret_path(None) == tmp_path / "env.pem"
    assert swarm.secret_path(str(tmp_path / "flag.pem")) == tmp_path / "flag.pem"


def test_openssl_cli_secret_works_like_the_cryptography_one(tmp_path: Path) -> None:
    leaf, ca, key = swarm._generate_with_openssl(need("openssl"))
    path = tmp_path / "secret.pem"
    path.write_bytes(leaf + ca + key)
    path.chmod(0o600)
    sec = swarm.load_secret(path)
    up = CountingUpstream()
    wt = tunnel.WorkerTunnel("127.0.0.1", 0, sec.server_context(), sec.cert_der, swarm.IDENTITY, up.address, {})
    try:
        tls, facts = tunnel.open_to_worker(wt.address, sec.client_context(), sec.cert_der, swarm.IDENTITY)
        assert facts == {}
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        tls.close()
    finally:
        wt.close()
        up.close()


def test_same_secret_passes_and_bytes_flow_both_ways(gate) -> None:  # type: ignore[no-untyped-def]
    sec, wt, up, _ = gate
    tls, facts = tunnel.open_to_worker(wt.address, sec.client_context(), sec.cert_der, swarm.IDENTITY)
    assert tls.version() == "TLSv1.3"
    assert facts["llama_cpp"] == "abc"
    assert up.connections == 0  # authenticated but silent: rpc-server not yet reached
    payload = os.urandom(300_000)
    tls.sendall(payload)
    got = b""
    tls.settimeout(15)
    while len(got) < len(payload):
        got += tls.recv(65536)
    assert got == payload
    assert up.connections == 1
    tls.close()
    assert swarm.parse_address("[::1]:5") == ("::1", 5)


def test_wrong_secret_plain_tcp_and_raw_rpc_never_reach_upstream(gate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _sec, wt, up, rejects = gate
    other = swarm.load_secret(swarm.write_secret(tmp_path / "other.pem"))
    # 1. a client holding another swarm's secret
    with pytest.raises((ssl.SSLError, tunnel.PeerRejected, OSError)):
        tls, _ = tunnel.open_to_worker(wt.address, other.client_context(), other.cert_der, swarm.IDENTITY)
        tls.sendall(b"x")
        tls.recv(1)
    # 2. TLS without any client certificate
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.check_hostname = False
    anon.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(wt.address, timeout=15) as raw, \
            anon.wrap_socket(raw) as tls:
        tls.sendall(b"x")
        assert tls.recv(1) == b""
        raise OSError("closed")
    # 3. raw RPC: a HELLO command (ggml-rpc: 1-byte command 14, 8-byte size 0) without any handshake
    with socket.create_connection(wt.address, timeout=15) as raw:
        raw.sendall(struct.pack("<BQ", 14, 0))
        answer = _recv_all_until_closed(raw)
    assert b"DXSWARM" not in answer and len(answer) < 64  # at most a TLS alert, then closed
    assert wait_for(lambda: wt.stats.rejected == 3, timeout=15)
    with wt.lock:
        assert wt.stats.authenticated == 0 and wt.stats.upstream == 0
    assert up.connections == 0
    assert len(rejects) == 3 and all(rejects)


def test_silent_tcp_peer_is_dropped_at_the_handshake_deadline(gate, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _sec, wt, up, _ = gate
    monkeypatch.setattr(tunnel, "HANDSHAKE_TIMEOUT", 0.5)
    with socket.create_connection(wt.address, timeout=15) as raw:
        assert _recv_all_until_closed(raw) == b""  # the worker closes it; nothing was forwarded
    assert up.connections == 0


def test_placement_from_engine_log() -> None:
    log = "\n".join([
        "0.00.228 I print_info: n_layer               = 30",
        "0.00.244 I load_tensors: RPC0[127.0.0.1:34515] model buffer size =    33.82 MiB",
        "0.00.244 I load_tensors: RPC0[127.0.0.1:35351] model buffer size =    58.28 MiB",
        "0.00.403 I llama_kv_cache: RPC0[127.0.0.1:34515] KV buffer size =    24.00 MiB",
        "0.00.408 I llama_kv_cache: RPC0[127.0.0.1:35351] KV buffer size =    18.00 MiB",
        "0.00.408 I llama_kv_cache: size =   45.00 MiB (  2048 cells,  30 layers,  4/1 seqs), K (f16): 22.50 MiB",
    ])
    rows = swarm.placement_from_log(log)
    assert rows == [
        {"endpoint": "127.0.0.1:34515", "layers": 16, "model_mib": 33.82},
        {"endpoint": "127.0.0.1:35351", "layers": 12, "model_mib": 58.28},
        {"endpoint": "local", "layers": 2, "model_mib": 0.0},
    ]
    assert swarm.placement_from_log("no engine yet") == []


def _engine_dir(tmp_path: Path, commit: str, rpc: bool = True) -> Path:
    e = tmp_path / f"engine-{commit}"
    (e / "bin").mkdir(parents=True)
    (e / "bin" / "llama-server").write_bytes(b"")
    if rpc:
        (e / "bin" / "libggml-rpc.so").write_bytes(b"")
    (e / "engine.json").write_text(json.dumps({"llama_cpp_commit": commit, "tier": "cpu"}))
    return e / "bin" / "llama-server"


def test_head_names_each_bad_worker_and_what_to_do(gate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sec, wt, up, _ = gate
    closed = socket.create_server(("127.0.0.1", 0))
    dead = closed.getsockname()[:2]
    closed.close()
    other = swarm.load_secret(swarm.write_secret(tmp_path / "other.pem"))

    head = swarm.Head([wt.address, dead], sec, _engine_dir(tmp_path, "abc"))
    try:
        assert head.check(0) is None
        assert "unreachable" in (head.check(1) or "") and f"dx worker --listen {dead[0]}:{dead[1]}" in head.check(1)
        args = head.engine_args("generate")  # the dead one is left out, the live one used through its tunnel end
        assert args[:2] == ["--rpc", f"127.0.0.1:{head.tunnels[0].address[1]}"]
        assert head.engine_args("embed") == []
    finally:
        head.close()
    wrong = swarm.Head([wt.address], other, _engine_dir(tmp_path, "abc2"))
    try:
        problem = wrong.check(0) or ""
        assert "does not hold this swarm's secret" in problem and str(other.path) in problem
    finally:
        wrong.close()
    newer = swarm.Head([wt.address], sec, _engine_dir(tmp_path, "def"))
    try:
        assert "RPC needs the same build" in (newer.check(0) or "")
        with pytest.raises(ConfigurationError, match=r"runs llama\.cpp abc"):
            newer.check_all()
    finally:
        newer.close()
    with pytest.raises(ConfigurationError, match="no RPC backend"):
        swarm.Head([wt.address], sec, _engine_dir(tmp_path, "x", rpc=False))
    with pytest.raises(ConfigurationError, match="2 workers"):
        swarm.Head([wt.address, dead], sec, _engine_dir(tmp_path, "y"), tensor_split=[1.0])
    assert up.connections == 0  # checks read the hello only; rpc-server is reached by the engine alone


def test_parse_address_errors() -> None:
    with pytest.raises(ConfigurationError, match="not HOST:PORT"):
        swarm.parse_address("nohost")
    with pytest.raises(ConfigurationError, match="out of range"):
        swarm.parse_address("h:70000")
