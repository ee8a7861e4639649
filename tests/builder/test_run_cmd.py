"""run_cmd: the one subprocess helper — announces, logs, and fails in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
