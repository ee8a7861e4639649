#!/usr/bin/env python3
"""Benchmark: what DX Swarm costs on one machine (overhead, not a speed-up).

Single node (`dx serve MODEL`) against head + 2 workers (`dx worker` twice,
`dx serve MODEL --workers ...`), all on 127.0.0.1, the same cpu engine:

* prefill and decode tokens/s, from the engine's own timings (median of --runs);
* bytes through the tunnels per generated token (the workers' counters; the
  slope between a short and a long answer, so the prompt is not counted);
* tunnel CPU per generated token (the dx worker processes + the head's dx,
  utime+stime from /proc, same slope);
* first load time (first answer of 1 token, model load included) with workers
  that keep no tensor cache, with an empty cache, and with the cache filled.

    python tests/bench/bench_swarm.py [--runs 3] [--model GGUF]

Prints a table and the machine's load average. Asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers in support/
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "swarm"))  # test_swarm_integration

from support.serve_harness import DXServer, start_dx
from test_swarm_integration import WorkerProc, start_worker

from dx.swarm import head as swarm

PREFILL_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 24)


NAMES: dict[int, str] = {}  # server port -> the model name it serves


def request(server: DXServer, prompt: str, max_tokens: int) -> dict:
    if server.port not in NAMES:
        NAMES[server.port] = model_name(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    body = {"model": NAMES[server.port], "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1,
            "ignore_eos": True, "cache_prompt": False}
    conn.request("POST", "/v1/completions", json.dumps(body), {**server.headers, "Content-Type": "application/json"})
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"request failed: {doc}")
    return doc


def model_name(server: DXServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/v1/models", headers=server.headers)
    name = json.loads(conn.getresponse().read())["data"][0]["id"]
    conn.close()
    return name


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def speeds(server: DXServer, runs: int) -> tuple[float, float]:
    prefill, decode = [], []
    for _ in range(runs):
        t = request(server, PREFILL_PROMPT, 64).get("timings") or {}
        prefill.append(float(t.get("prompt_per_second", 0)))
        decode.append(float(t.get("predicted_per_second", 0)))
    return statistics.median(prefill), statistics.median(decode)


def first_load(tmp: Path, engine: Path, model: Path, workers: list[WorkerProc], secret: Path, tag: str) -> float:
    head = start_dx(tmp / f"head-{tag}", "--no-preload", "--workers",
                    ",".join(f"127.0.0.1:{w.port}" for w in workers), engine=engine, model=str(model),
                    timeout=120, env={"DX_SWARM_SECRET": str(secret)})
    try:
        NAMES[head.port] = model_name(head)  # not timed: only the answer that loads the model
        t0 = time.monotonic()
        request(head, "Hi", 1)
        return time.monotonic() - t0
    finally:
        head.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="rpc-server threads per worker (default: rpc-server's, half the CPUs); the single node "
                         "uses llama-server's default")
    args = ap.parse_args()
    from dxbuild.engine.build import host_engine

    engine = host_engine("cpu") / "bin" / "llama-server"
    if args.model is None:
        from dxbuild.models import resolve

        args.model = resolve("smollm2").path
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dx-bench-swarm-") as tmpd:
        tmp = Path(tmpd)
        secret = swarm.write_secret(tmp / "secret.pem")
        single = start_dx(tmp / "single", engine=engine, model=str(args.model), timeout=120)
        try:
            request(single, "Hi", 1)  # loaded
            single_speeds = speeds(single, args.runs)
        finally:
            single.stop()

        threads = ("--threads", str(args.worker_threads)) if args.worker_threads else ()
        workers = [start_worker(tmp, f"w{i}", engine, secret, *threads) for i in (1, 2)]
        try:
            cold = first_load(tmp, engine, args.model, workers, secret, "cold")
            warm = first_load(tmp, engine, args.model, workers, secret, "warm")
            head = start_dx(tmp / "head", "--workers", ",".join(f"127.0.0.1:{w.port}" for w in workers),
                            engine=engine, model=str(args.model), timeout=120, env={"DX_SWARM_SECRET": str(secret)})
            try:
                request(head, "Hi", 1)
                swarm_speeds = speeds(head, args.runs)
                pids = [w.proc.pid for w in workers] + [head.proc.pid]

                def measure(n: int) -> tuple[int, int, float, int]:
                    time.sleep(1.2)  # the status files are written every 0.5 s
                    b0 = [w.status() for w in workers]
                    c0 = [cpu_seconds(p) for p in pids]
                    doc = request(head, "Once upon a time", n)
                    time.sleep(1.2)
                    b1 = [w.status() for w in workers]
                    c1 = [cpu_seconds(p) for p in pids]
                    sent = sum(b["tls_bytes_in"] - a["tls_bytes_in"] for a, b in zip(b0, b1, strict=True))
                    back = sum(b["tls_bytes_out"] - a["tls_bytes_out"] for a, b in zip(b0, b1, strict=True))
                    return sent, back, sum(c1) - sum(c0), int(doc["usage"]["completion_tokens"])

                s16, r16, c16, n16 = measure(16)
                s_long, r_long, c_long, n_long = measure(144)
                dn = max(1, n_long - n16)
                per_tok_sent, per_tok_back = (s_long - s16) / dn, (r_long - r16) / dn
                cpu_per_tok = (c_long - c16) / dn
            finally:
                head.stop()
            for w in workers:
                w.stop()
            # two more workers that keep no tensor cache
            nocache = [start_worker(tmp, f"nc{i}", engine, secret, "--no-cache", *threads) for i in (1, 2)]
            try:
                no_cache = first_load(tmp, engine, args.model, nocache, secret, "nocache")
            finally:
                for w in nocache:
                    w.stop()
        finally:
            for w in workers:
                w.stop()
        # single node once more: on a shared machine the load moves; two single-node figures bracket the swarm's
        single = start_dx(tmp / "single2", engine=engine, model=str(args.model), timeout=120)
        try:
            request(single, "Hi", 1)
            single_after = speeds(single, args.runs)
        finally:
            single.stop()
    load_after = os.getloadavg()
    (sp, sd), (wp, wd) = single_speeds, swarm_speeds
    print(f"model {args.model.name}, engine {engine.parent.parent.name}, runs {args.runs}, "
          f"worker threads {args.worker_threads or 'default'}")
    print(f"load average before {load_before[0]:.2f}/{load_before[1]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}"
          f", {os.cpu_count()} CPUs")
    sp2, sd2 = single_after
    bp, bd = max(sp, sp2), max(sd, sd2)
    print(f"{'':16}{'single (before)':>16}{'head + 2 workers':>18}{'single (after)':>16}{'ratio vs best single':>22}")
    print(f"{'prefill tok/s':16}{sp:16.1f}{wp:18.1f}{sp2:16.1f}{wp / bp if bp else 0:22.2f}")
    print(f"{'decode tok/s':16}{sd:16.1f}{wd:18.1f}{sd2:16.1f}{wd / bd if bd else 0:22.2f}")
    print(f"bytes per generated token: head->workers {per_tok_sent:,.0f}, workers->head {per_tok_back:,.0f} "
          "(TLS records included)")
    print(f"tunnel CPU per generated token (2 dx workers + head dx): {cpu_per_tok * 1000:.2f} ms")
    print(f"first load (1-token answer): no tensor cache {no_cache:.2f} s, empty cache {cold:.2f} s, "
          f"filled cache {warm:.2f} s")


if __name__ == "__main__":
    main()
