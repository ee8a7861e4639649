"""The one way dxbuild runs an external tool.

Every subprocess the builder starts goes through :func:`run_cmd` so that each
one is announced (``+ cmd``), its whole output lands in a log file the user can
open, and a failure becomes one :class:`~dxverify.errors.ToolError` line that
carries the last lines of output and the log path — never a traceback, never a
wall of compiler output on the terminal.

The child leads its own session: if the user presses Ctrl-C or the builder is
terminated, the whole tool tree (cmake → ninja → cc1plus …) is stopped and
waited for before the error goes on, so no orphaned compiler keeps writing into
a directory we are about to throw away.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from dxverify.errors import ToolError

#: How many trailing output lines a ToolError shows.
TAIL_LINES = 25
#: Seconds an interrupted tool tree gets to exit on SIGTERM before it is killed.
STOP_GRACE_S = 5.0

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
        proc: subprocess.Popen[str] | None = None
        try:
            with _interrupts_held():   # a Ctrl-C while the tool starts is raised once `proc` is set
                proc = _start(argv, cwd, env)
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                stripped = line.rstrip("\n")
                tail.append(stripped)
                if on_line:
                    on_line(stripped)
            rc = proc.wait()
        except BaseException:
            if proc is not None:
                _stop_tree(proc)
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


def _start(argv: list[str], cwd: Path | None, env: Mapping[str, str] | None) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
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


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a tool is being started; deliver them on the way out.

    Raised inside Popen after the fork, a KeyboardInterrupt would lose the child:
    it would build on with no one left to stop it. Only Python-level handlers are
    swapped (an ignored signal stays ignored), and only in the main thread, the one
    thread that runs them.
    """
    held: list[tuple[int, FrameType | None]] = []
    saved: dict[int, Callable[[int, FrameType | None], object]] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if callable(handler):
                saved[sig] = handler
                signal.signal(sig, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for signum, frame in held[:1]:
            saved[signum](signum, frame)


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


def _stop_tree(proc: subprocess.Popen[str]) -> None:
    """Stop every process of the child's session: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`.

    Signalling the child's process group is not enough: ninja starts each job in
    a process group of its own (so a terminal's Ctrl-C reaches ninja alone), and
    a job outlives a ninja that was killed before it could pass the signal on.
    Waiting for the child alone is not enough either: cmake exits on SIGTERM at
    once while ninja's compilers are still stopping. Where /proc names each
    process's session (Linux), all of the session is signalled and waited for;
    elsewhere, the child's group and the child.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = _session_members(proc.pid) or []
        if proc.poll() is None:
            targets.append(-proc.pid)   # the group, where /proc cannot list the session
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if _wait_gone(proc, STOP_GRACE_S):
            return


def _wait_gone(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Whether the child and the rest of its session exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None or _session_members(proc.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _session_members(sid: int) -> list[int] | None:
    """Live (not zombie) processes of session ``sid``; None where /proc cannot tell."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue   # exited meanwhile
        # after "pid (comm) ": state ppid pgrp session …; comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(name))
    return members


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While building or writing, SIGTERM unwinds like Ctrl-C: the tool tree is stopped and temp folders removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
