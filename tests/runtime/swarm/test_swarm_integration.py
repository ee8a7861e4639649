"""DX Swarm end to end on this machine: real rpc-server, real llama-server, real TLS, loopback only.

Two `dx worker`s and one `dx serve --workers` split SmolLM2 across both; the
answer is the one a single node gives. A worker killed mid-stream gives that
client an error event and the head serves again with the worker left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.serve_harness import DXServer, dx_env, engine_binary, pid_alive, start_dx, stop_process, wait_for

from dx.swarm import head as swarm

pytestmark = pytest.mark.integration

_LISTEN = re.compile(r"worker listening on 127\.0\.0\.1:(\d+)")
PROMPT = "The three primary colours are"


@dataclass
class WorkerProc:
    proc: subprocess.Popen
    port: int
    status_path: Path

    def status(self) -> dict:
        return json.loads(self.status_path.read_text())

    def stop(self) -> None:
        stop_process(self.proc)


def start_worker(tmp: Path, name: str, engine: Path | None, secret: Path, *flags: str,
                 dx: tuple[str, ...] = (sys.executable, "-m", "dx")) -> WorkerProc:
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    status = tmp / f"{name}.status.json"
    env = {**dx_env(home, engine), "DX_SWARM_SECRET": str(secret)}
    proc = subprocess.Popen([*dx, "worker", "--listen", "127.0.0.1:0", "--status-file",
                             str(status), *flags], stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.stderr", "wb"),  # noqa: SIM115
                            env=env, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := _LISTEN.search(line):
            w = WorkerProc(proc, int(m.group(1)), status)
            assert wait_for(status.exists, timeout=10)
            return w
    proc.kill()
    proc.wait()
    raise AssertionError(f"dx worker did not start: {(tmp / f'{name}.stderr').read_text(errors='replace')}")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    return swarm.write_secret(tmp_path / "secret.pem")


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Path:
    binary = engine_binary(request)
    # the cpu tier is built with GGML_RPC (recipes): an engine without it is a build that lost it
    assert (binary.parent / "ggml-rpc-server").exists(), f"{binary.parent} has no ggml-rpc-server (built without GGML_RPC)"
    return binary


def _complete(server: DXServer, name: str, max_tokens: int = 24, timeout: float = 120) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    body = {"model": name, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "seed": 7}
    conn.request("POST", "/v1/completions", json.dumps(body), {**server.headers, "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200, data
    return json.loads(data)["choices"][0]["text"]


def _model_name(server: DXServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v1/models", headers=server.headers)
    doc = json.loads(conn.getresponse().read())
    conn.close()
    return doc["data"][0]["id"]


def _ps(server: DXServer) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/api/ps", headers=server.headers)
    doc = json.loads(conn.getresponse().read())
    conn.close()
    return doc["models"]


def _rpc_listens_on_loopback_only(port: int) -> bool:
    with open("/proc/net/tcp") as fh:
        rows = [line.split() for line in fh][1:]
    listening = [r[1] for r in rows if r[3] == "0A" and r[1].endswith(f":{port:04X}")]
    return listening == [f"0100007F:{port:04X}"]


def test_worker_lets_nothing_reach_rpc_server_without_the_secret(tmp_path: Path, secret: Path, engine: Path) -> None:
    w = start_worker(tmp_path, "w", engine, secret)
    try:
        rpc_port = w.status()["rpc_port"]
        assert _rpc_listens_on_loopback_only(rpc_port)
        other = swarm.load_secret(swarm.write_secret(tmp_path / "other.pem"))
        with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(("127.0.0.1", w.port), timeout=15) as raw:
            tls = other.client_context().wrap_socket(raw)
            tls.sendall(b"\x0e" + bytes(8))
            tls.recv(1)
        for attack in (struct.pack("<BQ", 14, 0), b"GET / HTTP/1.0\r\n\r\n", b""):
            with socket.create_connection(("127.0.0.1", w.port), timeout=15) as raw:
                raw.sendall(attack)
                with contextlib.suppress(OSError):  # the worker may have hung up already
                    raw.shutdown(socket.SHUT_WR)  # a plain client that has said all it will say
                raw.settimeout(15)
                with contextlib.suppress(ConnectionResetError):
                    while raw.recv(4096):
                        pass
        assert wait_for(lambda: w.status()["rejected"] == 4, timeout=20), w.status()
        st = w.status()
        assert st["authenticated"] == 0 and st["upstream"] == 0
        assert swarm.upstream_connections(rpc_port) == 0  # nothing connected to rpc-server, per the kernel
    finally:
        w.stop()


def test_model_split_across_two_workers_answers_like_one_node_and_survives_losing_one(
    tmp_path: Path, secret: Path, engine: Path, smollm2_gguf: Path,
) -> None:
    single = start_dx(tmp_path / "single", engine=engine, model=str(smollm2_gguf), timeout=120)
    try:
        name = _model_name(single)
        expected = _complete(single, name)
    finally:
        single.stop()
    assert expected.strip()

    w1 = start_worker(tmp_path, "w1", engine, secret)
    w2 = start_worker(tmp_path, "w2", engine, secret)
    head: DXServer | None = None
    try:
        head = start_dx(tmp_path / "head", "--no-preload", "--workers", f"127.0.0.1:{w1.port},127.0.0.1:{w2.port}",
                        engine=engine, model=str(smollm2_gguf), timeout=120,
                        env={"DX_SWARM_SECRET": str(secret)})
        assert _complete(head, name) == expected  # greedy: the split model gives the same tokens

        (entry,) = _ps(head)
        placement = {row["worker"]: row["layers"] for row in entry["dx_workers"]}
        assert placement[f"127.0.0.1:{w1.port}"] > 0 and placement[f"127.0.0.1:{w2.port}"] > 0
        assert sum(placement.values()) == 30  # SmolLM2-135M's layers, all accounted for
        assert w1.status()["upstream"] >= 1 and w2.status()["bytes_in"] > 1 << 20  # the weights went over TLS

        # kill worker 2 mid-stream: the client gets an error event, not a hang
        rpc2 = w2.status()["rpc_pid"]
        conn = http.client.HTTPConnection("127.0.0.1", head.port, timeout=90)
        body = {"model": name, "prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True,
                "ignore_eos": True}
        conn.request("POST", "/v1/completions", json.dumps(body), {**head.headers, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b'"text"' not in resp.fp.readline():
            pass  # tokens are flowing: the worker dies mid-stream, not before it
        w2.proc.kill()
        w2.proc.wait(15)
        rest = b""
        while (line := resp.fp.readline()) and line != b"0\r\n":  # raw chunked lines, each read bounded by 90 s
            rest += line
        conn.close()
        events = [json.loads(line[5:]) for line in rest.splitlines() if line.startswith(b"data: {")]
        assert events and "error" in events[-1], rest[-500:]
        assert wait_for(lambda: not pid_alive(rpc2), timeout=15)  # rpc-server went with its dx worker

        # the head serves again, on the worker left, without a restart by hand
        deadline = time.monotonic() + 120
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = _complete(head, name)
            except AssertionError:
                time.sleep(1)
        assert answer == expected
        (entry,) = _ps(head)
        workers = [row["worker"] for row in entry["dx_workers"] if row["worker"] != "head"]
        assert workers == [f"127.0.0.1:{w1.port}"]
        said = head.stderr()
        assert f"worker 127.0.0.1:{w2.port} is unreachable" in said and "serving without it" in said
    finally:
        if head is not None:
            head.stop()
        w1.stop()
        w2.stop()


def test_serve_refuses_a_worker_it_cannot_use_with_one_line(tmp_path: Path, secret: Path, engine: Path,
                                                            smollm2_gguf: Path) -> None:
    w = start_worker(tmp_path, "w", engine, secret)
    other = swarm.write_secret(tmp_path / "other.pem")
    try:
        env = {**dx_env(tmp_path / "home", engine), "DX_SWARM_SECRET": str(other)}
        (tmp_path / "home").mkdir(exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "dx", "serve", str(smollm2_gguf), "--port", "0",
                              "--workers", f"127.0.0.1:{w.port}"], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2, res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"worker 127.0.0.1:{w.port}" in lines[0] and "secret" in lines[0], res.stderr
        assert w.status()["upstream"] == 0
    finally:
        w.stop()


def test_one_minted_executable_is_the_whole_swarm(tmp_path: Path, minted_smollm2: Path) -> None:
    """`swarm init` without `cryptography` (the openssl CLI), `worker` on the bundled rpc-server, `serve --workers`."""
    exe = str(minted_smollm2)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in dx_env(home, None).items() if not k.startswith(("DX_ENGINE", "DX_CACHE", "XDG_"))}
    res = subprocess.run([exe, "swarm", "init"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    secret = home / "swarm" / "secret.pem"  # $DX_HOME/swarm/secret.pem
    assert (secret.stat().st_mode & 0o777) == 0o600
    w = start_worker(tmp_path, "w", None, secret, dx=(exe,))
    head = None
    try:
        assert "engine/bin/ggml-rpc-server" in Path(f"/proc/{w.status()['rpc_pid']}/exe").resolve().as_posix()
        head = subprocess.Popen([exe, "serve", "--port", "0", "--no-auth", "--workers", f"127.0.0.1:{w.port}"],
                                env={**env, "DX_SWARM_SECRET": str(secret)}, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert head.stdout is not None
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = head.stdout.readline()
            if not line:
                break
            if m := re.search(r"on http://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
        assert port, "the minted head did not start"
        server = DXServer(head, f"http://127.0.0.1:{port}", None, home, tmp_path / "none")
        assert _complete(server, _model_name(server), max_tokens=8).strip()
        (entry,) = _ps(server)
        assert {row["worker"]: row["layers"] for row in entry["dx_workers"]}[f"127.0.0.1:{w.port}"] > 0
    finally:
        if head is not None:
            head.terminate()
            try:
                head.wait(20)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        w.stop()
