"""Run a click command so that users see one line, never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from dxverify.errors import DXError


def run_cli(main: click.Group | click.Command, prog: str, argv: list[str] | None = None) -> int:
    """Invoke ``main``; turn DXError and unexpected exceptions into one line.

    ``--debug`` anywhere on the command line (or DX_DEBUG=1) re-raises instead,
    so a developer gets the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("DX_DEBUG") == "1"
    if "--debug" in args:
        args.remove("--debug")
        debug = True
    try:
        rv = main.main(args=args, prog_name=prog, standalone_mode=False)
        return int(rv or 0)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    except DXError as e:
        if debug:
            raise
        click.echo(f"{prog}: error: {e}", err=True)
        return e.exit_code
    except Exception as e:  # a bug: still one line, with how to get more
        if debug:
            raise
        click.echo(
            f"{prog}: internal error: {type(e).__name__}: {e} (re-run with --debug for a traceback)",
            err=True,
        )
        return 70


def entry(main: click.Group | click.Command, prog: str) -> Callable[[], None]:
    def _run() -> None:
        sys.exit(run_cli(main, prog))

    return _run
