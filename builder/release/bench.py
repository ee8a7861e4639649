"""Benchmark a minted executable on this machine, optionally against its own engine run directly.

``dxbuild bench EXE`` starts the executable N times and measures, each as the
median of N runs:

- ``first_start_ready_s``: process start → ``/health`` answers 200, with a fresh
  onefile cache (``XDG_CACHE_HOME`` is Nuitka's ``{CACHE_DIR}``): the unpacking a
  user pays once;
- ``warm_start_ready_s``: the same with the cache already unpacked;
- ``start_to_first_token_s``: process start → first streamed token of a request
  sent as soon as the server is up (includes the model load, whatever the server
  does lazily);
- ``ttft_s``: that first request's own time to first token;
- ``prefill_tps`` / ``decode_tps``: from the engine's ``timings`` in an OpenAI
  ``/v1/chat/completions`` answer (prompt cache off, fixed length, EOS ignored);
- ``peak_rss_mb``: the largest resident set of the whole process tree (DX and
  its ``llama-server`` child), sampled from /proc every 20 ms.

With ``--vs-engine`` the same figures (except first start) are taken for
``llama-server`` run directly — the engine unpacked from the executable itself,
on the model embedded in it (``FILE#offset=N``), with the settings DX uses — in
the same session, and each DX figure gets a ratio to it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dxverify.errors import ConfigurationError, IntegrityError, ToolError

#: Figures where smaller is better (a regression is an increase).
LOWER_IS_BETTER = ("first_start_ready_s", "warm_start_ready_s", "start_to_first_token_s", "ttft_s", "peak_rss_mb")
HIGHER_IS_BETTER = ("prefill_tps", "decode_tps")
FIGURES = ("first_start_ready_s", "warm_start_ready_s", "start_to_first_token_s", "ttft_s",
           "prefill_tps", "decode_tps", "peak_rss_mb")
# A fixed prompt of a few hundred tokens, so prefill is measured on real work.
PROMPT = ("Summarise the following notes in one sentence. " + " ".join(
    f"Note {i}: the quick brown fox jumps over the lazy dog near river {i}." for i in range(1, 13)))
MAX_TOKENS = 64
Echo = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss_kb(root: int) -> int:
    """Resident set of ``root`` and every descendant, in KiB (Linux /proc)."""
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


class _RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb = pid, every, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self.pid))
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(2)
        return self.peak_kb


@dataclass
class Target:
    """One thing to start and measure: a command, its environment, its API key."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    api_key: str | None = None
    log: Path | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _headers(t: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.api_key}"} if t.api_key else {}


def _request(t: Target, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 300) -> http.client.HTTPResponse:
    """One request to ``t`` over the standard library (the bench ships with dxbuild, not with its tests)."""
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=timeout)
    headers = {**_headers(t), "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    return conn.getresponse()


def _json(t: Target, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = _request(t, method, path, body)
    raw = resp.read()
    resp.close()
    if resp.status != 200:
        raise ToolError(f"{t.name}: {method} {path} answered {resp.status}: {raw[:200]!r}")
    return json.loads(raw)


def _wait_health(t: Target, proc: subprocess.Popen[bytes], t0: float, timeout: float) -> float:
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(f"{t.name} exited with code {proc.returncode} before it was ready",
                            hint=f"see {t.log}" if t.log else None)
        try:
            resp = _request(t, "GET", "/health", timeout=2.0)
            resp.read()
            resp.close()
            if resp.status == 200:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.005)
    raise ToolError(f"{t.name} was not ready within {timeout:.0f}s", hint=f"see {t.log}" if t.log else None)


def _model_name(t: Target) -> str:
    data = _json(t, "GET", "/v1/models").get("data") or []
    if not data:
        raise ToolError(f"{t.name} lists no model at /v1/models")
    return str(data[0]["id"])


def _body(model: str, stream: bool, extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "seed": 1, "stream": stream, "cache_prompt": False, "ignore_eos": True, **extra}


def _first_token(t: Target, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content token."""
    t0 = time.monotonic()
    resp = _request(t, "POST", "/v1/chat/completions", _body(model, True, t.extra_body))
    try:
        if resp.status != 200:
            raise ToolError(f"{t.name}: streamed request answered {resp.status}: {resp.read()[:200]!r}")
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for ch in chunk.get("choices", []):
                if (ch.get("delta") or {}).get("content"):
                    return time.monotonic() - t0
    finally:
        resp.close()
    raise ToolError(f"{t.name}: the streamed answer carried no token")


def _timings(t: Target, model: str) -> tuple[float, float]:
    timings = _json(t, "POST", "/v1/chat/completions", _body(model, False, t.extra_body)).get("timings") or {}
    prefill, decode = timings.get("prompt_per_second"), timings.get("predicted_per_second")
    if not prefill or not decode:
        raise ToolError(f"{t.name}: the answer carries no engine timings (prompt_per_second/predicted_per_second)")
    return float(prefill), float(decode)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def run_once(t: Target, *, full: bool = True, timeout: float = 300) -> dict[str, float]:
    """Start ``t`` once; readiness always, and with ``full`` the token and memory figures."""
    logf = open(t.log, "ab") if t.log else subprocess.DEVNULL  # noqa: SIM115 — closed below
    t0 = time.monotonic()
    proc = subprocess.Popen(t.argv, env=t.env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    sampler = _RssSampler(proc.pid)
    sampler.start()
    try:
        out = {"ready_s": _wait_health(t, proc, t0, timeout)}
        if full:
            model = _model_name(t)
            out["ttft_s"] = _first_token(t, model)
            out["start_to_first_token_s"] = out["ready_s"] + out["ttft_s"]  # the /v1/models query excluded
            out["prefill_tps"], out["decode_tps"] = _timings(t, model)
    finally:
        peak = sampler.stop()
        _stop(proc)
        if logf is not subprocess.DEVNULL:
            logf.close()
    if full:
        out["peak_rss_mb"] = peak / 1024
    return out


def _median(runs: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return round(statistics.median(vals), 4) if vals else None


def dx_target(exe: Path, cache: Path, home: Path, log: Path) -> Target:
    port = _free_port()
    env = dict(os.environ)
    env.update({"XDG_CACHE_HOME": str(cache), "DX_HOME": str(home), "HOME": str(home)})
    for k in ("DX_ENGINE", "DX_HOST", "DX_PORT"):
        env.pop(k, None)
    return Target("dx", [str(exe), "serve", "--no-auth", "--host", "127.0.0.1", "--port", str(port)],
                  env, port, log=log)


def engine_target(server: Path, model_arg: str, log: Path, ctx: int = 4096, parallel: int = 4) -> Target:
    """``llama-server`` with the settings the DX supervisor uses (see dx.engine.manager)."""
    port = _free_port()
    argv = [str(server), "-m", model_arg, "--host", "127.0.0.1", "--port", str(port), "--parallel",
            str(parallel), "--cont-batching", "-c", str(ctx * parallel), "--jinja"]
    env = dict(os.environ)
    env.pop("LLAMA_API_KEY", None)
    return Target("llama-server", argv, env, port, log=log)


def _unpacked_engine(cache: Path) -> Path | None:
    found = sorted(cache.glob("**/engine/bin/llama-server"))
    return found[0] if found else None


def bench_executable(
    exe: Path,
    *,
    runs: int = 3,
    vs_engine: bool = False,
    engine: Path | None = None,
    model_arg: str | None = None,
    workdir: Path | None = None,
    echo: Echo | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the report document (see module doc)."""
    exe = Path(exe).resolve()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise ConfigurationError(f"{exe} is not an executable file")
    if runs < 1:
        raise ConfigurationError("--runs must be at least 1")
    say = echo or (lambda s: None)
    work = Path(tempfile.mkdtemp(prefix="dx-bench-", dir=workdir))
    try:
        home = work / "home"
        home.mkdir()
        log = work / "bench.log"
        first, warm = [], []
        warm_cache = work / "cache-warm"
        for i in range(runs):
            fresh = work / f"cache-first-{i}"
            say(f"dx first start {i + 1}/{runs} (fresh onefile cache)")
            first.append(run_once(dx_target(exe, fresh, home, log), full=False))
            if i == 0:
                fresh.rename(warm_cache)
            else:
                shutil.rmtree(fresh, ignore_errors=True)
        for i in range(runs):
            say(f"dx warm start {i + 1}/{runs}")
            warm.append(run_once(dx_target(exe, warm_cache, home, log)))
        dx = {
            "first_start_ready_s": _median(first, "ready_s"),
            "warm_start_ready_s": _median(warm, "ready_s"),
            **{k: _median(warm, k) for k in ("start_to_first_token_s", "ttft_s", "prefill_tps", "decode_tps",
                                               "peak_rss_mb")},
        }
        doc: dict[str, Any] = {"report": "bench", "format": 1, "file": exe.name, "runs": runs,
                               "machine": _machine(), "dx": dx, "dx_runs": {"first": first, "warm": warm},
                               "prompt_chars": len(PROMPT), "max_tokens": MAX_TOKENS}
        from dxverify.trailer import find_trailer

        em = find_trailer(exe)
        if em is not None:
            doc["model"] = em.metadata.get("model")
            doc["tier"] = em.metadata.get("tier")
        if vs_engine:
            server = engine or _unpacked_engine(warm_cache)
            if server is None:
                raise ToolError(f"no llama-server found inside {exe}'s unpacked files", hint="pass --engine PATH")
            if model_arg is None:
                if em is None:
                    raise ConfigurationError(f"{exe} carries no embedded model", hint="pass --model PATH")
                model_arg = f"{exe}#offset={em.offset}"
            eng = []
            for i in range(runs):
                say(f"llama-server direct {i + 1}/{runs}")
                eng.append(run_once(engine_target(Path(server), model_arg, log)))
            direct = {"warm_start_ready_s": _median(eng, "ready_s"),
                      **{k: _median(eng, k) for k in ("start_to_first_token_s", "ttft_s", "prefill_tps",
                                                        "decode_tps", "peak_rss_mb")}}
            doc["engine"] = direct
            doc["engine_runs"] = eng
            doc["engine_command"] = " ".join(engine_target(Path(server), model_arg, log).argv[:3])
            # "ready" differs in meaning: dx answers /health once its server listens (the model
            # loads behind it), llama-server only after loading the model. No ratio for it;
            # start → first token is the comparable figure.
            doc["ratio"] = {k: round(dx[k] / direct[k], 3) for k in direct
                            if k != "warm_start_ready_s" and dx.get(k) and direct.get(k)}
        return doc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _machine() -> dict[str, Any]:
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "arch": platform.machine()}


def compare_to_baseline(doc: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> list[str]:
    """Regressions beyond ``tolerance`` (0.1 = 10 %), one line each naming the figure."""
    out = []
    base = baseline.get("dx", {})
    for key in FIGURES:
        now, before = doc["dx"].get(key), base.get(key)
        if not now or not before:
            continue
        if key in LOWER_IS_BETTER and now > before * (1 + tolerance):
            out.append(f"{key} {now:g} is {100 * (now / before - 1):.0f}% worse than the baseline {before:g}")
        if key in HIGHER_IS_BETTER and now < before * (1 - tolerance):
            out.append(f"{key} {now:g} is {100 * (1 - now / before):.0f}% worse than the baseline {before:g}")
    return out


def bench_and_report(exe: Path, out_dir: Path, *, runs: int = 3, vs_engine: bool = False,
                     engine: Path | None = None, model_arg: str | None = None, baseline: Path | None = None,
                     tolerance: float = 0.1, echo: Echo | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Bench, write bench-report.{json,md,svg}, then fail if a figure regressed past the baseline."""
    from dxbuild.release.reports import load_report, write_report

    base = load_report(baseline, "bench") if baseline else None
    doc = bench_executable(exe, runs=runs, vs_engine=vs_engine, engine=engine, model_arg=model_arg, echo=echo)
    doc["labels"] = {
        "first_start_ready_s": "first start → ready (s, fresh unpack)",
        "warm_start_ready_s": "warm start → ready (s)",
        "start_to_first_token_s": "start → first token (s)",
        "ttft_s": "time to first token (s)",
        "prefill_tps": "prefill (tokens/s)",
        "decode_tps": "decode (tokens/s)",
        "peak_rss_mb": "peak RSS, process tree (MB)",
    }
    doc["figures"] = list(FIGURES)
    regressions = compare_to_baseline(doc, base, tolerance) if base else []
    doc["baseline"] = {"tolerance": tolerance, "regressions": regressions} if base else None
    paths = write_report(out_dir, "bench-report", doc)
    if regressions:
        raise IntegrityError(f"{exe.name}: benchmark regressed beyond {tolerance:.0%}: " + "; ".join(regressions),
                             hint=f"see {paths[1]}")
    return doc, paths

