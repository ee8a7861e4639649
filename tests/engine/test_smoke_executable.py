"""The smoke test the release workflow runs on every CPU cell (tests/engine/smoke_executable.py),
run here the same way, as a script, on the cpu executable the suite mints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("smoke_executable.py")


def test_smoke_script_on_the_minted_cpu_executable(minted_smollm2: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), str(minted_smollm2)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"smoke: {minted_smollm2.name} answered: ")
    assert "paris" in r.stdout.lower()


def test_smoke_script_fails_in_one_line_on_a_broken_executable(tmp_path: Path) -> None:
    bad = tmp_path / "dx-broken"
    bad.write_text("#!/bin/sh\necho 'dx: cannot start' >&2\nexit 3\n")
    bad.chmod(0o755)
    r = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"smoke: {bad}: ") and "did not start" in r.stderr
