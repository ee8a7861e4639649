"""The `dxbuild` command line: one lazy command table.

``COMMANDS`` maps each subcommand to ``"module:attribute"``; a command's module
is imported only when that command runs or its help is shown (pip's
``commands_dict``, click's LazyGroup), so `dxbuild --help` imports click and
the mint options, nothing heavy. The root group is itself the mint: its options
are ``dxbuild mint``'s.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from dxbuild import __version__
from dxbuild.cli.mint_cmd import mint_options, run_mint
from dxbuild.context import MintOptions
from dxverify.cli_errors import run_cli

#: name -> "module:attribute" of the click command
COMMANDS = {
    "mint": "dxbuild.cli.mint_cmd:mint_cmd",                       # one executable (same as dxbuild's options)
    # the engine and the plan
    "engine": "dxbuild.cli.engine_cmds:engine_cmd",                # build or find the tier's llama.cpp engine
    "wheel": "dxbuild.cli.engine_cmds:wheel_cmd",                  # the engine as a dx-engine-TIER wheel
    "matrix": "dxbuild.cli.engine_cmds:matrix_cmd",                # the release matrix, or what builds here
    "schema": "dxbuild.cli.engine_cmds:schema_cmd",                # the recipes' and matrix's JSON schemas
    # a release
    "keygen": "dxbuild.cli.release_cmds:keygen",
    "sign": "dxbuild.cli.release_cmds:sign",
    "verify-release": "dxbuild.cli.release_cmds:verify_release_cmd",
    "manifest": "dxbuild.cli.release_cmds:manifest_cmd",
    "bench": "dxbuild.cli.release_cmds:bench",
    "size-report": "dxbuild.cli.release_cmds:size_report_cmd",
    "repro": "dxbuild.cli.release_cmds:repro",
    "runtime-pack": "dxbuild.cli.release_cmds:runtime_pack_cmd",
    "install-script": "dxbuild.cli.release_cmds:install_script",   # install.sh for one release
    "render-ci": "dxbuild.cli.release_cmds:render_ci_cmd",         # .github/workflows from ci/ and the matrix
}


class LazyGroup(click.Group):
    """A click group whose subcommands come from ``COMMANDS``, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command), target
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="dxbuild")
@mint_options
@click.pass_context
def cli(ctx: click.Context, **flags: Any) -> None:
    """dxbuild — mint self-contained LLM executables.

    `dxbuild --gpu TIER --model MODEL [-o DIR]` mints DIR/dx-MODEL-TIER-OS-ARCH;
    without --model it writes the bare runtime DIR/dx-TIER-OS-ARCH. With no
    options at all it prints this help.
    """
    if ctx.invoked_subcommand is not None:
        return
    given = [p for p in flags if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if not given:
        click.echo(ctx.get_help())
        return
    run_mint(MintOptions(**flags))


def main() -> None:
    sys.exit(run_cli(cli, "dxbuild"))
