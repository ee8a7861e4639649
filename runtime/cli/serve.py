"""`dx serve [MODEL]`: the Ollama/OpenAI-compatible server.

Only the flags: they become one ``dx.server.app.ServeOptions`` and
``dx.server.app.serve`` (the composition root) does the rest. The server is
imported when the command runs, so ``dx --help`` and the other commands never load it.
"""

from __future__ import annotations

from typing import TypeVar

import click

from dx import config
from dx.engine import speculative
from dxverify.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = "5m"
DEFAULT_PARALLEL = 4
DEFAULT_MAX_LOADED = 3
DEFAULT_MAX_REQUESTS = 128

T = TypeVar("T")
D = TypeVar("D")


def _split_list(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma- or space-separated lists alike."""
    return [item for value in values for item in value.replace(",", " ").split()]


def _env(*names: str) -> str:
    """The help's note of the variables that set an option (a flag wins; the first variable set wins)."""
    return f"env {', '.join(names)}"


@click.command("serve")
@click.argument("model", required=False)
@click.option("--host", default=None,
              help=f"Address to listen on  [default: {DEFAULT_HOST}; {_env(config.HOST_ENV, 'OLLAMA_HOST')}"
                   " (host, host:port, :port, http://host:port, [::1]:port)].")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help=f"Port to listen on (0: any free port)  [default: {DEFAULT_PORT}; "
                   f"{_env(config.PORT_ENV, 'OLLAMA_HOST')}].")
@click.option("--no-auth", is_flag=True, help="Serve without an API key (loopback addresses only).")
@click.option("--keep-alive", default=None,
              help=f"Default idle time before an engine is unloaded (Ollama syntax; -1: never)  [default: "
                   f"{DEFAULT_KEEP_ALIVE}; {_env(config.KEEP_ALIVE_ENV, 'OLLAMA_KEEP_ALIVE')}].")
@click.option("--ctx", "ctx", default=None, type=click.IntRange(256, 1 << 20),
              help="Context length per parallel slot; given, it wins over the model's  [default: the model's "
                   f"num_ctx, else 4096; {_env(config.CTX_ENV, 'OLLAMA_CONTEXT_LENGTH')}].")
@click.option("--parallel", default=None, type=click.IntRange(1, 64),
              help=f"Parallel request slots per engine  [default: {DEFAULT_PARALLEL}; "
                   f"{_env(config.PARALLEL_ENV, 'OLLAMA_NUM_PARALLEL')}].")
@click.option("--max-loaded", default=None, type=click.IntRange(1, 1024),
              help="Engines loaded at once; loading one more unloads the one idle longest  [default: "
                   f"{DEFAULT_MAX_LOADED}; {_env(config.MAX_LOADED_ENV, 'OLLAMA_MAX_LOADED_MODELS')}].")
@click.option("--max-connections", default=1024, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Open connections; at the cap the one idle longest is closed to let a new one in.")
@click.option("--max-requests", default=None, type=click.IntRange(1, 4096),
              help="Requests in progress or waiting for an engine at once (worker threads); more get 503 + "
                   f"Retry-After (server busy)  [default: {DEFAULT_MAX_REQUESTS}; "
                   f"{_env(config.MAX_REQUESTS_ENV, 'OLLAMA_MAX_QUEUE')}].")
@click.option("--flash-attn", default=None, type=click.Choice(["on", "off", "auto"]),
              help="The engine's flash attention  [default: the engine's (auto); "
                   f"{_env(config.FLASH_ATTN_ENV, 'OLLAMA_FLASH_ATTENTION')} (1/true: on, 0/false: off)].")
@click.option("--kv-cache-type", default=None, type=click.Choice(config.KV_CACHE_TYPES, case_sensitive=False),
              help="Type of the engine's K/V cache, keys and values (q8_0 halves its memory)  [default: f16; "
                   f"{_env(config.KV_CACHE_TYPE_ENV, 'OLLAMA_KV_CACHE_TYPE')}].")
@click.option("--allowed-hosts", "allowed_hosts", multiple=True, envvar=config.ALLOWED_HOSTS_ENV, metavar="NAMES",
              help="Host names clients may use besides loopback and the bound address (comma-separated, "
                   "*.domain for subdomains, * for any; env DX_ALLOWED_HOSTS). Others get 403.")
@click.option("--allow-origins", "allow_origins", multiple=True, metavar="ORIGINS",
              help="Web origins (scheme://host[:port], comma-separated; "
                   f"{_env(config.ALLOW_ORIGINS_ENV, 'OLLAMA_ORIGINS')}) whose pages may call the API "
                   "(CORS). Other cross-site requests get 403; a wildcard is refused.")
@click.option("--max-body", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Largest request body, MiB.")
@click.option("--request-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a client has to send a request's headers (slow clients are cut off).")
@click.option("--no-preload", is_flag=True, help="Load the default model at the first request, not at start.")
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@click.option("--workers", "workers", multiple=True, metavar="HOST:PORT,...",
              help="dx workers to split the model across (llama.cpp RPC over the swarm's mutual TLS; see dx worker).")
@click.option("--tensor-split", "tensor_split", default=None, metavar="P1,P2,...",
              help="With --workers: the share of the layers each worker gets (default: by free memory).")
@click.option("--secret", "swarm_secret", default=None, metavar="FILE",
              help="With --workers: the swarm secret file (default: $DX_SWARM_SECRET, else $DX_HOME/swarm/secret.pem).")
@click.option("--mcp", "mcp", default=None, metavar="FILE",
              help="An mcp.json (mcpServers, as Cursor and Claude Desktop write it, plus a policy block): its "
                   "tools join every chat; DX runs only the calls the operator allows, others go back to the client.")
@click.option("--allow-tools", "allow_tools", multiple=True, metavar="SERVER.TOOL,...",
              help="With --mcp: tool calls DX runs itself (server.* for all of a server's tools).")
@click.option("--allow-tools-without-auth", "tools_without_auth", is_flag=True,
              help="Let --mcp run with --no-auth (anyone who reaches the port may then run the allowed tools).")
@click.option("--tool-rounds", default=4, show_default=True, type=click.IntRange(1, 32),
              help="With --mcp: tool rounds per chat before the model must answer.")
@click.option("--tool-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="With --mcp: seconds one tool call may take.")
@speculative.options
def serve_cmd(
    model: str | None, host: str | None, port: int | None, no_auth: bool, keep_alive: str | None, ctx: int | None,
    parallel: int | None, max_loaded: int | None, max_connections: int, max_requests: int | None,
    flash_attn: str | None, kv_cache_type: str | None, allowed_hosts: tuple[str, ...], allow_origins: tuple[str, ...],
    max_body: int, request_timeout: float, no_preload: bool, access_log: bool,
    workers: tuple[str, ...] = (), tensor_split: str | None = None, swarm_secret: str | None = None,
    draft: str | None = None, spec: str | None = None, draft_max: int | None = None, draft_min: int | None = None,
    mcp: str | None = None, allow_tools: tuple[str, ...] = (), tools_without_auth: bool = False,
    tool_rounds: int = 4, tool_timeout: float = 30.0,
) -> None:
    """Serve MODEL (a store name, a GGUF path or hf:OWNER/REPO/FILE.gguf) over the Ollama and OpenAI APIs.

    Without MODEL a minted executable serves its embedded model; a plain dx
    serves the models in its store. The API key lives in $DX_HOME/api_key
    (~/.dx/api_key), created at first start with mode 0600. Ollama's variables
    (OLLAMA_HOST, OLLAMA_ORIGINS, OLLAMA_MODELS, OLLAMA_KEEP_ALIVE, ...) mean what
    they mean for `ollama serve`; a DX_* of the same meaning wins, a flag wins over both.
    """
    from dx.server.app import ServeOptions, serve
    from dx.server.context import ServerLimits

    env = serve_environment()
    origins = _split_list(allow_origins) if allow_origins else list(env.allow_origins or ())
    keep = _pick(keep_alive, env.keep_alive, DEFAULT_KEEP_ALIVE)
    if keep_alive is None and env.keep_alive is not None:
        _check_keep_alive(env.keep_alive, env.source["keep_alive"])
    serve(ServeOptions(
        model=model, host=_pick(host, env.host, DEFAULT_HOST), port=_pick(port, env.port, DEFAULT_PORT),
        auth=not no_auth, keep_alive=keep, ctx=_pick(ctx, env.ctx, None),
        parallel=_pick(parallel, env.parallel, DEFAULT_PARALLEL),
        max_loaded=_pick(max_loaded, env.max_loaded, DEFAULT_MAX_LOADED),
        limits=ServerLimits(max_body=max_body << 20, max_connections=max_connections,
                            max_requests=_pick(max_requests, env.max_requests, DEFAULT_MAX_REQUESTS),
                            header_timeout=request_timeout),
        flash_attn=_pick(flash_attn, env.flash_attn, None),
        kv_cache_type=_pick(kv_cache_type.lower() if kv_cache_type else None, env.kv_cache_type, None),
        allowed_hosts=_split_list(allowed_hosts), allow_origins=origins,
        preload=not no_preload, access_log=access_log, workers=_split_list(workers), tensor_split=tensor_split,
        swarm_secret=swarm_secret, draft=draft, spec=spec, draft_max=draft_max, draft_min=draft_min,
        mcp=mcp, allow_tools=_split_list(allow_tools), tools_without_auth=tools_without_auth,
        tool_rounds=tool_rounds, tool_timeout=tool_timeout,
    ))


def serve_environment() -> config.ServeEnv:
    """What DX_* and OLLAMA_* set for dx serve; a value it cannot use is a one-line ConfigurationError."""
    try:
        return config.serve_env()
    except config.EnvError as exc:
        raise ConfigurationError(str(exc)) from None


def _pick(flag: T | None, env: T | None, default: D) -> T | D:
    """A flag wins over the environment, which wins over the default."""
    if flag is not None:
        return flag
    return env if env is not None else default


def _check_keep_alive(value: str, name: str) -> None:
    from dx.engine.keep_alive import parse_keep_alive

    try:
        parse_keep_alive(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={value!r}: {exc}") from None
