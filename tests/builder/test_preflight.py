"""A doomed mint fails in its first second, with one line, before any download or compile."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dxbuild import preflight
from dxbuild.mint import plan_cell
from dxverify.errors import ConfigurationError, EnvironmentProblem, UnsupportedError


def _plan(tmp_path: Path, tier: str = "cpu", model: str | None = "smollm2", **kw: object) -> preflight.Plan:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    p = preflight.plan(plan_cell(tier), model, out, None, cache)  # type: ignore[arg-type]
    return preflight.Plan(**{**p.__dict__, **kw})  # type: ignore[arg-type]


def test_unbuildable_tier_is_refused(tmp_path: Path) -> None:
    problem = preflight.tier_problem(_plan(tmp_path, "cuda12"))
    assert isinstance(problem, UnsupportedError)
    assert "cannot mint cuda12-linux-x86_64 on this machine" in str(problem)
    assert preflight.tier_problem(_plan(tmp_path, "cpu")) is None


def test_missing_python_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.sysconfig, "get_paths", lambda: {"include": str(tmp_path / "no-include")})
    problem = preflight.nuitka_problem(_plan(tmp_path))
    assert isinstance(problem, EnvironmentProblem) and "python3-dev" in str(problem)


def test_disk_space_counts_model_and_runtime(tmp_path: Path) -> None:
    p = _plan(tmp_path, model_size=2_000_000_000, model_cached=False)
    problem = preflight.disk_problem(p, free=lambda d: 1_000_000_000)
    assert isinstance(problem, EnvironmentProblem)
    text = str(problem)
    assert "not enough disk space" in text and "model 2,000 MB" in text and "1,000 MB are free" in text
    # output and cache on one filesystem: both needs are added up (model twice: download + executable)
    assert "about 4," in text
    assert preflight.disk_problem(p, free=lambda d: 10_000_000_000) is None


def test_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    problem = preflight.cache_problem(_plan(tmp_path, cache=blocker / "cache"))
    assert isinstance(problem, EnvironmentProblem) and "is not writable" in str(problem)


def test_unreadable_signing_key(tmp_path: Path) -> None:
    problem = preflight.key_problem(_plan(tmp_path, signing_key=tmp_path / "missing.key"))
    assert isinstance(problem, ConfigurationError) and "cannot be read" in str(problem)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    assert preflight.key_problem(_plan(tmp_path, signing_key=bad)) is not None


def test_network_is_checked_only_for_a_download(tmp_path: Path) -> None:
    p = _plan(tmp_path, model="llama3.2", model_cached=False, download_host="huggingface.co:443")
    problem = preflight.network_problem(p, lookup=lambda h, port: False)
    assert isinstance(problem, EnvironmentProblem) and "huggingface.co cannot be resolved" in str(problem)
    assert preflight.network_problem(p, lookup=lambda h, port: True) is None
    cached = _plan(tmp_path, model="llama3.2", model_cached=True, download_host=None)
    assert preflight.network_problem(cached, lookup=lambda h, port: False) is None


def test_model_needs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 1000)
    assert preflight.model_needs(str(gguf), tmp_path) == (1000, True, None)
    with pytest.raises(ConfigurationError, match="no such model file"):
        preflight.model_needs(str(tmp_path / "missing.gguf"), tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert preflight.model_needs("hf:o/r/f.gguf", tmp_path) == (None, False, "127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert preflight.model_needs("hf:o/r/f.gguf", tmp_path)[1] is True


def _dxbuild(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    import os

    e = {**os.environ, "DX_CACHE_DIR": str(tmp_path / "cache"), **env}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "dxbuild", *args, "-o", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, env=e)
    return res, time.monotonic() - t0


def test_motto_command_on_this_machine_fails_in_the_first_second(tmp_path: Path) -> None:
    """`dxbuild --gpu cuda12 --model llama3.2`: no CUDA 12 toolkit here → refused before the model step."""
    res, wall = _dxbuild(["--gpu", "cuda12", "--model", "llama3.2"], tmp_path)
    assert res.returncode == 5, res.stderr
    assert res.stderr.count("\n") == 1 and "cannot mint cuda12" in res.stderr, res.stderr
    assert "internal error" not in res.stderr and "[1/" not in res.stderr  # no pipeline step started
    assert not list((tmp_path / "cache").rglob("*.gguf*")), "nothing was downloaded"
    assert wall < 15, wall  # a python start-up, not a download (generous for a loaded CI machine)


def test_unreachable_model_host_is_one_line(tmp_path: Path) -> None:
    res, _ = _dxbuild(["--gpu", "cpu", "--model", "hf:owner/repo/model.gguf"], tmp_path,
                      HF_ENDPOINT="http://no-such-host.invalid", HF_HUB_OFFLINE="0")
    assert res.returncode == 7, res.stderr
    assert "no-such-host.invalid cannot be resolved" in res.stderr and res.stderr.count("\n") == 1, res.stderr
