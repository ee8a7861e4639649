#!/usr/bin/env python3
"""Benchmark: what does going through `dx serve` cost, next to llama-server direct?

Runs `dx serve MODEL` (its own DX_HOME), then talks to the *same* engine process
two ways, interleaved run by run: direct (the engine's private port and key, read
from its command line) and through dx. Same model, same settings, same process:
the only difference is the dx hop. Prints numbers and ratios; asserts nothing.

    python tests/bench/bench_runtime.py [--model GGUF] [--engine llama-server] [--json out.json]

Without --model the SmolLM2 recipe model is used (dxbuild.models), without
--engine the runtime's own lookup (DX_ENGINE, the engine cache, PATH).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPT_SHORT = "Once upon a time"
PROMPT_LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 48)  # ~500 tokens


class Endpoint:
    def __init__(self, name: str, port: int, key: str) -> None:
        self.name, self.port, self.key = name, port, key

    def post(self, path: str, body: dict) -> tuple[float, float, bytes]:
        """(seconds to first body byte, seconds to the end, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {self.key}",
                                                      "Content-Type": "application/json"})
        resp = conn.getresponse()
        first = resp.read1(65536)
        t_first = time.perf_counter() - t0
        rest = resp.read()
        t_end = time.perf_counter() - t0
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"{self.name} {path}: HTTP {resp.status}: {(first + rest)[:300]!r}")
        return t_first, t_end, first + rest


def stream_tokens(ep: Endpoint, n: int) -> tuple[float, float, int]:
    """Stream n tokens: (time to first token, decode tokens/s after it, tokens)."""
    body = {"prompt": PROMPT_SHORT, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Authorization": f"Bearer {ep.key}",
                                                               "Content-Type": "application/json"})
    resp = conn.getresponse()
    t_first, tokens, buf = None, 0, b""
    while True:
        data = resp.read1(65536)
        if not data:
            break
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: {"):
                continue
            doc = json.loads(event[6:])
            if doc.get("choices") and doc["choices"][0].get("text"):
                tokens += 1
                if t_first is None:
                    t_first = time.perf_counter() - t0
    t_end = time.perf_counter() - t0
    conn.close()
    assert t_first is not None, "no token streamed"
    return t_first, (tokens - 1) / max(t_end - t_first, 1e-9), tokens


def prefill(ep: Endpoint) -> float:
    """Prompt tokens/s, measured by the client, prompt cache off."""
    _t1, t_end, raw = ep.post("/v1/completions", {"prompt": PROMPT_LONG, "max_tokens": 1, "temperature": 0,
                                                  "cache_prompt": False})
    n = json.loads(raw)["usage"]["prompt_tokens"]
    return n / t_end


def ttft(ep: Endpoint) -> float:
    t_first, _rate, _n = stream_tokens(ep, 1)
    return t_first


def aggregate(ep: Endpoint, clients: int, n: int) -> float:
    """Total streamed tokens/s with ``clients`` concurrent streams of n tokens."""
    counts = [0] * clients

    def one(i: int) -> None:
        counts[i] = stream_tokens(ep, n)[2]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (load-independent cost of what it did)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_child(dx_pid: int) -> tuple[int, int, str]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != dx_pid or "llama-server" not in stat:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        return int(entry), int(argv[argv.index("--port") + 1]), argv[argv.index("--api-key") + 1]
    raise SystemExit("dx started no engine")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ttft-runs", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from dxbuild.models import resolve

        model = resolve("smollm2").path
    home = Path(tempfile.mkdtemp(prefix="dx-bench-"))
    env = dict(os.environ, DX_HOME=str(home), PYTHONUNBUFFERED="1", OLLAMA_MODELS=str(home / "none"))
    if args.engine:
        env["DX_ENGINE"] = str(args.engine)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dx", "serve", str(model), "--port", "0", "--keep-alive", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = key = None
        while key is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit("dx serve exited")
            url = url or (re.search(r"on (http://\S+)", line) or [None, None])[1]
            key = (re.search(r"API key (\S+)", line) or [None, None])[1]
        t_listen = time.perf_counter() - t0
        dx_port = int(url.rsplit(":", 1)[1])  # type: ignore[union-attr]
        deadline = time.time() + 120
        while True:  # preloaded in the background; wait for it
            try:
                engine_pid, engine_port, engine_key = engine_child(proc.pid)
                c = http.client.HTTPConnection("127.0.0.1", engine_port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except (SystemExit, OSError):
                if time.time() > deadline:
                    raise
            time.sleep(0.1)
        direct = Endpoint("direct", engine_port, engine_key)
        via_dx = Endpoint("dx", dx_port, key)  # type: ignore[arg-type]
        time.sleep(1.0)
        idle_rss = rss_mb(proc.pid)
        engine_rss = rss_mb(engine_pid)
        for ep in (direct, via_dx):  # warm-up both paths
            stream_tokens(ep, 8)
            prefill(ep)

        res: dict[str, dict[str, list[float]]] = {"direct": {}, "dx": {}}
        for _ in range(args.runs):
            for ep in (direct, via_dx):
                _tf, rate, _n = stream_tokens(ep, args.tokens)
                res[ep.name].setdefault("decode", []).append(rate)
                res[ep.name].setdefault("prefill", []).append(prefill(ep))
        for _ in range(args.ttft_runs):
            for ep in (direct, via_dx):
                res[ep.name].setdefault("ttft", []).append(ttft(ep))
        cpu_dx0, cpu_engine0, relayed = cpu_seconds(proc.pid), cpu_seconds(engine_pid), 0
        for _ in range(args.runs):
            relayed += stream_tokens(via_dx, args.tokens)[2]
        dx_cpu_per_token = (cpu_seconds(proc.pid) - cpu_dx0) / relayed
        engine_cpu_per_token = (cpu_seconds(engine_pid) - cpu_engine0) / relayed
        for ep in (direct, via_dx):
            res[ep.name]["agg1"] = [aggregate(ep, 1, args.tokens)]
            res[ep.name]["agg4"] = [aggregate(ep, 4, args.tokens)]
        busy_rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)

    med = {side: {k: statistics.median(v) for k, v in d.items()} for side, d in res.items()}
    d, x = med["direct"], med["dx"]
    report = {
        "decode_tok_s": {"direct": d["decode"], "dx": x["decode"], "ratio": x["decode"] / d["decode"]},
        "prefill_tok_s": {"direct": d["prefill"], "dx": x["prefill"], "ratio": x["prefill"] / d["prefill"]},
        "ttft_ms_p50": {"direct": d["ttft"] * 1e3, "dx": x["ttft"] * 1e3, "overhead": (x["ttft"] - d["ttft"]) * 1e3},
        "aggregate_tok_s": {"dx_1_client": x["agg1"], "dx_4_clients": x["agg4"], "ratio_4_vs_1": x["agg4"] / x["agg1"],
                            "direct_1_client": d["agg1"], "direct_4_clients": d["agg4"],
                            "direct_ratio_4_vs_1": d["agg4"] / d["agg1"]},
        "dx_rss_mb": {"idle": idle_rss, "after_load": busy_rss, "engine": engine_rss},
        "dx_listen_s": t_listen,
        "cpu_us_per_streamed_token": {"dx": dx_cpu_per_token * 1e6, "engine": engine_cpu_per_token * 1e6},
        "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
        "runs": {"decode_prefill": args.runs, "ttft": args.ttft_runs, "tokens": args.tokens},
    }
    print(f"model: {model}")
    print(f"{'':28}{'direct':>12}{'via dx':>12}{'ratio':>10}   goal")
    print(f"{'decode tokens/s':28}{d['decode']:12.1f}{x['decode']:12.1f}{x['decode'] / d['decode']:10.3f}   >= 0.99")
    print(f"{'prefill tokens/s':28}{d['prefill']:12.1f}{x['prefill']:12.1f}{x['prefill'] / d['prefill']:10.3f}"
          "   >= 0.99")
    print(f"{'TTFT p50 ms':28}{d['ttft'] * 1e3:12.2f}{x['ttft'] * 1e3:12.2f}"
          f"{'+' + format((x['ttft'] - d['ttft']) * 1e3, '.2f') + 'ms':>10}   overhead <= 5 ms")
    print(f"{'1 client tokens/s':28}{d['agg1']:12.1f}{x['agg1']:12.1f}")
    print(f"{'4 clients tokens/s':28}{d['agg4']:12.1f}{x['agg4']:12.1f}")
    print(f"{'4 vs 1 clients':28}{d['agg4'] / d['agg1']:12.2f}{x['agg4'] / x['agg1']:12.2f}{'':10}   >= 2.5")
    print(f"dx process RSS: idle {idle_rss:.1f} MB, after the runs {busy_rss:.1f} MB (goal <= 40 MB idle); "
          f"engine RSS {engine_rss:.1f} MB")
    print(f"CPU per streamed token: dx {dx_cpu_per_token * 1e6:.0f} us, engine {engine_cpu_per_token * 1e6:.0f} us "
          f"(dx share {dx_cpu_per_token / (dx_cpu_per_token + engine_cpu_per_token):.1%})")
    print(f"dx serve: URL printed {t_listen * 1e3:.0f} ms after exec")
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end "
          "(other work on the host skews every figure above except RSS and CPU per token)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
