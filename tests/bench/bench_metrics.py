#!/usr/bin/env python3
"""Benchmark: what one scrape of dx's ``GET /metrics`` costs, idle and under load, and dx's idle RSS.

Runs ``dx serve MODEL`` (its own DX_HOME, the engine preloaded), then times
scrapes of /metrics from a client (each one also asks the engine for its own
/metrics and /slots): first with the server idle, then while 4 clients stream
answers. Prints p50/p95 in milliseconds and dx's RSS before and after (goal:
idle <= 40 MB). Asserts nothing; on a shared machine the numbers move with the
neighbours' load.

    python tests/bench/bench_metrics.py [--model GGUF] [--engine llama-server] [--scrapes N] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers in support/

from bench_runtime import Endpoint, rss_mb, stream_tokens
from support.serve_harness import start_dx, wait_for


def get_metrics(port: int, key: str | None) -> tuple[int, bytes, float]:
    """One GET /metrics on a fresh connection: (status, body, milliseconds to the end of the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, (time.perf_counter() - t0) * 1000
    finally:
        conn.close()


def engine_up(port: int, key: str | None) -> bool:
    try:
        return b"dx_engine_slots{model=" in get_metrics(port, key)[1]
    except OSError:
        return False


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": q[18], "n": len(values)}


def series(port: int, key: str | None, n: int, pause: float) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        status, body, ms = get_metrics(port, key)
        if status != 200:
            raise SystemExit(f"/metrics: HTTP {status}: {body[:200]!r}")
        times.append(ms)
        size = len(body)
        time.sleep(pause)
    return times, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--scrapes", type=int, default=40)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from dxbuild.models import resolve

        model = resolve("smollm2").path
    engine = args.engine
    if engine is None:  # dx runs with a fresh HOME here, so it would not find the cached engine by itself
        from dxbuild.engine.build import host_engine

        engine = host_engine("cpu") / "bin" / "llama-server"
    tmp = Path(tempfile.mkdtemp(prefix="dx-bench-metrics-"))
    server = start_dx(tmp, "--keep-alive", "-1", "--ctx", "1024", engine=engine, model=str(model))
    try:
        if not wait_for(lambda: engine_up(server.port, server.api_key), 120):
            raise SystemExit("the engine did not come up")
        time.sleep(1.0)
        idle_rss = rss_mb(server.proc.pid)
        idle, size = series(server.port, server.api_key, args.scrapes, 0.05)
        stop = threading.Event()
        ep = Endpoint("dx", server.port, server.api_key or "")

        def client() -> None:
            while not stop.is_set():
                stream_tokens(ep, args.tokens)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # the streams are under way
        busy, _ = series(server.port, server.api_key, args.scrapes, 0.05)
        stop.set()
        for t in threads:
            t.join(300)
        after_rss = rss_mb(server.proc.pid)
    finally:
        server.stop()
    res = {"idle_ms": percentiles(idle), "load_ms": percentiles(busy), "clients": args.clients,
           "body_bytes": size, "dx_rss_mb": {"idle": idle_rss, "after_load": after_rss}}
    print(f"GET /metrics ({size} bytes, engine /metrics + /slots included), {args.scrapes} scrapes each:")
    for name, key in (("idle", "idle_ms"), (f"{args.clients} streaming clients", "load_ms")):
        print(f"  {name:<22} p50 {res[key]['p50']:7.2f} ms   p95 {res[key]['p95']:7.2f} ms")
    print(f"dx RSS: idle {idle_rss:.1f} MB (goal <= 40 MB), after the load {after_rss:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
