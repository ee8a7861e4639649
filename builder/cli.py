"""The `dxbuild` command line."""

from __future__ import annotations

import sys

import click

from dxbuild import __version__
from dxbuild.engine_cli import register as register_engine_commands
from dxbuild.trust_cli import register as register_trust_commands
from dxverify.cli_errors import run_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dxbuild")
def cli() -> None:
    """dxbuild — mint self-contained LLM executables."""


register_trust_commands(cli)  # keygen, sign, verify-release, manifest, bench, repro
register_engine_commands(cli)  # engine, matrix, schema


def main() -> None:
    sys.exit(run_cli(cli, "dxbuild"))
