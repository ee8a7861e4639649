"""`dx mcp [MODEL]`: the model as an MCP server — stdio by default, ``--http`` for streamable HTTP.

Stdio (Claude Desktop, Cursor, Zed, Codex start it as a subprocess): stdout carries the
protocol and nothing else. The process's file descriptor 1 is moved aside for it at
start and fd 1 becomes stderr, so no print, no library and no child process (the
engine) can write a stray byte into the protocol; logs go to stderr.

``--http`` is ``dx serve`` with its ``/mcp`` route (``dx.server.mcp_http``): the same API
key (401 without it), the same Host/Origin checks (403), the same engines and limits;
one server process, one auth, rather than a second HTTP stack for MCP alone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from dx.cli.serve import (
    DEFAULT_HOST,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_PARALLEL,
    _pick,
    _split_list,
    serve_environment,
)


@click.command("mcp")
@click.argument("model", required=False)
@click.option("--http", "http", is_flag=True,
              help="Serve MCP over streamable HTTP at /mcp (with dx serve's API and API key) instead of stdio.")
@click.option("--host", default=None, help=f"With --http: address to listen on  [default: {DEFAULT_HOST}].")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="With --http: port to listen on (0: any free port)  [default: 11434].")
@click.option("--no-auth", is_flag=True, help="With --http: no API key (loopback addresses only).")
@click.option("--allow-origins", "allow_origins", multiple=True, metavar="ORIGINS",
              help="With --http: web origins whose pages may call /mcp; other cross-site requests get 403.")
@click.option("--keep-alive", default=None,
              help=f"Idle time before the engine is unloaded (Ollama syntax; -1: never)  [default: {DEFAULT_KEEP_ALIVE}].")
@click.option("--ctx", "ctx", default=None, type=click.IntRange(256, 1 << 20),
              help="Context length per parallel slot  [default: the model's num_ctx, else 4096].")
@click.option("--parallel", default=None, type=click.IntRange(1, 64),
              help=f"Parallel request slots per engine  [default: {DEFAULT_PARALLEL}].")
def mcp_cmd(model: str | None, http: bool, host: str | None, port: int | None, no_auth: bool,
            allow_origins: tuple[str, ...], keep_alive: str | None, ctx: int | None, parallel: int | None) -> None:
    """Serve MODEL as an MCP server: tools generate, chat, embed; the models as resources.

    Without MODEL a minted executable serves its embedded model. For Claude Desktop or
    Cursor: {"mcpServers": {"dx": {"command": "dx", "args": ["mcp", "MODEL"]}}}.
    """
    env = serve_environment()
    keep = _pick(keep_alive, env.keep_alive, DEFAULT_KEEP_ALIVE)
    ctx = _pick(ctx, env.ctx, None)
    parallel = _pick(parallel, env.parallel, DEFAULT_PARALLEL)
    if http:
        from dx.server.app import ServeOptions, serve

        origins = _split_list(allow_origins) if allow_origins else list(env.allow_origins or ())
        click.echo("dx: MCP over streamable HTTP at /mcp of the server below", err=True)
        serve(ServeOptions(model=model, host=_pick(host, env.host, DEFAULT_HOST), port=_pick(port, env.port, 11434),
                           auth=not no_auth, keep_alive=keep, ctx=ctx, parallel=parallel, allow_origins=origins))
        return
    serve_stdio(model, keep, ctx, parallel)


def _protocol_stdout() -> tuple[object, int]:
    """(a binary file on the original stdout, its fd); fd 1 and ``sys.stdout`` become stderr from now on."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0), fd


def serve_stdio(model: str | None, keep_alive: str, ctx: int | None, parallel: int) -> None:
    """The MCP server on stdin/stdout until stdin ends; the engine is started (in the background) at once."""
    # serve_stdio's pool, imported before the preload thread forks an engine: concurrent.futures imports
    # logging, and an import that registers at-fork hooks during another thread's fork makes CPython print
    # "Exception ignored ... cannot release un-acquired lock"
    import concurrent.futures  # noqa: F401

    from dx.engine.keep_alive import parse_keep_alive
    from dx.engine.manager import EngineManager
    from dx.mcp.server import MCPServer, ModelTools, serve_stdio_forever
    from dx.models.catalog import ModelResolver, Store
    from dx.models.embedded import verify_embedded_source
    from dx.models.source import verify_source
    from dx.server.app import embedded_model_source
    from dxverify.errors import ConfigurationError

    out, _fd = _protocol_stdout()
    try:
        default_keep = parse_keep_alive(keep_alive)
    except ValueError as exc:
        raise ConfigurationError(f"--keep-alive: {exc}") from None
    source = Store().resolve(model) if model else embedded_model_source()
    if source is not None:
        if model:
            verify_source(source)
        else:
            verify_embedded_source(source)
    resolver = ModelResolver(source)
    manager = EngineManager(resolver, parallel=parallel, ctx=ctx, default_keep_alive=default_keep)
    what = source.display_name if source is not None else "the models in the store"
    print(f"dx: MCP server (stdio) for {what}", file=sys.stderr, flush=True)
    if source is not None:
        def preload() -> None:
            try:
                manager.get(source.display_name)
            except Exception as exc:  # the first tool call reports it as a tool error
                print(f"dx: preloading {source.display_name} failed: {exc}", file=sys.stderr, flush=True)

        threading.Thread(target=preload, name="dx-preload", daemon=True).start()
    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)  # a client's SIGTERM: the finally below stops the engine
    try:
        serve_stdio_forever(MCPServer(ModelTools(manager, resolver)), sys.stdin.buffer, out)  # type: ignore[arg-type]
    finally:
        manager.close()
