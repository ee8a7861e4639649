"""One ``llama-server`` child: started on a random loopback port with a secret key, waited for
(/health), its log streamed to a file, restarted when it dies.

DX does policy, the engine does tokens. Models never load unverified:
:func:`dx.models.source.verify_source` runs before every start.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dxverify.errors import DXError, ToolError

if TYPE_CHECKING:
    pass

from dx.engine.launcher import (
    _cuda_for,
    _free_loopback_port,
    _launcher,
    _pdeathsig_preexec,
    _say_engine_devices,
    _tail,
    default_log_dir,
)
from dx.engine.locate import locate_engine
from dx.models.adapters import adapters_for
from dx.models.capabilities import projector_for
from dx.models.defaults import ModelDefaults, for_source
from dx.models.source import ModelSource, verify_source

DEFAULT_PARALLEL = 4
DEFAULT_CTX_PER_SLOT = 4096
EMBED_PARALLEL = 2
# What an engine is for. llama-server's --embeddings is documented as "restrict to only
# support embedding use case" and caps n_batch at n_ubatch, so generation and embeddings
# run in separate engines on the same (mmapped, page-shared) model file.
GENERATE = "generate"
EMBED = "embed"
# llama-server's --rerank (common/arg.cpp: embeddings on, pooling "rank"): a reranker's classifier head
# scores (query, document) pairs on /v1/rerank; such an engine answers nothing else.
RERANK = "rerank"
READY_TIMEOUT = 120.0
CRASH_LIMIT = 5  # deaths within CRASH_WINDOW seconds before restarts pause for CRASH_BACKOFF
CRASH_WINDOW = 60.0
CRASH_BACKOFF = 30.0


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
    load_args: tuple[str, ...] = ()  # a request's load options (Ollama's num_thread, ...) it was started with
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
        load_args: Sequence[str] = (),
    ) -> Engine:
        """Verify ``source``, start llama-server for it and wait until /health says ready.

        ``ctx`` is the context per parallel slot (the engine gets ``ctx * parallel``).
        ``purpose`` EMBED starts an embeddings-only engine (mean pooling, whole inputs
        in one micro-batch), RERANK a reranking one (``--rerank``), instead of a generation engine.
        ``load_args``: a request's load-time flags, last on the command line (they win), recorded on the engine.
        """
        if verify:
            verify_source(source)
        if binary is None:
            binary = locate_engine()
        log_dir = log_dir or default_log_dir()
        log_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source.display_name)[:80] or "model"
        log_path = log_dir / (f"engine-{safe}.log" if purpose == GENERATE else f"engine-{safe}-{purpose}.log")

        defaults = for_source(source)  # the model's own (Ollama params layer): stop strings, sampling, num_ctx
        ctx = ctx or defaults.ctx or DEFAULT_CTX_PER_SLOT
        # The adapters shape every use of the model (embeddings too, as in Ollama, where one runner serves both).
        extra_args = [*lora_args(source), *extra_args]
        if purpose == GENERATE:
            if verify:
                _verify_created_parts(defaults)
            extra_args = [*defaults.engine_args(), *mmproj_args(source), *extra_args]
            _say_engine_devices(binary)
        last_error: DXError | None = None
        for _attempt in range(3):  # a port picked free can be taken before the engine binds it
            try:
                engine = cls._start_once(source, binary, ctx, parallel, log_path, [*extra_args, *load_args],
                                         ready_timeout, purpose)
                engine.load_args = tuple(load_args)
                return engine
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
        elif purpose == RERANK:  # a (query, document) pair is scored whole: one micro-batch holds it
            argv += ["--rerank", "-b", str(ctx), "-ub", str(ctx)]
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


def mmproj_args(source: ModelSource) -> list[str]:
    """``--mmproj FILE`` when the model has a multimodal projector (``dx.models.capabilities.projector_for``):
    the engine then accepts images, and /api/show lists ``vision``."""
    projector = projector_for(source)
    return ["--mmproj", str(projector)] if projector is not None else []


def lora_args(source: ModelSource) -> list[str]:
    """``--lora FILE`` for each LoRA adapter the model has (``dx.models.adapters.adapters_for``, verified).

    Raises the adapter's one-line DXError when one is named but missing, damaged or made for
    another model: the model is not served without it. llama-server splits ``--lora``'s value
    at commas (common/arg.cpp ``parse_csv_row``, which honours double quotes), so a path with a
    comma or quote goes quoted.
    """
    args: list[str] = []
    for path in adapters_for(source):
        text = str(path)
        if "," in text or text.startswith('"'):
            text = '"' + text.replace('"', '""') + '"'
        args += ["--lora", text]
    return args


class _PortTaken(Exception):
    def __init__(self, error: DXError) -> None:
        super().__init__(str(error))
        self.error = error


def _verify_created_parts(defaults: ModelDefaults) -> None:
    """A created model's draft (``dx.models.create``) is checked like the model at every start: structure
    each time, the SHA-256 its blob is named by once (cached). Its adapters are checked by ``lora_args``."""
    from dx.errors import ModelNotFoundError
    from dxverify.errors import IntegrityError

    parts = [("draft", defaults.draft)] if defaults.draft else []
    for kind, part in parts:
        path = Path(part)
        digest = "sha256:" + path.name.removeprefix("sha256-")
        if not path.is_file():  # no store path in the words: they reach API clients
            raise ModelNotFoundError(f"this model's {kind} blob {digest} is gone from the store",
                                     hint="create the model again (dx create / POST /api/create)")
        try:
            verify_source(ModelSource(path=path, name=path.name, sha256=digest[7:]))
        except DXError as e:
            raise IntegrityError(f"this model's {kind} blob {digest} is damaged: {str(e).replace(part, digest)}",
                                 hint="create the model again (dx create / POST /api/create)") from None
