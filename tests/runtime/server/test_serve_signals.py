"""`dx serve` stopped the moment it announces itself: SIGTERM ends it with 143, SIGINT with 0.

A minted executable is now dx itself (no onefile parent turning SIGTERM into SIGINT, issue #24),
so whoever waits for the "serving" line and stops the server at once (a supervisor, a test) must
meet the handlers already installed, not Python's default action (killed, -15).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 0)], ids=["sigterm", "sigint"])
def test_a_signal_right_after_the_announcement_is_handled(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    for i in range(3):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DX_HOME": str(tmp_path / f"home{i}")}
        proc = subprocess.Popen([sys.executable, "-m", "dx", "serve", "--no-auth", "--port", "0"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("dx: no API key"):
                break
        proc.send_signal(sig)
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == code, "".join(lines) + rest
        assert "Traceback" not in rest
