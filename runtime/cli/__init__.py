"""The `dx` command line: one lazy command table.

``COMMANDS`` names each subcommand's module and attribute (pip's ``commands_dict``,
click's ``LazyGroup``); a command's module is imported only when that command runs
(or when ``--help`` lists it: each module imports only click at load), and each
command loads its heavy parts (the server, curses, the swarm's TLS) when it runs.
"""

from __future__ import annotations

import importlib

import click

from dx import __version__
from dxverify.cli_errors import run_cli
from dxverify.verify_cli import SELF_PATH_META  # imports only click at load


def _self_path_with_model():  # type: ignore[no-untyped-def]
    from dx.models.embedded import self_path_with_model

    return self_path_with_model()


# name -> "module:attribute" of the click command
COMMANDS: dict[str, str] = {
    "serve": "dx.cli.serve:serve_cmd",
    "run": "dx.cli.models:run_cmd",
    "list": "dx.cli.models:list_cmd",
    "show": "dx.cli.models:show_cmd",
    "pull": "dx.cli.models:pull_cmd",
    "push": "dx.cli.models:push_cmd",
    "rm": "dx.cli.models:rm_cmd",
    "cp": "dx.cli.models:cp_cmd",
    "create": "dx.cli.models:create_cmd",
    "ps": "dx.cli.models:ps_cmd",
    "doctor": "dx.cli.models:doctor_cmd",
    "swarm": "dx.cli.swarm:swarm_group",
    "worker": "dx.cli.swarm:worker_cmd",
    "top": "dx.cli.top:top_cmd",
    "mcp": "dx.cli.mcp:mcp_cmd",
    "verify": "dxverify.verify_cli:verify_cmd",
    "inspect": "dxverify.verify_cli:inspect_cmd",
}


def load_command(name: str) -> click.Command:
    """Import the module that holds ``name``'s command, now."""
    module, attr = COMMANDS[name].split(":")
    cmd = getattr(importlib.import_module(module), attr)
    if not isinstance(cmd, click.Command):
        raise TypeError(f"{COMMANDS[name]} is not a click command")
    return cmd


class LazyGroup(click.Group):
    """A click group whose subcommands come from ``COMMANDS``, imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
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
    ctx.invoke(load_command("serve"))


@cli.command()
def version() -> None:
    """Print the dx version."""
    click.echo(f"dx {__version__}")


def main() -> None:
    import sys

    sys.exit(run_cli(cli, "dx"))
