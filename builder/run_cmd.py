"""The one way dxbuild runs an external tool.

Every subprocess the builder starts goes through :func:`run_cmd` so that each
one is announced (``+ cmd``), its whole output lands in a log file the user can
open, and a failure becomes one :class:`~dxverify.errors.ToolError` line that
carries the last lines of output and the log path — never a traceback, never a
wall of compiler output on the terminal.

The child runs in its own process group: if the user presses Ctrl-C or the
builder is killed, the whole tool tree (cmake → ninja → cc1plus …) is stopped
too, so no orphaned compiler keeps writing into a directory we are about to
throw away.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dxverify.errors import ToolError

#: How many trailing output lines a ToolError shows.
TAIL_LINES = 25

Echo = Callable[[str], None]


def stderr_echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_cmd(cmd: Sequence[str | os.PathLike[str]]) -> str:
    """The command as a shell line the user can copy and re-run."""
    return " ".join(shlex.quote(os.fspath(c)) for c in cmd)


def require_tool(name: str, *, hint: str | None = None, path: str | None = None) -> str:
    """Absolute path of ``name`` on PATH (or ``path``), or a ToolError saying what to install."""
    found = shutil.which(name, path=path)
    if not found:
        raise ToolError(
            f"required tool {name!r} was not found on PATH",
            hint=hint or f"install {name} (e.g. `python3 -m pip install {name}`) and retry",
        )
    return found


def _resolve_program(cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None) -> list[str]:
    if not cmd:
        raise ValueError("run_cmd: empty command")
    argv = [os.fspath(c) for c in cmd]
    prog = argv[0]
    if os.sep in prog:
        if not os.access(prog, os.X_OK):
            raise ToolError(f"required tool {prog!r} does not exist or is not executable")
    else:
        argv[0] = require_tool(prog, path=(env or os.environ).get("PATH"))
    return argv


def run_cmd(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    echo: Echo | None = stderr_echo,
    what: str | None = None,
) -> None:
    """Run ``cmd``, appending its combined output to ``log``; raise ToolError on failure.

    ``on_line`` sees every output line as it arrives (used to drive a progress
    display from ninja's ``[n/N]``). ``what`` names the step in the error
    message ("CMake configure failed …"). ``env`` replaces the environment.
    """
    argv = _resolve_program(cmd, env)
    shown = format_cmd(cmd)
    if echo:
        echo(f"+ {shown}")
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log, "a", encoding="utf-8", errors="replace", buffering=1) as logf:
        logf.write(f"+ {shown}\n")
        if cwd:
            logf.write(f"  (in {cwd})\n")
        logf.flush()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except OSError as e:
            raise ToolError(f"could not start {argv[0]}: {e.strerror or e}") from e
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                stripped = line.rstrip("\n")
                tail.append(stripped)
                if on_line:
                    on_line(stripped)
            rc = proc.wait()
        except BaseException:
            _kill_group(proc)
            logf.write("\n[dxbuild] interrupted; tool stopped\n")
            raise
        logf.write(f"[dxbuild] exit status {rc}\n")
    if rc != 0:
        label = what or os.path.basename(argv[0])
        last = "\n".join(f"    {t}" for t in tail)
        raise ToolError(
            f"{label} failed (exit status {rc}); full log: {log}\n  last lines:\n{last}",
            hint=None,
        )


def capture(cmd: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> str:
    """Run a short query command (``cmake --version``) and return its stdout.

    For tools we only ask questions of; failures still become one ToolError line.
    """
    argv = _resolve_program(cmd, env)
    try:
        res = subprocess.run(
            argv, cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolError(f"{format_cmd(cmd)} could not run: {e}") from e
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise ToolError(f"{format_cmd(cmd)} failed (exit status {res.returncode}): {' | '.join(err)}")
    return res.stdout


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Stop the child's whole process group: TERM, then KILL after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait()
