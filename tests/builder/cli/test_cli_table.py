"""The `dxbuild` command table: every entry loads, under its own name; the mint flags are MintOptions' fields."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click

from dxbuild.cli import COMMANDS, cli
from dxbuild.cli.mint_cmd import mint_cmd
from dxbuild.context import MintOptions


def test_every_command_in_the_table_loads_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name, name
    assert cli.list_commands(ctx) == sorted(COMMANDS)


def test_mint_flags_are_the_mint_options() -> None:
    flags = {p.name for p in mint_cmd.params}
    assert flags == {f.name for f in dataclasses.fields(MintOptions)}
    assert flags == {p.name for p in cli.params if p.name != "version"}


def test_help_imports_no_command_module_heavier_than_click() -> None:
    code = ("import sys\nfrom dxbuild.cli import cli\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('jinja2', 'cryptography', 'sigstore', 'dxbuild.mint', 'dxbuild.engine.build',"
            " 'dxbuild.bundle.nuitka', 'dxbuild.release.keys') if m in sys.modules]\nprint(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
