"""The composition root of ``dx serve``: the one place that wires the store, the engines, the swarm
head and the transport together, from one typed ``ServeOptions``.

``dx.cli.serve`` only turns flags into ``ServeOptions`` and calls :func:`serve`;
tests build the same server with :func:`make_server`. The parts live apart, as
llama.cpp splits server-http.cpp from server.cpp:

* ``dx.server.transport`` — connections, limits, deadlines (``request``: one request,
  auth; ``wire``: parsing and error shapes; ``site``: Host/Origin policy);
* ``dx.server.routes`` — the one route table (method, path, handler, public or not);
* ``dx.server.ollama`` / ``dx.server.openai`` — what each API's routes do;
* ``dx.engine.lease`` — from a model name to a leased engine.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dx.engine import speculative
from dx.engine.keep_alive import parse_keep_alive
from dx.engine.manager import EngineManager
from dx.engine.spec_auto import AutoSpec
from dx.models.catalog import ModelResolver, Store
from dx.models.embedded import find_embedded, model_source, verify_embedded_source
from dx.models.source import ModelSource, verify_source
from dx.server.auth import KEY_FORMS, api_key_path, check_bind_policy, load_or_create_api_key
from dx.server.context import App, ServerLimits
from dx.server.routes import resolve
from dx.server.transport import DXServer
from dx.server.transport import make_server as _bind
from dxverify.errors import ConfigurationError

if TYPE_CHECKING:
    from dx.mcp.toolbox import Toolbox
    from dx.swarm.head import Head


def make_server(host: str, port: int, app: App) -> DXServer:
    """Bind the server with DX's route table (raises ConfigurationError when the address is taken)."""
    return _bind(host, port, app, resolve)


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``dx serve`` was asked for, resolved from its flags (``dx.cli.serve``)."""

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 11434
    auth: bool = True
    keep_alive: str = "5m"
    ctx: int | None = None
    parallel: int = 4
    max_loaded: int = 3  # engines at once (OLLAMA_MAX_LOADED_MODELS)
    flash_attn: str | None = None  # on | off | auto; None: the engine's default (OLLAMA_FLASH_ATTENTION)
    kv_cache_type: str | None = None  # f16, q8_0, ... for keys and values (OLLAMA_KV_CACHE_TYPE)
    limits: ServerLimits = field(default_factory=ServerLimits)
    allowed_hosts: Sequence[str] = ()
    allow_origins: Sequence[str] = ()
    preload: bool = True
    access_log: bool = False
    workers: Sequence[str] = ()
    tensor_split: str | None = None
    swarm_secret: str | None = None
    draft: str | None = None
    spec: str | None = None
    draft_max: int | None = None
    draft_min: int | None = None
    mcp: str | None = None  # an mcp.json: its servers' tools join every chat (dx.server.tool_loop)
    allow_tools: Sequence[str] = ()  # server.tool or server.*: DX runs these calls (on top of the policy)
    tools_without_auth: bool = False  # --mcp with --no-auth, said explicitly
    tool_rounds: int = 4
    tool_timeout: float = 30.0


def open_toolbox(opts: ServeOptions) -> Toolbox | None:
    """The MCP servers of ``--mcp``, started and listed; None without it. Refused with auth off unless said."""
    if opts.mcp is None:
        if opts.allow_tools:
            raise ConfigurationError("--allow-tools needs --mcp FILE (the MCP servers the tools come from)")
        return None
    if not opts.auth and not opts.tools_without_auth:
        raise ConfigurationError("--mcp with --no-auth would let anyone who reaches the port run tools: "
                                 "drop --no-auth, or add --allow-tools-without-auth to accept that")
    from dx.mcp import config as mcp_config
    from dx.mcp.toolbox import Toolbox

    cfg = mcp_config.with_allowed(mcp_config.load(opts.mcp), list(opts.allow_tools))
    return Toolbox(cfg, call_timeout=opts.tool_timeout).open()


def describe_tools(box: Toolbox) -> str:
    """The banner's line: each tool and who decides it."""
    by = {"allow": "dx runs", "ask": "returned to the client", "deny": "denied"}
    parts = [f"{b.key} ({by[b.decision]})" for b in box.tools.values()]
    return f"dx: MCP tools from {box.cfg.path}: " + (", ".join(parts) if parts else "none")


def engine_flags(opts: ServeOptions) -> list[str]:
    """The llama-server flags every engine gets from ``dx serve``'s options (as Ollama's llm/llama_server.go)."""
    flags: list[str] = []
    if opts.flash_attn is not None:
        flags += ["--flash-attn", opts.flash_attn]
    if opts.kv_cache_type is not None:
        flags += ["--cache-type-k", opts.kv_cache_type, "--cache-type-v", opts.kv_cache_type]
    return flags


def embedded_model_source() -> ModelSource | None:
    """The model appended to this very executable (a minted ``dx``), if any (see dx.models.embedded)."""

    found = find_embedded()
    return model_source(found) if found is not None else None


def _with_head(flags: list[str], head: Head) -> Callable[[str], list[str]]:
    """The swarm head's flags are asked at every engine start (the workers still up), after the fixed ones."""
    return lambda purpose: [*flags, *head.engine_args(purpose)]


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def cap_malloc_arenas(n: int = 2) -> bool:
    """Let glibc's malloc keep at most ``n`` arenas in this process (not the engines: mallopt is per process).

    By default glibc gives threads up to 8 arenas per core and never gives an arena back, so
    a server whose requests and pulls run on short-lived threads grows its heap for a while
    and keeps it (the soak run: 21 -> 40 MiB in 10 minutes, +2 MiB per in-server pull, flat with
    two arenas). False where there is no glibc (musl, macOS): nothing to cap there.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        # The program's own symbols, libc's among them (as dx.engine.launcher's prctl): ctypes.util's
        # find_library would run `ldconfig -p` at every start to find the file already loaded.
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Keep glibc's mmap threshold at ``size``: a block that large is mapped, and unmapped when freed.

    glibc raises the threshold (up to 32 MiB) each time a mapped block is freed, so after the first
    in-server pull or upload its megabyte buffers come from the heap instead, and the heap keeps its
    high-water mark (the short soak run: RssAnon +2 to +5 MiB per pull/upload for minutes, a slope
    over its 1 MiB/min). A fixed threshold turns that dynamic raise off. False where there is no glibc.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def serve(opts: ServeOptions) -> None:
    """Check, build, announce and run the server until SIGTERM/SIGINT; everything is closed on the way out."""
    check_bind_policy(opts.host, auth_enabled=opts.auth)
    cap_malloc_arenas()
    fix_mmap_threshold()
    try:
        default_keep = parse_keep_alive(opts.keep_alive)
    except ValueError as exc:
        raise ConfigurationError(f"--keep-alive: {exc}") from None

    # a named model is resolved now (pulls hf: files; verifies structure + SHA-256, cached)
    source = Store().resolve(opts.model) if opts.model else embedded_model_source()
    if source is not None:
        if opts.model:
            verify_source(source)  # refused here, with the verifier's reason, before anything listens
        else:
            verify_embedded_source(source)  # the same check, naming the executable on a mismatch
    # the draft verified and paired with the model now: an incompatible pair stops here, before any engine
    speculation = speculative.prepare(source, opts.spec, opts.draft, opts.draft_max, opts.draft_min)

    head: Head | None = None
    if opts.workers or opts.tensor_split:
        # lazy: dx.swarm (and ssl, libssl) load only for a swarm head, so dx serve stays small
        from dx.swarm.head import head_from_options

        head = head_from_options(list(opts.workers), opts.tensor_split, opts.swarm_secret)  # checks every worker
    toolbox = open_toolbox(opts)  # before anything listens: a server that cannot start stops here
    api_key = load_or_create_api_key() if opts.auth else None
    resolver = ModelResolver(source)
    flags = engine_flags(opts)
    manager = EngineManager(resolver, parallel=opts.parallel, ctx=opts.ctx, default_keep_alive=default_keep,
                            max_loaded=opts.max_loaded,
                            extra_args=_with_head(flags, head) if head is not None else flags,
                            model_args=speculative.engine_args_for(source, speculation),
                            spec_auto=AutoSpec() if speculation.auto else None)
    app = App(manager, resolver, api_key, opts.limits, access_log=opts.access_log,
              allowed_hosts=opts.allowed_hosts, allow_origins=opts.allow_origins)
    app.mcp, app.tool_rounds = toolbox, opts.tool_rounds
    try:
        server = make_server(opts.host, opts.port, app)
    except BaseException:
        if toolbox is not None:
            toolbox.close()
        raise

    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # Before the "serving" line, and everything after it inside the try: whoever waits for that line
    # (a supervisor, a test) may send SIGTERM or SIGINT at once, and dx must still close what it opened
    # and exit with its own status (143 / 0), not die by the default action.
    signal.signal(signal.SIGTERM, _stop)
    try:
        bound_host, bound_port = server.server_address[:2]
        shown_host = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        what = source.display_name if source is not None else "the models in the store"
        print(f"dx: serving {what} on http://{shown_host}:{bound_port}")
        if app.sessions is not None:  # a browser cannot send the key: this URL logs it in (a one-time token)
            browser_host = "localhost" if bound_host in ("0.0.0.0", "::") else shown_host
            print(f"dx: in a browser open {app.sessions.login_url(f'http://{browser_host}:{bound_port}')}")
        if speculation.mode != "none":
            print(f"dx: {speculation.describe()}")
        if toolbox is not None:
            print(describe_tools(toolbox))
        if head is not None:
            print(f"dx: split across workers {', '.join(opts.workers)} (mutual TLS, {head.secret.path})")
        if api_key:
            print(f"dx: API key {api_key} (in {api_key_path()}; send it as {KEY_FORMS})")
        else:
            print("dx: no API key required (--no-auth, loopback only)")
        sys.stdout.flush()
        if source is not None and opts.preload:
            def preload() -> None:
                try:
                    engine = manager.get(source.display_name)
                    spec = next((lm.speculation for lm in manager.loaded() if lm.engine is engine), None)
                    if spec and spec.get("mode") == "auto":  # --spec auto decided at this load: say what and why
                        print(f"dx: --spec auto: speculation {'on' if spec['speculating'] else 'off'}, "
                              f"{spec['reason']} ({spec['decode_tps_on']} vs {spec['decode_tps_off']} tok/s; "
                              "re-checked hourly)", flush=True)
                except Exception as exc:  # the first request will report it in the API's shape
                    print(f"dx: preloading {source.display_name} failed: {exc}", file=sys.stderr)

            threading.Thread(target=preload, name="dx-preload", daemon=True).start()
        server.serve_forever(poll_interval=3600)  # SIGTERM/SIGINT interrupt it; no idle wake-ups
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        manager.close()
        if toolbox is not None:
            toolbox.close()
        if head is not None:
            head.close()
