"""The `dx` command line. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import click

from dx import __version__
from dxverify.cli_errors import run_cli
from dxverify.verify_cli import SELF_PATH_META


def _self_path_with_model():  # type: ignore[no-untyped-def]
    from dx.models.embedded import self_path_with_model

    return self_path_with_model()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="dx")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """dx — a tiny Ollama- and OpenAI-compatible LLM server on llama.cpp.

    A minted executable with a model inside serves it when started with no arguments.
    """
    ctx.meta[SELF_PATH_META] = _self_path_with_model  # `verify`/`inspect` without PATH: this executable
    if ctx.invoked_subcommand is not None:
        return
    from dx.models.embedded import find_embedded

    if find_embedded() is None:
        click.echo(ctx.get_help())
        return
    from dx.cli.serve import serve_cmd

    ctx.invoke(serve_cmd)


@cli.command()
def version() -> None:
    """Print the dx version."""
    click.echo(f"dx {__version__}")


# dxverify.verify_cli imports only click at module level; the checks load when a command runs.
from dxverify.verify_cli import inspect_cmd, verify_cmd  # noqa: E402

cli.add_command(verify_cmd, "verify")
cli.add_command(inspect_cmd, "inspect")

# dx.cli.serve imports only click at module level; the server loads when `dx serve` runs.
from dx.cli.serve import serve_cmd  # noqa: E402

cli.add_command(serve_cmd, "serve")

# dx.cli.models imports only click at module level: run, list, show, pull, rm, cp, ps, doctor.
from dx.cli.models import COMMANDS as _MODEL_COMMANDS  # noqa: E402

for _cmd in _MODEL_COMMANDS:
    cli.add_command(_cmd)

# dx.cli.swarm imports only click at module level: swarm init, worker.
from dx.cli.swarm import COMMANDS as _SWARM_COMMANDS  # noqa: E402

for _cmd in _SWARM_COMMANDS:
    cli.add_command(_cmd)


@cli.command("top")
@click.option("--host", envvar="DX_HOST", default=None,
              help="The dx server (host[:port] or URL; DX_HOST; default 127.0.0.1:11434).")
@click.option("--once", is_flag=True, help="Print one snapshot (two scrapes a second apart) and exit.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between scrapes.")
def top_cmd(host: str | None, once: bool, interval: float) -> None:
    """A live dashboard of a running dx server: models, slots, KV cache, tokens/s, TTFT, errors.

    Reads the server's /metrics with the same host and key as `dx ps` (DX_API_KEY, else ~/.dx/api_key).
    On a terminal it redraws every second (q quits); piped, it prints one line per second.
    """
    from dx.cli.top import main as top_main  # dx.cli.top (and curses) load only when `dx top` runs

    top_main(host, once, interval)


def main() -> None:
    import sys

    sys.exit(run_cli(cli, "dx"))
