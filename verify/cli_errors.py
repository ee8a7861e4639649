"""Run a click command so that users see one line, never a traceback."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable

import click

from dxverify.errors import DXError, EnvironmentProblem

#: import name -> the pip distribution that provides it, where the two differ
_DISTRIBUTIONS = {"yaml": "pyyaml", "cyclonedx": "cyclonedx-python-lib", "nacl": "pynacl",
                  "google": "protobuf", "packageurl": "packageurl-python", "jwt": "pyjwt"}
#: exception class names (from libraries DX does not import here) that mean "the network failed"
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                   "NetworkError", "RemoteProtocolError", "ProxyError", "ConnectionError", "URLError",
                   "OfflineModeIsEnabled", "LocalEntryNotFoundError"}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 16:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _url_of(exc: BaseException) -> str | None:
    for attr in ("request", "url"):
        try:
            obj = getattr(exc, attr, None)
        except Exception:  # httpx raises when .request was never set
            obj = None
        url = getattr(obj, "url", obj)
        if url:
            return str(url)
    return None


def environment_problem(exc: BaseException) -> EnvironmentProblem | None:
    """The one-line EnvironmentProblem behind ``exc``, when it is one (a missing package, no network,
    a full disk, a permission), else None — then it really is a bug in DX."""
    for e in _chain(exc):
        name = type(e).__name__
        if isinstance(e, ModuleNotFoundError) and e.name:
            top = e.name.split(".")[0]
            dist = _DISTRIBUTIONS.get(top, top)
            return EnvironmentProblem(f"the Python module '{e.name}' is not installed",
                                      hint=f"python3 -m pip install {dist}")
        if name == "MissingOptionalDependencyException":
            return EnvironmentProblem(f"a Python package is missing: {e}",
                                      hint="python3 -m pip install --upgrade -e . (or reinstall dxbuild)")
        if isinstance(e, (socket.gaierror, ConnectionRefusedError)) or name in _NETWORK_ERRORS:
            where = _url_of(exc) or _url_of(e)
            at = f" ({where})" if where else ""
            return EnvironmentProblem(
                f"network unreachable{at}: {e}",
                hint="check the connection or proxy; HF_ENDPOINT / DX_OLLAMA_REGISTRY point at a mirror, "
                     "HF_HUB_OFFLINE=1 uses cached files, and a local .gguf path needs no network")
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return EnvironmentProblem(f"no space left on the device{where}",
                                      hint="free some space, or set DX_CACHE_DIR / -o to a bigger disk")
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where = f": {e.filename}" if e.filename else ""
            return EnvironmentProblem(f"{e.strerror or 'permission denied'}{where}",
                                      hint="fix the permissions, or choose another directory (-o, DX_CACHE_DIR, "
                                           "DX_HOME)")
        if isinstance(e, FileNotFoundError) and e.filename and os.sep not in str(e.filename):
            return EnvironmentProblem(f"'{e.filename}' was not found (no such file here, nor a program of that "
                                      "name on PATH)",
                                      hint="install it, or run `dxbuild matrix --host` to see what this machine lacks")
    return None


def run_cli(main: click.Group | click.Command, prog: str, argv: list[str] | None = None) -> int:
    """Invoke ``main``; turn DXError, environment problems and unexpected exceptions into one line.

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
    except Exception as e:
        if debug:
            raise
        problem = environment_problem(e)
        if problem is not None:
            click.echo(f"{prog}: error: {problem}", err=True)
            return problem.exit_code
        # a bug in DX: still one line, with how to get more
        click.echo(
            f"{prog}: internal error: {type(e).__name__}: {e} (re-run with --debug for a traceback)",
            err=True,
        )
        return 70


def entry(main: click.Group | click.Command, prog: str) -> Callable[[], None]:
    def _run() -> None:
        sys.exit(run_cli(main, prog))

    return _run
