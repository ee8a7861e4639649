#!/usr/bin/env python3
"""Benchmark: does a real client still get answered while 1,000 idle or slow connections are open?

Starts a real `dx serve` (its own DX_HOME; no model needed), measures a keyed
client's latency (a fresh connection per request: connect + GET /api/tags, or
with --model a 1-token /api/generate), then with --idle connections open that send
nothing, then with --slow connections that send half a request head and then a
byte a second, then with both at once (past dx's connection cap), and after
closing them all. Reports latency p50/max, failures (any answer
but 200), the server's RSS and thread count at each stage. Asserts nothing.

    python tests/bench/bench_idle_connections.py [--idle 1000] [--slow 1000] [--requests 20] [--model GGUF]

To compare with another server build, run it with that build first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def client_latency(port: int, key: str, n: int, model: str | None) -> dict[str, float | int]:
    """n requests, each on a fresh connection: p50/max seconds and how many did not get a 200."""
    times, failures, statuses = [], 0, {}
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {key}"}
        t0 = time.perf_counter()
        try:
            if model:
                body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
                conn.request("POST", "/api/generate", json.dumps(body), {**headers, "Content-Type": "application/json"})
            else:
                conn.request("GET", "/api/tags", headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except OSError as exc:
            status = type(exc).__name__
        times.append(time.perf_counter() - t0)
        conn.close()
        statuses[status] = statuses.get(status, 0) + 1
        failures += status != 200
    return {"p50_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3, "failures": failures,
            "statuses": {str(k): v for k, v in statuses.items()}}


def open_connections(port: int, n: int, half: bool, pad: int = 0) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if half:
            s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"p" * pad)
        socks.append(s)
    return socks


def dribble(socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte per slow connection per second, never finishing the header line."""
    while not stop.wait(1.0):
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"x")


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server still holds open without an answer."""
    import select

    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    closed = 0
    by_fd = {s.fileno(): s for s in socks}
    for fd, _event in poller.poll(0):
        try:
            data = by_fd[fd].recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            closed += data == b"" or data.startswith(b"HTTP/")  # closed, or answered (a 503) before closing
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return len(socks) - closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=1000, help="connections that send nothing")
    ap.add_argument("--slow", type=int, default=1000, help="connections that send half a head, then a byte a second")
    ap.add_argument("--slow-head-bytes", type=int, default=0,
                    help="bytes of head each slow connection sends first (up to dx's 64 KiB: its worst-case memory)")
    ap.add_argument("--requests", type=int, default=20, help="client requests per measurement")
    ap.add_argument("--model", type=Path, help="serve this GGUF and time a 1-token /api/generate instead")
    ap.add_argument("--json", type=Path)
    ap.add_argument("serve_args", nargs="*", help="extra `dx serve` arguments (after --)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + args.slow + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    home = Path(tempfile.mkdtemp(prefix="dx-bench-idle-"))
    env = dict(os.environ, DX_HOME=str(home), HOME=str(home), PYTHONUNBUFFERED="1", OLLAMA_MODELS=str(home / "none"))
    cmd = [sys.executable, "-m", "dx", "serve", *([str(args.model)] if args.model else []), "--port", "0",
           "--request-timeout", "60", *args.serve_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    stop = threading.Event()
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    report: dict[str, object] = {"load_average_1m_start": os.getloadavg()[0], "cpus": os.cpu_count(),
                                 "idle": args.idle, "slow": args.slow, "requests": args.requests}
    try:
        url = key = None
        while key is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit("dx serve exited")
            url = url or (re.search(r"on (http://\S+)", line) or [None, None])[1]
            key = (re.search(r"API key (\S+)", line) or [None, None])[1]
        port = int(url.rsplit(":", 1)[1])  # type: ignore[union-attr]
        model = args.model.name if args.model else None
        client_latency(port, key, 3, model)  # warm-up (and, with a model, its load)

        def stage(name: str) -> None:
            time.sleep(1.0)
            report[name] = {
                "client": client_latency(port, key, args.requests, model),
                "rss_mb": proc_status(proc.pid, "VmRSS") / 1024, "threads": proc_status(proc.pid, "Threads"),
                "idle_open": still_open(idle), "slow_open": still_open(slow),
            }
            print(f"{name}: {report[name]}", flush=True)

        stage("before")
        idle = open_connections(port, args.idle, half=False)
        stage("with_idle")
        for s in idle:
            s.close()
        idle = []
        slow = open_connections(port, args.slow, half=True, pad=args.slow_head_bytes)
        threading.Thread(target=dribble, args=(slow, stop), daemon=True).start()
        stage("with_slow")
        idle = open_connections(port, args.idle, half=False)  # together past the cap: the oldest make room
        stage("with_slow_and_idle")
        for s in idle + slow:
            s.close()
        idle, slow = [], []
        stage("after_close")
    finally:
        stop.set()
        for s in idle + slow:
            s.close()
        proc.terminate()
        proc.wait(15)
    report["load_average_1m_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
