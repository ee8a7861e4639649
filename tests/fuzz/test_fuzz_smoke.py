"""A short atheris run in the suite: the harness works and finds no unhandled exception quickly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_gguf.py")
# pyproject.toml's test extra: atheris; platform_system == 'Linux' and python_version < '3.13'
ATHERIS_PUBLISHED = sys.platform == "linux" and sys.version_info < (3, 13)


def test_fuzz_harness_short_run(tmp_path: Path) -> None:
    if not ATHERIS_PUBLISHED:
        pytest.skip("atheris (the test extra) is published for Linux and Python < 3.13 only")
    import atheris  # noqa: F401 - in the test extra here: a missing one fails
    corpus = tmp_path / "corpus"
    made = subprocess.run([sys.executable, HARNESS, "--make-corpus", corpus], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert len(list(corpus.iterdir())) >= 30
    runs = 20000
    r = subprocess.run(
        [sys.executable, HARNESS, f"-runs={runs}", "-seed=7", f"-artifact_prefix={tmp_path}/", corpus],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert "Uncaught Python exception" not in out, out[-3000:]
    assert r.returncode == 0, out[-3000:]
    assert f"Done {runs} runs" in out
    assert not list(tmp_path.glob("crash-*"))
