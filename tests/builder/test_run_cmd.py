"""run_cmd: the one subprocess helper — announces, logs, and fails in one line."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dxbuild import run_cmd as run_cmd_module
from dxbuild.run_cmd import capture, format_cmd, require_tool, run_cmd
from dxverify.errors import ToolError


def test_success_streams_output_to_log_and_lines(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "step.log"
    seen: list[str] = []
    announced: list[str] = []
    run_cmd([sys.executable, "-c", "print('one'); print('two')"], log=log,
            on_line=seen.append, echo=announced.append)
    assert seen == ["one", "two"]
    assert announced and announced[0].startswith("+ ") and "print(" in announced[0]
    text = log.read_text()
    assert "one\ntwo\n" in text and text.startswith("+ ") and "exit status 0" in text


def test_failure_raises_tool_error_with_tail_and_log_path(tmp_path: Path) -> None:
    log = tmp_path / "fail.log"
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    with pytest.raises(ToolError) as ei:
        run_cmd([sys.executable, "-c", script], log=log, echo=None, what="compile")
    msg = str(ei.value)
    assert msg.startswith("compile failed (exit status 3)")
    assert str(log) in msg
    assert "line 99" in msg and "line 10\n" not in msg   # only the tail
    assert "line 0" in log.read_text()                  # the log keeps everything
    assert ei.value.exit_code == 6


def test_missing_tool_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="'no-such-tool-dx' was not found"):
        run_cmd(["no-such-tool-dx", "--version"], log=tmp_path / "x.log", echo=None)
    with pytest.raises(ToolError, match="not found"):
        require_tool("no-such-tool-dx")


def test_env_replaces_environment(tmp_path: Path) -> None:
    out = capture([sys.executable, "-c", "import os; print(os.environ.get('DX_PROBE'))"],
                  env={"DX_PROBE": "yes", "PATH": "/usr/bin:/bin"})
    assert out.strip() == "yes"


def test_capture_failure_names_command() -> None:
    with pytest.raises(ToolError, match="exit status 2"):
        capture([sys.executable, "-c", "import sys; sys.exit(2)"])


def test_format_cmd_quotes() -> None:
    assert format_cmd(["a b", "c"]) == "'a b' c"


# A tool that starts a job in a process group of its own, as ninja does for every
# compile, and waits for it; the job prints "ready <pid>" once it is set up.
# argv[1] == "ignore-term": both ignore SIGTERM, as a wedged tool would.
TOOL_WITH_JOB = r"""
import os, signal, subprocess, sys
ignore = sys.argv[1] == "ignore-term"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
job = ("import os, signal, time\n"
       + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore else "")
       + "print('ready', os.getpid(), flush=True)\ntime.sleep(60)\n")
subprocess.Popen([sys.executable, "-c", job], preexec_fn=lambda: os.setpgid(0, 0)).wait()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"   # an orphan's zombie waits for init to reap it


def _assert_gone(pid: int) -> None:
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)   # leave nothing behind
        raise AssertionError(f"the job (pid {pid}) outlived the interrupted tool")


def _interrupt_when_ready(tmp_path: Path, mode: str) -> tuple[int, float]:
    """Run TOOL_WITH_JOB, press "Ctrl-C" once the job is up; the job's pid and how long stopping took."""
    job: list[int] = []
    stopped_at: list[float] = []

    def on_line(line: str) -> None:
        if line.startswith("ready "):
            job.append(int(line.split()[1]))
            stopped_at.append(time.monotonic())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cmd([sys.executable, "-c", TOOL_WITH_JOB, mode], log=tmp_path / "tool.log", echo=None,
                on_line=on_line)
    assert "interrupted; tool stopped" in (tmp_path / "tool.log").read_text()
    return job[0], time.monotonic() - stopped_at[0]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_interrupt_stops_jobs_in_their_own_process_group(tmp_path: Path) -> None:
    job, took = _interrupt_when_ready(tmp_path, "plain")
    _assert_gone(job)
    assert took < run_cmd_module.STOP_GRACE_S   # SIGTERM was enough; no waiting out the grace period


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_interrupt_kills_a_tool_tree_that_ignores_sigterm(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_cmd_module, "STOP_GRACE_S", 1.0)
    job, took = _interrupt_when_ready(tmp_path, "ignore-term")
    _assert_gone(job)
    assert 1.0 <= took < 5.0   # the grace period, then SIGKILL


class _Stopped(Exception):
    pass


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def test_a_signal_while_a_tool_starts_is_held_until_it_can_be_stopped() -> None:
    """Raised inside Popen after the fork, the interrupt would lose the child; held, it comes after."""
    old = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        got_through = False
        with pytest.raises(_Stopped), run_cmd_module._interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):   # Python runs signal handlers between bytecodes: here, if not held
                time.sleep(0)
            got_through = True
        assert got_through
        assert signal.getsignal(signal.SIGTERM) is _raise_stopped
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with run_cmd_module._interrupts_held():   # an ignored signal stays ignored
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
