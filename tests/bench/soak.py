#!/usr/bin/env python3
"""Soak and chaos: `dx serve` under mixed load with faults on a schedule, then the invariants.

Two models on one server: SmolLM2-135M imported as ``soak-a`` and, as the second model,
the same bytes created as ``soak-b`` with ``num_ctx 1024, temperature 0.6`` (another engine: a different slot
key; gemma3-270m is not cached here, its PyPI package only downloads on first use). Each
engine has 2 slots (``--parallel 2``) and ``--concurrency`` clients (default 6) share them.

Clients (random mix): /api/chat and /api/generate (streamed and not), /v1/chat/completions
(streamed and not), /api/embed, /api/ps, /api/tags, /metrics; some requests are abandoned
mid-answer (streamed: after the first chunk; non-streamed: after 0.5 s) and the engine's
own /slots must show that request's slot free within 1 s.

Faults, round robin on a schedule: SIGKILL of an engine; ``keep_alive: 0`` unloads during
answers; ``/api/delete`` of a model and ``/api/create`` of it again; a blob upload cut off
mid-body; an upload and a model create/delete that succeed; ``dx pull`` SIGKILLed mid-blob
and run again (resumed) from a loopback Ollama-registry stand-in; the store's disk filled
during an upload and during a pull. DX_HOME is a small tmpfs mount when this runs as root
(the disk is filled with a file); otherwise RLIMIT_FSIZE is set on the dx process for the
fault's duration (writes then fail with EFBIG, not ENOSPC).

After the load: engine processes vs loaded models, dx stopped (SIGTERM) with no engine
left, the store checked (`dx verify` of every blob, nothing in tmp/ or downloads/, every
manifest's blobs present, no blob without a manifest), then dx started again, a model
loaded, dx SIGKILLed, and no engine left.

    python tests/bench/soak.py --minutes 10 [--exe PATH] [--concurrency 6] [--json out.json]

``--exe`` runs that dx (a minted executable or `dx`), default ``python -m dx``. Exit 0 when
every invariant holds, 1 otherwise; prints one table. ``run_soak()`` is what the test calls.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.gguf_handcraft import Tensor, tiny_model  # noqa: E402
from support.ollama_registry_server import FakeRegistry  # noqa: E402
from support.serve_harness import DXServer, dx_env, start_dx  # noqa: E402

PARALLEL = 2
# soak-b: a second engine with its own context (num_ctx is part of the engine key) and sampling default.
SECOND = {"num_ctx": 1024, "temperature": 0.6}
MODELS = ("soak-a", "soak-b")
TMPFS_MB = 180  # SmolLM2 (94 MiB) + a pulled and an uploaded blob (8 MiB each) + headroom


# ----------------------------------------------------------------------------- processes
def _procs() -> list[tuple[int, int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                comm = stat[stat.index("(") + 1: stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] != "Z":
                    out.append((int(entry), int(fields[1]), comm))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def engines_of(home: Path) -> list[int]:
    """llama-server processes serving a model of this DX_HOME (any parent: orphans too)."""
    tag = str(home)
    return [pid for pid, _pp, comm in _procs() if comm == "llama-server" and any(tag in a for a in _cmdline(pid))]


def describe_engine(pid: int) -> str:
    """alias, and '+embed' for an embedding engine (its own process, one /api/ps entry with the model's)."""
    argv = _cmdline(pid)
    alias = argv[argv.index("--alias") + 1] if "--alias" in argv else "?"
    return alias + ("+embed" if "--embeddings" in argv else "")


def proc_numbers(pid: int) -> dict[str, float]:
    rss = anon = threads = -1.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("RssAnon:"):  # the heap: what a leak grows (RSS also counts mapped blob pages)
                anon = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = float(line.split()[1])
    try:
        fds = float(len(os.listdir(f"/proc/{pid}/fd")))
    except OSError:
        fds = -1.0
    return {"rss_mib": rss, "anon_mib": anon, "threads": threads, "fds": fds}


def engine_slots(pid: int) -> list[dict[str, Any]] | None:
    """The engine's own /slots (its port and key from its command line)."""
    argv = _cmdline(pid)
    try:
        port, key = argv[argv.index("--port") + 1], argv[argv.index("--api-key") + 1]
    except (ValueError, IndexError):
        return None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
        conn.request("GET", "/slots", headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return json.loads(body) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- dx
def serve(exe: list[str], work: Path, engine: Path, extra_env: dict[str, str]) -> DXServer:
    """``dx serve soak-a`` on DX_HOME ``work/home`` (the harness's one way to start a server), stdout drained."""
    dx = start_dx(work, "--parallel", str(PARALLEL), "--max-loaded", "4", "--max-requests", "64",
                  engine=engine, model="soak-a", timeout=120, env=extra_env, exe=exe)
    threading.Thread(target=lambda: [None for _ in dx.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return dx


def call(dx: DXServer, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {dx.api_key}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------- load
@dataclass
class Record:
    kind: str
    model: str
    status: int | str
    seconds: float
    retry_after: bool = False
    stream_error: str = ""
    abandoned: bool = False
    t: float = 0.0  # when it ended, seconds into the run


@dataclass
class Disconnect:
    """One client that hung up mid-answer, and how long its engine slot stayed busy after."""

    kind: str
    marker: int
    t: float
    path: str = ""
    stream: bool = False
    model: str = ""
    phase: str = ""  # at the hang-up: streaming (a chunk read), decoding, prefill, waiting (in no slot yet)
    freed_s: float | None = None  # seconds until no engine slot held the request; None: never (within 10 s)
    seen_held: bool = False  # a /slots poll after the hang-up still showed it processing
    slowest_poll_s: float = 0.0  # the longest /slots round trip of the check (what the measure may be off by)

    def row(self, faults: list[dict[str, Any]]) -> dict[str, Any]:
        during = sorted({f["fault"] for f in faults if f["t0"] - 1 <= self.t + (self.freed_s or 10) and f["t"] >= self.t - 2})
        return {"route": self.path, "stream": self.stream, "model": self.model, "phase": self.phase,
                "freed_s": None if self.freed_s is None else round(self.freed_s, 2), "t": round(self.t, 1),
                "seen_held": self.seen_held, "slowest_poll_s": round(self.slowest_poll_s, 2), "faults": during}


@dataclass
class Soak:
    dx: DXServer
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[Record] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    marker: int = 700
    t0: float = field(default_factory=time.monotonic)

    def add(self, rec: Record) -> None:
        rec.t = time.monotonic() - self.t0
        with self.lock:
            self.records.append(rec)

    def next_marker(self) -> int:
        with self.lock:
            self.marker += 1
            return self.marker


PROMPTS = ["Name a fruit.", "Say hello.", "Count to five.", "What is 2+2?", "One word: sky colour?"]


def _request_for(kind: str, model: str, n: int, stream: bool) -> tuple[str, dict[str, Any]]:
    msg = [{"role": "user", "content": random.choice(PROMPTS)}]
    if kind == "api_chat":
        return "/api/chat", {"model": model, "messages": msg, "stream": stream, "options": {"num_predict": n}}
    if kind == "api_generate":
        return "/api/generate", {"model": model, "prompt": msg[0]["content"], "stream": stream,
                                 "options": {"num_predict": n}}
    if kind == "v1_chat":
        return "/v1/chat/completions", {"model": model, "messages": msg, "stream": stream, "max_tokens": n}
    raise ValueError(kind)


def one_request(soak: Soak, kind: str, model: str, stream: bool, abandon: bool) -> None:
    dx = soak.dx
    marker = soak.next_marker() if abandon else 0
    n = marker * 2 if abandon else random.randint(4, 24)  # an abandoned request's n_predict names it in /slots
    if kind in ("api_chat", "api_generate", "v1_chat"):
        path, body = _request_for(kind, model, n, stream)
        method = "POST"
    elif kind == "api_embed":
        path, body, method = "/api/embed", {"model": model, "input": [random.choice(PROMPTS)]}, "POST"
    else:
        path, body, method = {"api_ps": "/api/ps", "api_tags": "/api/tags", "metrics": "/metrics"}[kind], None, "GET"
    label = f"{kind}{'_stream' if stream else ''}"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=180)
    try:
        headers = {"Authorization": f"Bearer {dx.api_key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        if abandon and not stream:
            time.sleep(0.5)
            phase = slot_phase(soak, n)
            _abort(conn)
            soak.add(Record(label, model, "abandoned", time.monotonic() - started, abandoned=True))
            check_freed(soak, Disconnect(label, n, time.monotonic() - soak.t0, path, stream, model, phase))
            return
        resp = conn.getresponse()
        status = resp.status
        retry = resp.getheader("Retry-After") is not None
        if abandon and status == 200:
            resp.read1(64) if hasattr(resp, "read1") else resp.read(64)
            _abort(conn)
            soak.add(Record(label, model, "abandoned", time.monotonic() - started, abandoned=True))
            check_freed(soak, Disconnect(label, n, time.monotonic() - soak.t0, path, stream, model, "streaming"))
            return
        raw = resp.read()
        err = ""
        if status == 200 and stream:
            err = _stream_error(kind, raw)
        soak.add(Record(label, model, status, time.monotonic() - started, retry_after=retry, stream_error=err))
    except (OSError, http.client.HTTPException) as exc:
        soak.add(Record(label, model, type(exc).__name__, time.monotonic() - started))
    finally:
        conn.close()


def _abort(conn: http.client.HTTPConnection) -> None:
    """Close with RST, as a client killed mid-answer would."""
    if conn.sock is not None:
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def _stream_error(kind: str, raw: bytes) -> str:
    text = raw.decode(errors="replace")
    if kind == "v1_chat":
        for line in text.splitlines():
            if line.startswith("data: ") and '"error"' in line:
                return line[6:200]
        return "" if "data: [DONE]" in text else "no [DONE]"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        with contextlib.suppress(ValueError):
            if "error" in json.loads(ln):
                return json.loads(ln)["error"][:200]
    if not lines or '"done":true' not in lines[-1].replace(" ", ""):
        return "no done line"
    return ""


def _slot_of(soak: Soak, marker: int) -> dict[str, Any] | None:
    """The engine slot processing the request whose n_predict is ``marker``, if any (every engine's /slots)."""
    for pid in engines_of(soak.dx.home):
        for slot in engine_slots(pid) or []:
            params = slot.get("params") or {}
            if slot.get("is_processing") and params.get("n_predict") == marker:
                return slot
    return None


def slot_phase(soak: Soak, marker: int) -> str:
    """Where a request is now: decoding, prefill (in a slot, no token yet) or waiting (in no slot)."""
    slot = _slot_of(soak, marker)
    if slot is None:
        return "waiting"
    return "decoding" if (slot.get("next_token") or [{}])[0].get("n_decoded", 0) > 0 else "prefill"


WATCH_S = 2.0  # a request still queued at the hang-up may take a slot a moment later: watched this long at least


def check_freed(soak: Soak, d: Disconnect) -> None:
    """Poll every engine's /slots until none is processing the request whose n_predict is d.marker, and
    none has for WATCH_S since the hang-up (one that was waiting for a slot must not start decoding)."""
    start = time.monotonic()
    free_since: float | None = None
    while time.monotonic() - start < 10:
        sent = time.monotonic()
        held = _slot_of(soak, d.marker) is not None
        now = time.monotonic()
        d.slowest_poll_s = max(d.slowest_poll_s, now - sent)
        if held:
            d.seen_held, free_since = True, None
        else:
            free_since = now if free_since is None else free_since
            if now - start >= WATCH_S:
                d.freed_s = free_since - start
                break
        time.sleep(0.05)
    with soak.lock:
        soak.disconnects.append(d)


KINDS = [("api_chat", 3), ("api_generate", 3), ("v1_chat", 3), ("api_embed", 1), ("api_ps", 1), ("api_tags", 1),
         ("metrics", 1)]


def client_loop(soak: Soak, seed: int) -> None:
    rnd = random.Random(seed)
    names, weights = zip(*KINDS, strict=True)
    while not soak.stop.is_set():
        kind = rnd.choices(names, weights)[0]
        model = rnd.choice(MODELS)
        gen = kind in ("api_chat", "api_generate", "v1_chat")
        stream = gen and rnd.random() < 0.5
        abandon = gen and rnd.random() < 0.12
        one_request(soak, kind, model, stream, abandon)


def sampler(soak: Soak) -> None:
    while not soak.stop.wait(5):
        soak.samples.append((time.monotonic() - soak.t0, proc_numbers(soak.dx.proc.pid)))


# ----------------------------------------------------------------------------- faults
class Disk:
    """Fill the store's filesystem (tmpfs) or cap dx's file size (RLIMIT_FSIZE)."""

    def __init__(self, home: Path, tmpfs: bool, pid_fn: Any) -> None:
        self.home, self.tmpfs, self.pid_fn = home, tmpfs, pid_fn
        self.filler = home / ".soak-filler"

    def fill(self, leave: int) -> None:
        if self.tmpfs:
            st = os.statvfs(self.home)
            free = st.f_bavail * st.f_frsize
            with open(self.filler, "wb") as f:
                remaining = max(free - leave, 0)
                chunk = b"\0" * (1 << 20)
                with contextlib.suppress(OSError):
                    while remaining > 0:
                        remaining -= f.write(chunk[: min(len(chunk), remaining)])
        else:
            resource.prlimit(self.pid_fn(), resource.RLIMIT_FSIZE, (leave, leave))

    def free(self) -> None:
        if self.tmpfs:
            with contextlib.suppress(FileNotFoundError):
                self.filler.unlink()
        else:
            inf = resource.RLIM_INFINITY
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(self.pid_fn(), resource.RLIMIT_FSIZE, (inf, inf))


def crafted_gguf(name: str, mib: int = 8) -> bytes:
    g = tiny_model()
    g.kvs = [(k, t, name if k == "general.name" else v) for k, t, v in g.kvs]
    g.tensors.append(Tensor("blk.0.ffn_up.weight", [1024, mib * 256], 0))
    return g.build().data


def upload(dx: DXServer, data: bytes, send: int | None = None, on_half: Any = None) -> int | str:
    """POST /api/blobs/sha256:…; ``send``: bytes sent before the connection is cut."""
    hexd = hashlib.sha256(data).hexdigest()
    sock = socket.create_connection(("127.0.0.1", dx.port), timeout=60)
    head = (f"POST /api/blobs/sha256:{hexd} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {dx.api_key}\r\n"
            f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    try:
        sock.sendall(head)
        half = len(data) // 2
        sock.sendall(data[:half] if send is None else data[:send])
        if send is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return "cut"
        if on_half:
            on_half()
        with contextlib.suppress(OSError):  # the server may answer (507) and close before the rest
            sock.sendall(data[half:])
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        sock.close()


class Faults:
    def __init__(self, soak: Soak, registry: FakeRegistry, disk: Disk, exe: list[str], engine: Path, work: Path) -> None:
        self.soak, self.registry, self.disk, self.exe, self.engine, self.work = soak, registry, disk, exe, engine, work
        self.n = 0
        self.started = 0.0  # when the fault now running began, seconds into the run

    def record(self, name: str, ok: bool, what: str) -> None:
        with self.soak.lock:
            self.soak.faults.append({"fault": name, "ok": ok, "what": what, "t0": round(self.started, 1),
                                     "t": round(time.monotonic() - self.soak.t0, 1)})

    def next_blob(self, tag: str) -> bytes:
        self.n += 1
        return crafted_gguf(f"soak-{tag}-{self.n}")

    # each returns after the fault and its recovery
    def engine_kill(self) -> None:
        pids = [p for p, pp, c in _procs() if pp == self.soak.dx.proc.pid and c == "llama-server"]
        if not pids:
            self.record("engine SIGKILL", True, "no engine loaded")
            return
        pid = random.choice(pids)
        os.kill(pid, signal.SIGKILL)
        self.record("engine SIGKILL", True, f"killed {pid}")

    def unload(self) -> None:
        model = random.choice(MODELS)
        st, _h, body = call(self.soak.dx, "POST", "/api/generate", {"model": model, "keep_alive": 0})
        self.record("keep_alive=0 unload", st == 200, f"{model}: {st} {body[:80]!r}")

    def delete_recreate(self) -> None:
        dx = self.soak.dx
        st1, _h, b1 = call(dx, "DELETE", "/api/delete", {"model": "soak-b"})
        st2, _h, b2 = call(dx, "POST", "/api/create", {"model": "soak-b", "from": "soak-a",
                                                        "parameters": SECOND, "stream": False})
        self.record("delete + create", st1 == 200 and st2 == 200, f"delete {st1} {b1[:60]!r}; create {st2} {b2[:60]!r}")

    def upload_cut(self) -> None:
        data = self.next_blob("cut")
        upload(self.soak.dx, data, send=len(data) // 3)
        time.sleep(1)
        st, _h, _b = call(self.soak.dx, "HEAD", f"/api/blobs/sha256:{hashlib.sha256(data).hexdigest()}")
        partial = list((self.soak.dx.home / "models" / "tmp").glob("*"))
        self.record("upload cut mid-body", st == 404 and not partial, f"HEAD {st}; tmp/ {[p.name for p in partial]}")

    def upload_create_delete(self) -> None:
        dx = self.soak.dx
        data = self.next_blob("up")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        st = upload(dx, data)
        st2, _h, b2 = call(dx, "POST", "/api/create", {"model": "soak-up", "files": {"up.gguf": digest},
                                                       "stream": False})
        st3, _h, _b3 = call(dx, "DELETE", "/api/delete", {"model": "soak-up"})
        self.record("upload + create + delete", st == 201 and st2 == 200 and st3 == 200,
                    f"upload {st}; create {st2} {b2[:60]!r}; delete {st3}")

    def pull_kill_resume(self) -> None:
        data = self.next_blob("pull")
        self.registry.add_model("library/soakpull", "latest", data)
        env = {**dx_env(self.soak.dx.home, self.engine), "DX_OLLAMA_REGISTRY": self.registry.url}
        p = subprocess.Popen([*self.exe, "pull", "soakpull"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=env)
        time.sleep(2.0)
        killed = p.poll() is None
        p.kill()
        p.wait()
        r = subprocess.run([*self.exe, "pull", "soakpull"], capture_output=True, text=True, env=env, timeout=300)
        ranges = [x for x in self.registry.cdn_ranges(hashlib.sha256(data).hexdigest()) if x]
        st, _h, _b = call(self.soak.dx, "DELETE", "/api/delete", {"model": "soakpull"})
        self.record("pull SIGKILL + resume", killed and r.returncode == 0 and st == 200,
                    f"killed mid-pull {killed}; rerun rc {r.returncode} (Range {ranges[:1]}) {r.stderr[-120:]!r}; "
                    f"delete {st}")

    def disk_full_upload(self) -> None:
        data = self.next_blob("full")
        st = upload(self.soak.dx, data, on_half=lambda: self.disk.fill(1 << 20))
        self.disk.free()
        partial = list((self.soak.dx.home / "models" / "tmp").glob("*"))
        h, _h, _b = call(self.soak.dx, "HEAD", f"/api/blobs/sha256:{hashlib.sha256(data).hexdigest()}")
        self.record("disk full during upload", st == 507 and h == 404 and not partial,
                    f"upload {st}; HEAD {h}; tmp/ {[p.name for p in partial]}")

    def disk_full_pull(self) -> None:
        dx = self.soak.dx
        data = self.next_blob("fullpull")
        self.registry.add_model("library/soakfull", "latest", data)
        timer = threading.Timer(1.5, lambda: self.disk.fill(1 << 20))
        timer.start()
        try:
            st, _h, body = call(dx, "POST", "/api/pull", {"model": "soakfull", "stream": True})
        finally:
            timer.join()
            self.disk.free()
        last = body.decode(errors="replace").strip().splitlines()[-1:] or [""]
        st2, _h, body2 = call(dx, "POST", "/api/pull", {"model": "soakfull", "stream": False})
        st3, _h, _b = call(dx, "DELETE", "/api/delete", {"model": "soakfull"})
        self.record("disk full during pull", "disk filled up" in last[0] and st2 == 200 and st3 == 200,
                    f"pull {st} last line {last[0][:100]!r}; pull again {st2} {body2[:60]!r}; delete {st3}")

    def loop(self, interval: float) -> None:
        order = [self.engine_kill, self.unload, self.delete_recreate, self.upload_cut, self.upload_create_delete,
                 self.pull_kill_resume, self.disk_full_upload, self.disk_full_pull]
        i = 0
        while not self.soak.stop.wait(interval):
            fault = order[i % len(order)]
            i += 1
            self.started = time.monotonic() - self.soak.t0
            try:
                fault()
            except Exception as exc:  # a fault's own harness error is a failed fault, not a crash of the run
                self.record(fault.__name__, False, f"{type(exc).__name__}: {exc}"[:200])


# ----------------------------------------------------------------------------- store check
def store_check(exe: list[str], home: Path, engine: Path) -> dict[str, Any]:
    models = home / "models"
    blobs = {p.name: p for p in (models / "blobs").glob("*")} if (models / "blobs").is_dir() else {}
    bad_verify = []
    for name, p in blobs.items():
        r = subprocess.run([*exe, "verify", str(p)], capture_output=True, text=True, env=dx_env(home, engine))
        if r.returncode != 0:
            bad_verify.append(f"{name}: rc {r.returncode} {r.stdout[-100:]}{r.stderr[-100:]}")
    files = [p for d in ("tmp", "downloads") if (models / d).is_dir() for p in (models / d).rglob("*") if p.is_file()]
    leftovers = [str(p.relative_to(models)) for p in files]  # partials, state and lock files of pulls
    referenced: set[str] = set()
    broken = []
    for m in (models / "manifests").glob("*.json") if (models / "manifests").is_dir() else []:
        try:
            doc = json.loads(m.read_text())
        except ValueError:
            broken.append(f"{m.name}: not JSON")
            continue
        names = set(re.findall(r"sha256[-:]([0-9a-f]{64})", json.dumps(doc)))
        if "in_file" in doc:
            continue
        for hexd in names:
            if f"sha256-{hexd}" in blobs:
                referenced.add(f"sha256-{hexd}")
        if not any(f"sha256-{h}" in blobs for h in names):
            broken.append(f"{m.name}: names no blob present")
    orphans = sorted(set(blobs) - referenced)
    return {"blobs": len(blobs), "manifests": len(list((models / "manifests").glob("*.json"))),
            "verify_failed": bad_verify, "leftovers": leftovers, "orphans": orphans, "broken_manifests": broken}


# ----------------------------------------------------------------------------- run
def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def slope(samples: list[tuple[float, dict[str, float]]], key: str) -> float:
    """Least-squares slope per minute over the second half of the run (after warm-up)."""
    pts = [(t / 60, s[key]) for t, s in samples[len(samples) // 2:]]
    if len(pts) < 3:
        return float("nan")
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else float("nan")


def mount_tmpfs(home: Path) -> bool:
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(home)],
                       capture_output=True)
    return r.returncode == 0


def run_soak(minutes: float, engine: Path, gguf: Path, exe: list[str] | None = None, concurrency: int = 6,
             work: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The whole run; returns the table's numbers and ``failures`` (each broken invariant, one line)."""
    from dx.models.catalog import Store

    random.seed(seed)
    exe = exe or [sys.executable, "-m", "dx"]
    work = Path(work or tempfile.mkdtemp(prefix="dx-soak-"))
    home = work / "home"
    tmpfs = mount_tmpfs(home)
    registry = FakeRegistry(delay=0.4).start()
    log = work / "dx-serve.stderr"
    result: dict[str, Any] = {"disk": f"tmpfs {TMPFS_MB} MiB" if tmpfs else "RLIMIT_FSIZE on dx", "work": str(work)}
    try:
        Store(root=home, ollama_dir=False).import_file(gguf, "soak-a")
        dx = serve(exe, work, engine, {"DX_OLLAMA_REGISTRY": registry.url})
        st, _h, b = call(dx, "POST", "/api/create", {"model": "soak-b", "from": "soak-a",
                                                     "parameters": SECOND, "stream": False})
        if st != 200:
            raise RuntimeError(f"create soak-b: {st} {b[:200]!r}")
        for m in MODELS:  # both engines loaded before the clock starts
            call(dx, "POST", "/api/generate", {"model": m, "prompt": "hi", "stream": False,
                                               "options": {"num_predict": 1}})
        soak = Soak(dx)
        soak.samples.append((0.0, proc_numbers(dx.proc.pid)))
        disk = Disk(home, tmpfs, lambda: dx.proc.pid)
        faults = Faults(soak, registry, disk, exe, engine, work)
        duration = minutes * 60
        interval = max(5.0, min(30.0, duration / 24))  # every fault class three times at least
        threads = [threading.Thread(target=client_loop, args=(soak, seed * 100 + i), daemon=True)
                   for i in range(concurrency)]
        threads += [threading.Thread(target=sampler, args=(soak,), daemon=True),
                    threading.Thread(target=faults.loop, args=(interval,), daemon=True)]
        for t in threads:
            t.start()
        soak.stop.wait(duration)
        soak.stop.set()
        for t in threads:
            t.join(300)
        # idle: worker threads end after a minute without work, so "end" is read once they have
        base = soak.samples[0][1]
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            now = proc_numbers(dx.proc.pid)
            if now["threads"] <= base["threads"] and now["fds"] <= base["fds"]:
                break
            time.sleep(1)
        soak.samples.append((time.monotonic() - soak.t0, proc_numbers(dx.proc.pid)))
        for m in MODELS:  # both loaded again (a fault may have unloaded one), then engines vs /api/ps
            result.setdefault("reload_end", []).append(call(dx, "POST", "/api/embed" if m == "soak-a" else "/api/generate",
                 {"model": m, "input": "hi"} if m == "soak-a" else {"model": m, "prompt": "hi", "stream": False,
                                                                  "options": {"num_predict": 1}})[0])
        st, _h, body = call(dx, "GET", "/api/ps")
        loaded = json.loads(body).get("models", []) if st == 200 else []
        children = [p for p, pp, c in _procs() if pp == dx.proc.pid and c == "llama-server"]
        result["engines_end"] = sorted(describe_engine(p) for p in children)
        result["loaded_end"] = sorted(m.get("name") for m in loaded)
        dx.proc.send_signal(signal.SIGTERM)
        dx.proc.wait(30)
        time.sleep(1)
        result["orphans_after_stop"] = engines_of(home)
        result["store"] = store_check(exe, home, engine)
        # dx SIGKILLed with an engine loaded: the engine must go with it
        log.replace(work / "dx-serve-1.stderr")  # the run's log, kept: the next server writes its own
        dx2 = serve(exe, work, engine, {})
        call(dx2, "POST", "/api/generate", {"model": "soak-a", "prompt": "hi", "stream": False,
                                            "options": {"num_predict": 1}})
        before = engines_of(home)
        dx2.proc.kill()
        dx2.proc.wait()
        deadline = time.monotonic() + 5
        while engines_of(home) and time.monotonic() < deadline:
            time.sleep(0.1)
        result["engines_before_dx_kill"] = len(before)
        result["orphans_after_dx_kill"] = engines_of(home)
        for pid in result["orphans_after_dx_kill"] + result["orphans_after_stop"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        result.update(summarize(soak))
    finally:
        registry.stop()
        for pid in engines_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if tmpfs:
            time.sleep(0.5)
            subprocess.run(["umount", "-l", str(home)], capture_output=True)
    result["failures"] = failures(result)
    return result


def summarize(soak: Soak) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    lat = []
    bad = []
    for r in soak.records:
        if r.abandoned:
            outcomes["abandoned by client"] += 1
            continue
        if isinstance(r.status, str):
            key = f"no answer ({r.status})"
        elif 200 <= r.status < 300:
            key = "2xx" if not r.stream_error else "2xx, stream ended in error"
        elif r.status == 503 and r.retry_after:
            key = "503 + Retry-After"
        elif 400 <= r.status < 500:
            key = str(r.status)
        else:
            key = f"{r.status} (5xx)"
        during = sorted({f["fault"] for f in soak.faults if f["t0"] <= r.t + 0.5 and f["t"] >= r.t - r.seconds - 0.5})
        if key != "2xx":  # the engine fault injected while it ran, if any
            key += (" [an engine SIGKILLed while it ran]" if "engine SIGKILL" in during
                    else " [a keep_alive=0 unload while it ran]" if "keep_alive=0 unload" in during
                    else " [a delete + create while it ran]" if "delete + create" in during else " [no engine fault]")
        outcomes[key] += 1
        if key == "2xx" and r.kind.split("_stream")[0] in ("api_chat", "api_generate", "v1_chat"):
            lat.append(r.seconds)
        if key != "2xx" and not (key.startswith(("503 +", "2xx, stream ended")) and "engine SIGKILL" in during) \
                and not (key.startswith("404") and "delete + create" in during):
            bad.append({"kind": r.kind, "model": r.model, "status": r.status, "t": round(r.t, 1),
                        "error": r.stream_error})
    samples = soak.samples
    mid = samples[len(samples) // 2][1] if samples else {}
    d = soak.disconnects
    return {
        "requests": len(soak.records), "outcomes": dict(outcomes), "bad_requests": bad,
        "latency_s": {"p50": pct(lat, .5), "p95": pct(lat, .95), "p99": pct(lat, .99), "n": len(lat)},
        "rss_mib": [samples[0][1]["rss_mib"], mid.get("rss_mib"), samples[-1][1]["rss_mib"]],
        "rss_slope_mib_per_min": slope(samples, "rss_mib"),
        "anon_mib": [samples[0][1]["anon_mib"], mid.get("anon_mib"), samples[-1][1]["anon_mib"]],
        "anon_slope_mib_per_min": slope(samples, "anon_mib"),
        "fds": [samples[0][1]["fds"], samples[-1][1]["fds"]],
        "threads": [samples[0][1]["threads"], samples[-1][1]["threads"]],
        "disconnects": len(d), "freed_within_1s": sum(1 for x in d if x.freed_s is not None and x.freed_s <= 1.0),
        "slow_frees": [x.row(soak.faults) for x in d if x.freed_s is None or x.freed_s > 1.0],
        "disconnect_cases": _disconnect_cases(d),
        "faults": soak.faults,
        "rss_series": [(round(t), round(x["rss_mib"], 1), round(x["anon_mib"], 1), x["threads"], x["fds"])
                       for t, x in samples],
    }


def _disconnect_cases(d: list[Disconnect]) -> dict[str, list[float]]:
    """route, stream or not, phase at the hang-up -> [count, slowest free (s; -1: never)]."""
    out: dict[str, list[float]] = {}
    for x in d:
        key = f"{x.path} {'stream' if x.stream else 'no stream'}, {x.phase}"
        n, worst = out.get(key, [0, 0.0])
        took = -1.0 if x.freed_s is None else round(x.freed_s, 2)
        out[key] = [n + 1, -1.0 if worst < 0 or took < 0 else max(worst, took)]
    return dict(sorted(out.items()))


def failures(r: dict[str, Any]) -> list[str]:
    out = []
    if "outcomes" not in r:
        return ["the run did not finish"]
    for b in r["bad_requests"]:
        out.append(f"request {b}")
    if r["fds"][1] > r["fds"][0] + 8:
        out.append(f"fds grew {r['fds']}")
    if r["threads"][1] > r["threads"][0] + 4:
        out.append(f"threads grew {r['threads']}")
    if r["anon_slope_mib_per_min"] == r["anon_slope_mib_per_min"] and r["anon_slope_mib_per_min"] > 1.0:
        out.append(f"heap (RssAnon) slope {r['anon_slope_mib_per_min']:.2f} MiB/min")
    aliases = [e.split("+")[0] for e in r["engines_end"]]
    if sorted(set(aliases)) != r["loaded_end"] or len(set(r["engines_end"])) != len(aliases) or not aliases:
        out.append(f"engines {r['engines_end']} for loaded {r['loaded_end']}")
    if r["disconnects"] != r["freed_within_1s"]:
        out.append(f"slots not freed within 1 s: {r['slow_frees']}")
    for f in r["faults"]:
        if not f["ok"]:
            out.append(f"fault {f['fault']} at {f['t']} s: {f['what']}")
    if r["orphans_after_stop"]:
        out.append(f"engines left after dx stopped: {r['orphans_after_stop']}")
    if r["orphans_after_dx_kill"]:
        out.append(f"engines left after dx SIGKILL: {r['orphans_after_dx_kill']}")
    s = r["store"]
    for k in ("verify_failed", "leftovers", "orphans", "broken_manifests"):
        if s[k]:
            out.append(f"store {k}: {s[k]}")
    return out


def table(r: dict[str, Any]) -> str:
    rows = [("requests", str(r.get("requests")))]
    for k, v in sorted(r.get("outcomes", {}).items()):
        rows.append((f"  {k}", str(v)))
    lat = r.get("latency_s", {})
    rows.append(("latency p50/p95/p99 (s, generation 2xx)",
                 f"{lat.get('p50', 0):.2f} / {lat.get('p95', 0):.2f} / {lat.get('p99', 0):.2f} (n={lat.get('n')})"))
    rss = r.get("rss_mib", [0, 0, 0])
    rows.append(("dx RSS start/middle/end (MiB)", " / ".join(f"{x:.1f}" for x in rss)))
    rows.append(("dx RSS slope, 2nd half (MiB/min)", f"{r.get('rss_slope_mib_per_min', 0):+.3f}"))
    anon = r.get("anon_mib", [0, 0, 0])
    rows.append(("dx heap (RssAnon) start/middle/end (MiB)", " / ".join(f"{x:.1f}" for x in anon)))
    rows.append(("dx heap slope, 2nd half (MiB/min)", f"{r.get('anon_slope_mib_per_min', 0):+.3f}"))
    rows.append(("open fds start/end", "{} / {}".format(*map(int, r.get("fds", [0, 0])))))
    rows.append(("threads start/end", "{} / {}".format(*map(int, r.get("threads", [0, 0])))))
    rows.append(("engines at end / models loaded (/api/ps)", f"{r.get('engines_end')} / {r.get('loaded_end')}"))
    rows.append(("disconnects / slot freed within 1 s", f"{r.get('disconnects')} / {r.get('freed_within_1s')}"))
    for k, (n, worst) in r.get("disconnect_cases", {}).items():
        rows.append((f"  {k}", f"{int(n)}, slowest {'never' if worst < 0 else f'{worst:.2f} s'}"))
    per: dict[str, list[bool]] = {}
    for f in r.get("faults", []):
        per.setdefault(f["fault"], []).append(f["ok"])
    for k, v in per.items():
        rows.append((f"fault: {k}", f"{sum(v)}/{len(v)} clean"))
    s = r.get("store", {})
    rows.append(("store: blobs / manifests", f"{s.get('blobs')} / {s.get('manifests')}"))
    rows.append(("store: dx verify failed / partial files / orphan blobs / bad manifests",
                 f"{len(s.get('verify_failed', []))} / {len(s.get('leftovers', []))} / {len(s.get('orphans', []))}"
                 f" / {len(s.get('broken_manifests', []))}"))
    rows.append(("engines left after dx SIGTERM", str(len(r.get("orphans_after_stop", [])))))
    rows.append((f"engines left after dx SIGKILL (had {r.get('engines_before_dx_kill')})",
                 str(len(r.get("orphans_after_dx_kill", [])))))
    rows.append(("store disk", r.get("disk", "")))
    w = max(len(a) for a, _ in rows)
    lines = [f"{a.ljust(w)}  {b}" for a, b in rows]
    lines.append("invariants: " + ("all hold" if not r["failures"] else f"{len(r['failures'])} broken"))
    lines += [f"  - {f}" for f in r["failures"]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--exe", help="the dx to run (a minted executable or dx); default: python -m dx")
    ap.add_argument("--engine", help="llama-server (default: the cached cpu engine)")
    ap.add_argument("--model", help="the GGUF (default: SmolLM2-135M from its recipe)")
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--work", help="a directory for the run (default: a new one under $TMPDIR)")
    a = ap.parse_args()
    if a.engine:
        engine = Path(a.engine)
    else:
        from dxbuild.engine.build import host_engine

        engine = Path(host_engine("cpu")) / "bin" / "llama-server"
    if a.model:
        gguf = Path(a.model)
    else:
        from dxbuild.models import resolve

        gguf = resolve("smollm2").path
    r = run_soak(a.minutes, engine, gguf, [a.exe] if a.exe else None, a.concurrency, work=Path(a.work) if a.work else None,
                 seed=a.seed)
    print(table(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    return 0 if not r["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
