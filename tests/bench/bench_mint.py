#!/usr/bin/env python3
"""Benchmark: minting and running a DX executable, side by side with the plain tools.

    python tests/bench/bench_mint.py [--big-gb 1.1] [--runs 3] [--json out.json] [--keep DIR] [--mint-only]

Measures, in one run (prints numbers and ratios; asserts nothing):
  1. bare cpu runtime size, split into engine / Python runtime / Nuitka bootstrap
     (read from the onefile archive's own file table, dxbuild.bundle.payload);
  2. mint time with a cached tier for SmolLM2 and for a >= 1 GB GGUF (written
     here with the `gguf` package), next to `cp` + `sha256sum` of the same file;
  3. first start (fresh HOME: unpack + first SHA-256) and warm start of the
     minted executable to /health and to a first generated token, next to
     `llama-server` started directly on the same GGUF with the same flags;
  4. decode tokens/s through the minted executable vs llama-server direct.

The machine's load average is printed before and after (a shared machine's
numbers mean little without it). With --keep the big GGUF is written once and
reused by later runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ARCH = platform.machine()


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    res = sh(cmd, **kw)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return dt, res


def mint(out: Path, model: str | None) -> tuple[float, dict[str, float], Path]:
    cmd = [sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--no-bench", "-o", str(out)]
    if model:
        cmd += ["--model", model]
    dt, res = timed(cmd)
    steps = {m.group(1): float(m.group(2))
             for m in re.finditer(r"^\[\d+/\d+\] (.+?): done in ([0-9.]+)s$", res.stderr, re.M)}
    return dt, steps, Path(res.stdout.splitlines()[0])


def cp_sha(src: Path, dest_dir: Path) -> float:
    dest_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dest_dir / src.name)], check=True)
    subprocess.run(["sha256sum", str(dest_dir / src.name)], check=True, capture_output=True)
    return time.perf_counter() - t0


def make_big_gguf(path: Path, gb: float) -> None:
    """A valid GGUF with one large F32 tensor (random bytes so nothing is sparse or compressible)."""
    import numpy as np
    from gguf import GGUFWriter

    n = int(gb * 1e9) // 4
    w = GGUFWriter(str(path), "llama")
    w.add_name("bench-big")
    w.add_tensor("big.weight", np.frombuffer(os.urandom(n * 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------- serving
def http_get(port: int, path: str) -> int:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except OSError:
        return 0


def post(port: int, key: str | None, path: str, body: dict) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    c.request("POST", path, json.dumps(body), headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {r.status} {data[:200]!r}")
    return data


def first_token(port: int, key: str | None, model: str) -> None:
    post(port, key, "/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0})


def decode_rate(port: int, key: str | None, model: str, n: int = 128) -> float:
    """Stream n tokens; decode tokens/s between the first and the last token."""
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "stream": True}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    c.request("POST", "/v1/completions", json.dumps(body), headers)
    r = c.getresponse()
    stamps = []
    for line in r:
        if line.startswith(b"data: {"):
            stamps.append(time.perf_counter())
    c.close()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class Minted:
    """The minted executable started with no arguments; times to /health and to a first token."""

    def __init__(self, exe: Path, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DX_", "XDG_", "NUITKA_"))}
        env.update(HOME=str(home), TMPDIR=str(home), DX_PORT="0")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(exe)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, stdin=subprocess.DEVNULL)
        self.key = None
        port = 0
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if " on http://" in line:
                port = int(line.rsplit(":", 1)[1])
            if line.startswith("dx: API key "):
                self.key = line.split()[3]
                break
        if not port:
            raise SystemExit("minted executable did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        self.port = port
        while http_get(port, "/health") != 200:
            time.sleep(0.005)
        self.t_health = time.perf_counter() - t0
        first_token(port, self.key, "smollm2")
        self.t_ready = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Direct:
    """llama-server on the plain GGUF with the flags dx's supervisor gives a generation engine
    (dx.engine.process.Engine._start_once; the API key aside)."""

    def __init__(self, server: Path, gguf: Path, port: int) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", "4",
             "--cont-batching", "-c", "16384", "--alias", "smollm2", "--jinja"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = port
        self.key = None
        while http_get(port, "/health") != 200:
            if self.proc.poll() is not None:
                raise SystemExit("llama-server exited")
            time.sleep(0.005)
        self.t_health = time.perf_counter() - t0
        first_token(port, None, "smollm2")
        self.t_ready = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-gb", type=float, default=1.1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work here and keep the files (default: a temp dir)")
    ap.add_argument("--skip-mint-timing", action="store_true", help="leave out part 2 (mint vs cp+sha256sum)")
    ap.add_argument("--mint-only", action="store_true", help="stop after part 2 (no serving, no decode)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} ({os.cpu_count()} CPUs)", flush=True)

    from dxbuild.bundle.payload import read_payload
    from dxbuild.engine.build import host_engine
    from dxbuild.models import resolve
    from dxmatrix.recipes import get_tier
    from dxverify.trailer import read_trailer

    work = args.keep or Path(tempfile.mkdtemp(prefix="dx-bench-mint-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, object] = {"host": {"cpus": os.cpu_count(), "arch": ARCH}}
    engine = host_engine("cpu")
    smol = resolve("smollm2").path
    med = statistics.median

    print("warming caches (engine, bundle) with one mint ...", flush=True)
    warm_dt, _, _ = mint(work / "warm", "smollm2")
    print(f"  warm-up mint: {warm_dt:.1f}s")

    # 1. bare runtime size and split
    _, _, bare = mint(work / "bare", None)
    size = bare.stat().st_size
    payload = read_payload(bare)
    engine_b = sum(e.stored for e in payload.entries if e.name.startswith("engine/"))
    python_b = sum(e.stored for e in payload.entries if not e.name.startswith("engine/"))
    overhead = size - engine_b - python_b
    res["bare"] = {"file": bare.name, "size": size, "engine": engine_b, "python": python_b, "nuitka": overhead,
                   "engine_unpacked": sum(e.size for e in payload.entries if e.name.startswith("engine/")),
                   "python_unpacked": sum(e.size for e in payload.entries if not e.name.startswith("engine/"))}
    # The one size goal the product keeps: the tier's budget on the unpacked engine (recipes/tiers.toml).
    budget = get_tier("cpu").size_budget_mb
    print(f"\n1. bare cpu runtime {bare.name}: {size / 1e6:.2f} MB")
    print(f"   engine {engine_b / 1e6:.2f} MB | Python runtime {python_b / 1e6:.2f} MB | "
          f"Nuitka bootstrap + archive headers {overhead / 1e6:.2f} MB  (compressed, as stored)")
    print(f"   engine unpacked {res['bare']['engine_unpacked'] / 1e6:.2f} MB "
          f"(goal: the cpu tier's size_budget_mb, {budget} MB, recipes/tiers.toml)")

    # 2. mint time vs cp + sha256sum
    big = work / "big.gguf"
    if args.skip_mint_timing:
        pass
    elif not big.exists():
        print(f"\nwriting a {args.big_gb:.1f} GB GGUF with the gguf writer ...", flush=True)
        make_big_gguf(big, args.big_gb)
    rows = {}
    for label, model, path in (() if args.skip_mint_timing else
                               (("smollm2", "smollm2", smol), ("big", str(big), big))):
        mints, steps_all, cps = [], [], []
        for i in range(args.runs):
            dt, steps, exe = mint(work / f"m-{label}-{i}", model)
            mints.append(dt)
            steps_all.append(steps)
            shutil.rmtree(work / f"m-{label}-{i}")
            cps.append(cp_sha(path, work / f"cp-{label}-{i}"))
            shutil.rmtree(work / f"cp-{label}-{i}")
        step_med = {k: med(s.get(k, 0.0) for s in steps_all) for k in steps_all[0]}
        rows[label] = {"model_bytes": path.stat().st_size, "mint_s": mints, "cp_sha256sum_s": cps,
                       "ratio": med(mints) / med(cps), "steps_median_s": step_med}
    res["mint"] = rows
    print("\n2. mint with cached tier vs cp + sha256sum of the same model (median of "
          f"{args.runs}; goal ratio <= 1.3)")
    for label, r in rows.items():
        print(f"   {label:8s} {r['model_bytes'] / 1e9:5.2f} GB: mint {med(r['mint_s']):6.2f}s | cp+sha256sum "
              f"{med(r['cp_sha256sum_s']):6.2f}s | ratio {r['ratio']:.2f}")
        print("            steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["steps_median_s"].items()))
    if args.mint_only:
        _finish(args, res, work, load_before)
        return

    # 3. first / warm start vs llama-server direct; 4. decode tokens/s
    exe_src = work / "warm" / f"dx-smollm2-cpu-linux-{ARCH}"
    exe_dir = work / "run"
    exe_dir.mkdir(exist_ok=True)
    exe = exe_dir / exe_src.name
    shutil.copy2(exe_src, exe)
    assert read_trailer(exe).length == smol.stat().st_size
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    server = engine / "bin" / "llama-server"

    # Interleaved (direct, minted, direct, minted, ...) so load drift on a shared machine hits both alike.
    d = Direct(server, smol, free_port())
    d_first = (d.t_health, d.t_ready)
    d.stop()
    first = Minted(exe, home)
    first.stop()
    warm, d_warm = [], []
    for _ in range(args.runs):
        d = Direct(server, smol, free_port())
        d_warm.append((d.t_health, d.t_ready))
        d.stop()
        m = Minted(exe, home)
        warm.append((m.t_health, m.t_ready))
        m.stop()
    res["start"] = {"minted_first": [first.t_health, first.t_ready], "minted_warm": warm,
                    "direct_first": list(d_first), "direct_warm": d_warm}
    wh, wr = med(w[0] for w in warm), med(w[1] for w in warm)
    dh, dr = med(d[0] for d in d_warm), med(d[1] for d in d_warm)
    print("\n3. start (s): to /health | to first token (engine loaded, 1 token generated)")
    print(f"   minted first start (fresh HOME: unpack + SHA-256): {first.t_health:.3f} | {first.t_ready:.3f}")
    print(f"   minted warm start (median):                        {wh:.3f} | {wr:.3f}")
    print(f"   llama-server direct, first / warm (median):        {d_first[0]:.3f} | {d_first[1]:.3f}"
          f"  /  {dh:.3f} | {dr:.3f}")
    print(f"   first-token delta: first start {first.t_ready - d_first[1]:+.3f}s (goal <= +2 s), "
          f"warm {wr - dr:+.3f}s (goal <= +0.3 s)")

    m = Minted(exe, home)
    d = Direct(server, smol, free_port())
    rm, rd = [], []
    try:
        for _ in range(args.runs):  # interleaved so drift hits both alike
            rm.append(decode_rate(m.port, m.key, "smollm2"))
            rd.append(decode_rate(d.port, None, "smollm2"))
    finally:
        m.stop()
        d.stop()
    res["decode"] = {"minted_tps": rm, "direct_tps": rd, "ratio": med(rm) / med(rd)}
    print(f"\n4. decode tokens/s (128 tokens, streamed, median of {args.runs}): minted {med(rm):.1f} | "
          f"direct {med(rd):.1f} | ratio {med(rm) / med(rd):.3f} (goal >= 0.99)")

    _finish(args, res, work, load_before)


def _finish(args: argparse.Namespace, res: dict[str, object], work: Path, load_before: tuple[float, ...]) -> None:
    load_after = os.getloadavg()
    res["load_average"] = {"before": list(load_before), "after": list(load_after)}
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
