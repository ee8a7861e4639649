"""`dx serve [MODEL]`: the Ollama/OpenAI-compatible server.

Only the flags: they become one ``dx.server.app.ServeOptions`` and
``dx.server.app.serve`` (the composition root) does the rest. The server is
imported when the command runs, so ``dx --help`` and the other commands never load it.
"""

from __future__ import annotations

import click

from dx import config
from dx.engine import speculative

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def _split_list(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma- or space-separated lists alike."""
    return [item for value in values for item in value.replace(",", " ").split()]


@click.command("serve")
@click.argument("model", required=False)
@click.option("--host", default=DEFAULT_HOST, show_default=True, envvar=config.HOST_ENV,
              help="Address to listen on (env DX_HOST).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), envvar=config.PORT_ENV,
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
@click.option("--allowed-hosts", "allowed_hosts", multiple=True, envvar=config.ALLOWED_HOSTS_ENV, metavar="NAMES",
              help="Host names clients may use besides loopback and the bound address (comma-separated, "
                   "*.domain for subdomains, * for any; env DX_ALLOWED_HOSTS). Others get 403.")
@click.option("--allow-origins", "allow_origins", multiple=True, envvar=config.ALLOW_ORIGINS_ENV, metavar="ORIGINS",
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
    from dx.server.app import ServeOptions, serve
    from dx.server.context import ServerLimits

    serve(ServeOptions(
        model=model, host=host, port=port, auth=not no_auth, keep_alive=keep_alive, ctx=ctx, parallel=parallel,
        limits=ServerLimits(max_body=max_body << 20, max_connections=max_connections, max_requests=max_requests,
                            header_timeout=request_timeout),
        allowed_hosts=_split_list(allowed_hosts), allow_origins=_split_list(allow_origins),
        preload=not no_preload, access_log=access_log, workers=_split_list(workers), tensor_split=tensor_split,
        swarm_secret=swarm_secret, draft=draft, spec=spec, draft_max=draft_max, draft_min=draft_min,
    ))
