"""`dx serve [MODEL]`: the Ollama/OpenAI-compatible server.

Kept out of ``dx.cli`` so that ``dx --help`` and the other commands never
import the server; inside this module heavy parts load when the command runs.
"""

from __future__ import annotations

import sys

import click

from dx.engine import speculative

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def embedded_model_source():  # type: ignore[no-untyped-def]
    """The model appended to this very executable (a minted ``dx``), if any (see dx.models.embedded)."""
    from dx.models.embedded import find_embedded, model_source

    found = find_embedded()
    return model_source(found) if found is not None else None


def _split_list(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma- or space-separated lists alike."""
    return [item for value in values for item in value.replace(",", " ").split()]


@click.command("serve")
@click.argument("model", required=False)
@click.option("--host", default=DEFAULT_HOST, show_default=True, envvar="DX_HOST",
              help="Address to listen on (env DX_HOST).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), envvar="DX_PORT",
              help="Port to listen on (0: any free port; env DX_PORT).")
@click.option("--no-auth", is_flag=True, help="Serve without an API key (loopback addresses only).")
@click.option("--keep-alive", default="5m", show_default=True,
              help="Default idle time before an engine is unloaded (Ollama syntax; -1: never).")
@click.option("--ctx", "ctx", default=None, type=click.IntRange(256, 1 << 20),
              help="Context length per parallel slot  [default: the model's num_ctx, else 4096]; "
                   "given, it wins over the model's.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Parallel request slots per engine.")
@click.option("--max-connections", default=1024, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Open connections; at the cap the one idle longest is closed to let a new one in.")
@click.option("--max-requests", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Requests in progress at once (worker threads); more get 503 + Retry-After.")
@click.option("--allowed-hosts", "allowed_hosts", multiple=True, envvar="DX_ALLOWED_HOSTS", metavar="NAMES",
              help="Host names clients may use besides loopback and the bound address (comma-separated, "
                   "*.domain for subdomains, * for any; env DX_ALLOWED_HOSTS). Others get 403.")
@click.option("--allow-origins", "allow_origins", multiple=True, envvar="DX_ALLOW_ORIGINS", metavar="ORIGINS",
              help="Web origins (scheme://host[:port], comma-separated; env DX_ALLOW_ORIGINS) whose pages may "
                   "call the API (CORS). Other cross-site requests get 403.")
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
@speculative.options
def serve_cmd(
    model: str | None, host: str, port: int, no_auth: bool, keep_alive: str, ctx: int | None, parallel: int,
    max_connections: int, max_requests: int, allowed_hosts: tuple[str, ...], allow_origins: tuple[str, ...],
    max_body: int, request_timeout: float, no_preload: bool, access_log: bool,
    workers: tuple[str, ...] = (), tensor_split: str | None = None, swarm_secret: str | None = None,
    draft: str | None = None, spec: str | None = None, draft_max: int | None = None, draft_min: int | None = None,
) -> None:
    """Serve MODEL (a store name, a GGUF path or hf:OWNER/REPO/FILE.gguf) over the Ollama and OpenAI APIs.

    Without MODEL a minted executable serves its embedded model; a plain dx
    serves the models in its store. The API key lives in $DX_HOME/api_key
    (~/.dx/api_key), created at first start with mode 0600.
    """
    import signal
    import threading

    from dx.engine.keep_alive import parse_keep_alive
    from dx.engine.manager import EngineManager
    from dx.models.catalog import ModelResolver
    from dx.models.source import verify_source
    from dx.server.app import App, ServerLimits, make_server
    from dx.server.auth import api_key_path, check_bind_policy, load_or_create_api_key
    from dxverify.errors import ConfigurationError

    check_bind_policy(host, auth_enabled=not no_auth)
    try:
        default_keep = parse_keep_alive(keep_alive)
    except ValueError as exc:
        raise ConfigurationError(f"--keep-alive: {exc}") from None

    if model:
        from dx.models.catalog import Store

        source = Store().resolve(model)  # pulls hf: files; verifies structure + SHA-256 (cached)
    else:
        source = embedded_model_source()
    if source is not None:
        if model:
            verify_source(source)  # refused here, with the verifier's reason, before anything listens
        else:
            from dx.models.embedded import verify_embedded_source

            verify_embedded_source(source)  # the same check, naming the executable on a mismatch
    # the draft verified and paired with the model now: an incompatible pair stops here, before any engine
    speculation = speculative.prepare(source, spec, draft, draft_max, draft_min)

    head = None
    if workers or tensor_split:  # dx.swarm.head (and ssl, libssl) only for a swarm head: dx serve stays small
        from dx.swarm.head import head_from_options

        head = head_from_options(_split_list(workers), tensor_split, swarm_secret)  # checks every worker, or stops
    api_key = None if no_auth else load_or_create_api_key()
    resolver = ModelResolver(source)
    manager = EngineManager(resolver, parallel=parallel, ctx=ctx, default_keep_alive=default_keep,
                            extra_args=head.engine_args if head is not None else (),
                            model_args=speculative.engine_args_for(source, speculation))
    limits = ServerLimits(max_body=max_body << 20, max_connections=max_connections, max_requests=max_requests,
                          header_timeout=request_timeout)
    app = App(manager, resolver, api_key, limits, access_log=access_log,
              allowed_hosts=_split_list(allowed_hosts), allow_origins=_split_list(allow_origins))
    server = make_server(host, port, app)
    bound_host, bound_port = server.server_address[:2]
    shown_host = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    what = source.display_name if source is not None else "the models in the store"
    click.echo(f"dx: serving {what} on http://{shown_host}:{bound_port}")
    if app.sessions is not None:  # a browser cannot send the key: this URL logs it in (a one-time token)
        browser_host = "localhost" if bound_host in ("0.0.0.0", "::") else shown_host
        click.echo(f"dx: in a browser open {app.sessions.login_url(f'http://{browser_host}:{bound_port}')}")
    if speculation.mode != "none":
        click.echo(f"dx: {speculation.describe()}")
    if head is not None:
        click.echo(f"dx: split across workers {', '.join(_split_list(workers))} (mutual TLS, {head.secret.path})")
    if api_key:
        click.echo(f"dx: API key {api_key} (in {api_key_path()}; send `Authorization: Bearer <key>`)")
    else:
        click.echo("dx: no API key required (--no-auth, loopback only)")
    sys.stdout.flush()

    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    if source is not None and not no_preload:
        def preload() -> None:
            try:
                manager.get(source.display_name)
            except Exception as exc:  # the first request will report it in the API's shape
                print(f"dx: preloading {source.display_name} failed: {exc}", file=sys.stderr)

        threading.Thread(target=preload, name="dx-preload", daemon=True).start()
    try:
        server.serve_forever(poll_interval=3600)  # SIGTERM/SIGINT interrupt it; no idle wake-ups
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        manager.close()
        if head is not None:
            head.close()
