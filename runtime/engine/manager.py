"""The engine supervisor: one `llama-server` child per loaded model.

DX does policy, the engine does tokens. This module starts the tier's
llama-server on a random loopback port with a secret key, waits for /health,
streams its log to a file, restarts it when it dies, unloads it after an idle
keep-alive (Ollama's ``keep_alive``), and makes sure it never outlives ``dx``:

* ``PR_SET_PDEATHSIG`` (SIGKILL) set in the child between fork and exec, so a
  SIGKILLed ``dx`` takes its engines with it. The signal fires when the *thread*
  that forked the child exits, so every engine is forked from one long-lived
  launcher thread, never from a short-lived HTTP handler thread.
* a pipe-watch fallback for systems without prctl (and as a second line): a
  tiny ``sh`` watchdog blocks reading a pipe whose only writer is ``dx``; when
  ``dx`` dies the read returns EOF and the watchdog kills the engine's process
  group.

Models never load unverified: :func:`verify_source` runs before every start.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dx import metrics
from dxverify.errors import DXError, ToolError

if TYPE_CHECKING:
    from dx.host.cuda_libs import EngineCuda

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default of 5m
DEFAULT_PARALLEL = 4
DEFAULT_CTX_PER_SLOT = 4096
EMBED_PARALLEL = 2
# What an engine is for. llama-server's --embeddings is documented as "restrict to only
# support embedding use case" and caps n_batch at n_ubatch, so generation and embeddings
# run in separate engines on the same (mmapped, page-shared) model file.
GENERATE = "generate"
EMBED = "embed"
READY_TIMEOUT = 120.0
CRASH_LIMIT = 5  # deaths within CRASH_WINDOW seconds before restarts pause for CRASH_BACKOFF
CRASH_WINDOW = 60.0
CRASH_BACKOFF = 30.0


# --------------------------------------------------------------------------- model source
@dataclass(frozen=True)
class ModelSource:
    """Where a GGUF's bytes are: a whole file, or ``length`` bytes at ``offset`` of a
    larger file (a model embedded in a minted executable)."""

    path: Path
    offset: int = 0
    length: int | None = None
    name: str = ""
    sha256: str | None = None

    @property
    def engine_model_arg(self) -> str:
        """What llama-server's ``-m`` gets; ``FILE#offset=N`` is DX's engine patch."""
        if self.offset:
            return f"{self.path}#offset={self.offset}"
        return str(self.path)

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).name

    @property
    def key(self) -> tuple[str, int]:
        return (str(Path(self.path).resolve()), self.offset)

    def size(self) -> int:
        if self.length is not None:
            return self.length
        return Path(self.path).stat().st_size - self.offset


def verify_source(source: ModelSource) -> str:
    """Refuse a model whose structure or hash is wrong, before any engine sees it.

    Structure is checked at every start (milliseconds); the full SHA-256 once,
    cached (``dx.models.check`` over ``dxverify.verified_cache``). Raises the
    verifier's own DXError, whose message is the reason; returns the SHA-256.
    """
    path = Path(source.path)
    if not path.is_file():
        from dx.models.store import (
            ModelNotFoundError,  # a 404 on the wire: the model is gone, not the server broken
        )

        raise ModelNotFoundError(f"model file not found: {path}", hint="check the path or `dx list`")
    from dx.models.check import verify_model  # lazy: only when a model is about to load
    from dx.models.store import dx_home

    return verify_model(
        path, offset=source.offset, length=source.length, expected_sha256=source.sha256,
        cache_dir=dx_home() / "cache",
    )


# --------------------------------------------------------------------------- keep-alive
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object, default: float = DEFAULT_KEEP_ALIVE) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number or a Go duration ("5m", "1h30m").

    Returns seconds, ``None`` for "forever" (negative values), ``default`` when unset.
    Raises ValueError for anything else so the API can answer 400.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration like '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        try:
            seconds = sign * float(text)
        except ValueError:
            pos, total = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"keep_alive {value!r} is not a duration like '5m' or '30s'") from None
            seconds = sign * total
    else:
        raise ValueError("keep_alive must be a number of seconds or a duration like '5m'")
    return None if seconds < 0 else seconds


# --------------------------------------------------------------------------- spawning
def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGKILL the child when its parent dies.

    libc and prctl are looked up here, in the parent, so the child only calls them.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DX_NO_PDEATHSIG") == "1":
        return None  # DX_NO_PDEATHSIG=1: leave it to the pipe watchdog (tests prove that path alone)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (ImportError, OSError, AttributeError):  # no ctypes in this bundle: the watchdog still covers it
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Launcher:
    """One long-lived thread that forks every engine (PDEATHSIG is per *thread*)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: list[tuple[Callable[[], object], list, threading.Event]] = []
        self._cond = threading.Condition(self._lock)

    def run(self, job: Callable[[], object]) -> object:
        if threading.current_thread() is threading.main_thread():
            return job()
        done = threading.Event()
        box: list = []
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dx-engine-launcher", daemon=True)
                self._thread.start()
            self._jobs.append((job, box, done))
            self._cond.notify()
        done.wait()
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, box, done = self._jobs.pop(0)
            try:
                box.append(("ok", job()))
            except BaseException as exc:  # handed back to the caller's thread
                box.append(("error", exc))
            done.set()


_launcher = _Launcher()

#: ggml's loadable GPU backend modules (next to llama-server) -> the name users know
_GPU_BACKENDS = {"vulkan": "Vulkan", "cuda": "CUDA", "hip": "ROCm"}
_devices_said = threading.Event()


def _say_engine_devices(binary: Path) -> None:
    """One line, once per process, for a GPU engine: the device it will use, or that it runs on the CPU.

    ggml quietly falls back to its CPU backend when a GPU backend finds no
    device; ``llama-server --list-devices`` (a fraction of a second) lists the
    GPU devices it can use, and none means CPU.
    """
    if _devices_said.is_set():
        return
    _devices_said.set()
    apis = [name for mod, name in _GPU_BACKENDS.items() if any(binary.parent.glob(f"*ggml-{mod}.*"))]
    if not apis:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
    cuda = _cuda_for(binary, env)
    if cuda.notice:  # a thin CUDA engine without cuBLAS or a driver: the one line names what to install
        print(cuda.notice, file=sys.stderr, flush=True)
        return
    env.update(cuda.env)
    try:
        out = subprocess.run([str(binary), "--list-devices"], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    listed = out.split("Available devices:", 1)[-1].split("\n")
    devices = [d.strip() for d in listed if d.strip() and d.strip() != "(none)"]
    if devices:
        print(f"dx: the engine runs on {'; '.join(devices)}", file=sys.stderr, flush=True)
    else:
        print(f"dx: the engine found no {' or '.join(apis)} device; running on the CPU", file=sys.stderr, flush=True)


def _cuda_for(binary: Path, env: dict[str, str]) -> EngineCuda:
    """A thin CUDA engine's cuBLAS/cudart search (dx.host.cuda_libs): env additions, log lines, notice."""
    from dx.host.cuda_libs import for_engine  # imported only when an engine starts: dx stays import-light

    return for_engine(binary, env)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 8) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def default_log_dir() -> Path:
    from dx.models.store import dx_home

    return dx_home() / "logs"


# --------------------------------------------------------------------------- one engine
@dataclass
class Engine:
    """One running llama-server serving one model on a private loopback port."""

    source: ModelSource
    binary: Path
    port: int
    api_key: str
    process: subprocess.Popen
    log_path: Path
    ctx: int
    parallel: int
    started_at: float
    load_duration: float
    purpose: str = GENERATE
    watchdog: subprocess.Popen | None = None
    _watch_fd: int | None = None
    _stopping: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        source: ModelSource,
        *,
        ctx: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        binary: Path | None = None,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT,
        verify: bool = True,
        purpose: str = GENERATE,
    ) -> Engine:
        """Verify ``source``, start llama-server for it and wait until /health says ready.

        ``ctx`` is the context per parallel slot (the engine gets ``ctx * parallel``).
        ``purpose`` EMBED starts an embeddings-only engine (mean pooling, whole inputs
        in one micro-batch) instead of a generation engine.
        """
        if verify:
            verify_source(source)
        if binary is None:
            from dx.engine.locate import locate_engine

            binary = locate_engine()
        log_dir = log_dir or default_log_dir()
        log_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source.display_name)[:80] or "model"
        log_path = log_dir / (f"engine-{safe}.log" if purpose == GENERATE else f"engine-{safe}-{purpose}.log")
        from dx.models.defaults import for_source

        defaults = for_source(source)  # the model's own (Ollama params layer): stop strings, sampling, num_ctx
        ctx = ctx or defaults.ctx or DEFAULT_CTX_PER_SLOT
        if purpose == GENERATE:
            extra_args = [*defaults.engine_args(), *extra_args]
            _say_engine_devices(binary)
        last_error: DXError | None = None
        for _attempt in range(3):  # a port picked free can be taken before the engine binds it
            try:
                return cls._start_once(source, binary, ctx, parallel, log_path, extra_args, ready_timeout, purpose)
            except _PortTaken as exc:
                last_error = exc.error
        assert last_error is not None
        raise last_error

    @classmethod
    def _start_once(
        cls,
        source: ModelSource,
        binary: Path,
        ctx: int,
        parallel: int,
        log_path: Path,
        extra_args: Sequence[str],
        ready_timeout: float,
        purpose: str,
    ) -> Engine:
        port = _free_loopback_port()
        api_key = secrets.token_urlsafe(24)
        argv = [
            str(binary),
            "-m", source.engine_model_arg,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--api-key", api_key,
            "--parallel", str(parallel),
            "--cont-batching",
            "-c", str(ctx * parallel),
            "--alias", source.display_name,
        ]
        if purpose == EMBED:
            argv += ["--embeddings", "--pooling", "mean", "-b", str(ctx), "-ub", str(ctx)]
        else:
            argv += ["--jinja", "--metrics"]  # the engine's /metrics, which dx.metrics re-emits by model
        argv += list(extra_args)
        # The engine takes its settings from DX alone: llama-server also reads LLAMA_ARG_*
        # variables and a user config.ini, either of which could override the secret key,
        # the loopback bind or the model we verified.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
        env["XDG_CONFIG_HOME"] = str(Path(log_path).parent / "engine-config")
        cuda = _cuda_for(binary, env)  # a thin CUDA engine: where cuBLAS was found, for this child only
        env.update(cuda.env)
        t0 = time.monotonic()
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            log.write("".join(line + "\n" for line in cuda.log_lines).encode())
            log.write(f"+ {' '.join(a if a != api_key else '***' for a in argv)}\n".encode())
            log.flush()
            preexec = _pdeathsig_preexec()

            def spawn() -> subprocess.Popen:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=preexec,
                    start_new_session=True,
                )

            process = _launcher.run(spawn)
        finally:
            log.close()
        engine = cls(
            source=source, binary=binary, port=port, api_key=api_key, process=process,  # type: ignore[arg-type]
            log_path=log_path, ctx=ctx, parallel=parallel, started_at=time.time(), load_duration=0.0,
            purpose=purpose,
        )
        engine._start_watchdog()
        try:
            engine._wait_ready(ready_timeout)
        except BaseException:
            engine.stop()
            raise
        engine.load_duration = time.monotonic() - t0
        return engine

    def _start_watchdog(self) -> None:
        sh = "/bin/sh"
        if not os.path.exists(sh):
            return
        read_fd, write_fd = os.pipe()
        os.set_inheritable(read_fd, True)
        try:
            self.watchdog = _launcher.run(  # type: ignore[assignment]
                lambda: subprocess.Popen(
                    [sh, "-c", 'read _ignored; kill -9 -- "-$1" 2>/dev/null; kill -9 "$1" 2>/dev/null', "dx-watchdog",
                     str(self.process.pid)],
                    stdin=read_fd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        finally:
            os.close(read_fd)
        os.set_inheritable(write_fd, False)
        self._watch_fd = write_fd

    def _wait_ready(self, timeout: float) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            code = self.process.poll()
            if code is not None:
                tail = _tail(self.log_path)
                if "bind" in tail.lower() and "port" in tail.lower():
                    raise _PortTaken(ToolError(f"engine could not bind its port: {tail}"))
                raise ToolError(
                    f"engine exited with status {code} while loading {self.source.display_name}: {tail}",
                    hint=f"full log: {self.log_path}",
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ToolError(
                    f"engine did not become ready within {timeout:.0f}s for {self.source.display_name}",
                    hint=f"see {self.log_path}",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine (SIGTERM, then SIGKILL), then its watchdog."""
        self._stopping = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.watchdog is not None and self.watchdog.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.kill()
            self.watchdog.wait()
        if self._watch_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._watch_fd)
            self._watch_fd = None


class _PortTaken(Exception):
    def __init__(self, error: DXError) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------- many engines
@dataclass
class LoadedModel:
    """What /api/ps reports for one running engine."""

    name: str
    source: ModelSource
    pid: int
    url: str
    ctx: int
    expires_at: float | None  # epoch seconds; None = kept forever
    in_use: int
    restarts: int
    purpose: str = GENERATE
    engine: Engine | None = field(default=None, repr=False, compare=False)


@dataclass
class _Slot:
    source: ModelSource
    purpose: str = GENERATE
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Engine | None = None
    in_use: int = 0
    keep_alive: float | None = DEFAULT_KEEP_ALIVE
    last_used: float = 0.0
    ctx: int = DEFAULT_CTX_PER_SLOT
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    failed_until: float = 0.0
    failure: str = ""
    failure_log: Path | None = None


class EngineCrashLoop(ToolError):
    """The engine keeps dying right after start; give up instead of spinning."""


class EngineManager:
    """Loads engines on demand, shares them between requests, unloads idle ones.

    ``resolve(model_spec) -> ModelSource`` turns an API model name into bytes on
    disk (the store's ``dx.models.store.resolve``, or a fixed source for ``dx serve FILE``).
    """

    def __init__(
        self,
        resolve: Callable[[str], ModelSource],
        *,
        binary: Path | None = None,
        log_dir: Path | None = None,
        parallel: int = DEFAULT_PARALLEL,
        ctx: int | None = None,  # None: the model's own num_ctx, else DEFAULT_CTX_PER_SLOT
        default_keep_alive: float | None = DEFAULT_KEEP_ALIVE,
        max_loaded: int = 3,
        reap_interval: float = 1.0,
        extra_args: Sequence[str] | Callable[[str], Sequence[str]] = (),
        model_args: Callable[[ModelSource, str], Sequence[str]] | None = None,
    ) -> None:
        self._resolve = resolve
        self._binary = binary
        self._log_dir = log_dir
        self._parallel = parallel
        self._ctx = ctx
        self._default_keep_alive = default_keep_alive
        self._max_loaded = max_loaded
        # a callable is asked at every (re)start, with the engine's purpose (dx.swarm.head: the workers still up)
        self._extra_args = extra_args if callable(extra_args) else tuple(extra_args)
        # asked at every (re)start with the model and purpose (dx.engine.speculative: the draft for its target only)
        self._model_args = model_args
        self._slots: dict[tuple[str | int, ...], _Slot] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._kick = threading.Event()  # a lease ended or close(): the reaper looks now
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_interval,), name="dx-reaper", daemon=True)
        self._reaper.start()

    @property
    def default_keep_alive(self) -> float | None:
        return self._default_keep_alive

    def resolve(self, model: str) -> ModelSource:
        return self._resolve(model)

    def get(
        self, model: str, keep_alive: object = None, *, num_ctx: int | None = None, purpose: str = GENERATE
    ) -> Engine:
        """The running engine for ``model``, started (verified first) if needed.

        Marks the model used now; it stays loaded ``keep_alive`` after its last use.
        """
        with self.lease(model, keep_alive, num_ctx=num_ctx, purpose=purpose) as engine:
            return engine

    @contextlib.contextmanager
    def lease(
        self, model: str, keep_alive: object = None, *, num_ctx: int | None = None, purpose: str = GENERATE
    ) -> Iterator[Engine]:
        """Hold the model's engine for one request: it is not unloaded while leased."""
        keep = self._default_keep_alive if keep_alive is None else parse_keep_alive(keep_alive)
        source = self._resolve(model)
        from dx.models.defaults import for_source

        defaults = for_source(source)
        with self._lock:
            # Two names for one blob may carry different defaults (Ollama params): one engine each.
            key = (*source.key, purpose, *defaults.engine_args())
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(source=source, purpose=purpose,
                                                ctx=self._ctx or defaults.ctx or DEFAULT_CTX_PER_SLOT)
            slot.in_use += 1
            slot.keep_alive = keep
            slot.last_used = time.monotonic()
        try:
            engine = self._ensure_running(slot, num_ctx)
            self._evict_over_limit(keep=slot)
            yield engine
        finally:
            with self._lock:
                slot.in_use -= 1
                slot.last_used = time.monotonic()
            self._kick.set()

    def _ensure_running(self, slot: _Slot, num_ctx: int | None) -> Engine:
        with slot.lock:
            engine = slot.engine
            # without num_ctx a request takes whatever context is loaded (no reload thrash)
            want_ctx = num_ctx or (engine.ctx if engine is not None else slot.ctx)
            if engine is not None and engine.alive() and engine.ctx != want_ctx:
                if slot.in_use > 1:  # busy: serve with the loaded context rather than cut others off
                    return engine
                engine.stop()  # Ollama reloads the model for a different num_ctx
                engine = slot.engine = None
            if engine is not None and engine.alive():
                return engine
            if engine is not None:  # died: restart, unless it keeps dying at once
                self._note_crash(slot, engine)
                engine.stop()
                slot.engine = None
                slot.restarts += 1
                metrics.ENGINE_RESTARTS.inc(slot.source.display_name, slot.purpose)
            self._check_backoff(slot)
            slot.engine = Engine.start(
                slot.source,
                ctx=want_ctx,
                parallel=self._parallel if slot.purpose == GENERATE else EMBED_PARALLEL,
                binary=self._binary,
                log_dir=self._log_dir,
                extra_args=[*(self._extra_args(slot.purpose) if callable(self._extra_args) else self._extra_args),
                            *(self._model_args(slot.source, slot.purpose) if self._model_args else ())],
                purpose=slot.purpose,
            )
            metrics.ENGINE_STARTS.inc(slot.source.display_name, slot.purpose)
            return slot.engine

    def _note_crash(self, slot: _Slot, engine: Engine) -> None:
        """Count a death; after CRASH_LIMIT in CRASH_WINDOW, stop restarting for CRASH_BACKOFF."""
        now = time.monotonic()
        slot.crash_times = [t for t in slot.crash_times if now - t < CRASH_WINDOW] + [now]
        if len(slot.crash_times) >= CRASH_LIMIT:
            slot.crash_times = []
            slot.failed_until = now + CRASH_BACKOFF
            slot.failure = (
                f"engine for {slot.source.display_name} died {CRASH_LIMIT} times within {CRASH_WINDOW:.0f}s: "
                f"{_tail(engine.log_path)}"
            )
            slot.failure_log = engine.log_path

    def _check_backoff(self, slot: _Slot) -> None:
        if slot.failed_until > time.monotonic():
            raise EngineCrashLoop(slot.failure, hint=f"not restarting it for a while; see {slot.failure_log}")

    def _evict_over_limit(self, keep: _Slot) -> None:
        with self._lock:
            loaded = [s for s in self._slots.values() if s.engine is not None and s is not keep]
            excess = len(loaded) + 1 - self._max_loaded
            idle = sorted((s for s in loaded if s.in_use == 0), key=lambda s: s.last_used)
        for slot in idle[: max(0, excess)]:
            self._unload_slot(slot, "evicted")

    def _unload_slot(self, slot: _Slot, reason: str = "requested") -> bool:
        with slot.lock:
            if slot.engine is None:
                return False
            metrics.ENGINE_UNLOADS.inc(slot.source.display_name, slot.purpose, reason)
            slot.engine.stop()
            slot.engine = None
            return True

    def _reap_slot(self, slot: _Slot) -> None:
        """Unload an idle slot, re-checked under both locks so a request arriving now is not cut off."""
        with slot.lock:
            with self._lock:
                if slot.in_use or slot.keep_alive is None:
                    return
                if time.monotonic() - slot.last_used < slot.keep_alive:
                    return
            if slot.engine is not None:
                metrics.ENGINE_UNLOADS.inc(slot.source.display_name, slot.purpose, "idle")
                slot.engine.stop()
                slot.engine = None

    def unload(self, model: str) -> bool:
        """Stop the engine for ``model`` now (Ollama's ``keep_alive: 0``)."""
        return self.unload_source(self._resolve(model))

    def unload_source(self, source: ModelSource) -> bool:
        """Stop every engine (generation, embeddings) serving ``source``'s bytes."""
        with self._lock:
            slots = [s for k, s in self._slots.items() if k[:2] == source.key]
        unloaded = [self._unload_slot(s) for s in slots]
        return any(unloaded)

    def loaded(self) -> list[LoadedModel]:
        now_mono, now = time.monotonic(), time.time()
        out = []
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            engine = slot.engine
            if engine is None or engine.stopping:
                continue
            expires = None if slot.keep_alive is None else now + (slot.last_used + slot.keep_alive - now_mono)
            out.append(
                LoadedModel(
                    name=slot.source.display_name, source=slot.source, pid=engine.pid, url=engine.url,
                    ctx=engine.ctx, expires_at=expires, in_use=slot.in_use, restarts=slot.restarts,
                    purpose=slot.purpose, engine=engine,
                )
            )
        return out

    def _reap_loop(self, interval: float) -> None:
        """Unload idle engines, bring back dead ones. Sleeps while no engine is loaded."""
        while not self._closed.is_set():
            with self._lock:
                slots = list(self._slots.values())
            loaded = any(s.engine is not None for s in slots)
            self._kick.wait(interval if loaded else None)
            self._kick.clear()
            if self._closed.is_set():
                return
            with self._lock:
                slots = list(self._slots.values())
            now = time.monotonic()
            for slot in slots:
                engine = slot.engine
                if engine is None or slot.in_use:
                    continue
                if slot.keep_alive is not None and now - slot.last_used >= slot.keep_alive:
                    self._reap_slot(slot)
                elif not engine.alive() and not engine.stopping and slot.failed_until <= now:
                    # died while idle: bring it back so the next request does not wait
                    with contextlib.suppress(DXError):
                        self._ensure_running(slot, None)

    def close(self) -> None:
        """Stop every engine (on shutdown)."""
        self._closed.set()
        self._kick.set()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            self._unload_slot(slot, "shutdown")
