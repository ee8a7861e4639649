"""`dxbuild` with bad inputs: one clear line each, exit code by kind, nothing half-written.

These run the real `dxbuild` command; every failure happens before the engine
or the bundle is built, so they are quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dxbuild.paths import project_root


def dxbuild(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dxbuild", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _one_clear_line(res: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("dxbuild: error:")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]


def test_unknown_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = dxbuild("--gpu", "cpu", "--model", "smollm3", "-o", str(out))
    _one_clear_line(res, 2, "unknown model 'smollm3'", "smollm2")
    assert not out.exists() or list(out.iterdir()) == []


def test_unknown_tier(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = dxbuild("--gpu", "tpu", "--model", "smollm2", "-o", str(out))
    _one_clear_line(res, 2, "unknown tier 'tpu'", "cpu")
    assert not out.exists()


def test_invalid_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 200)
    out = tmp_path / "out"
    res = dxbuild("--model", str(bad), "-o", str(out))
    _one_clear_line(res, 3, "bad.gguf")
    assert list(out.iterdir()) == []


def test_local_model_with_wrong_sha256(tmp_path: Path, smollm2_gguf: Path) -> None:
    out = tmp_path / "out"
    res = dxbuild("--model", str(smollm2_gguf), "--sha256", "ab" * 32, "-o", str(out))
    _one_clear_line(res, 4, "SHA-256", "ab" * 32)
    assert list(out.iterdir()) == []


@pytest.mark.integration
def test_recipe_whose_hash_differs_from_the_model(tmp_path: Path, smollm2_gguf: Path) -> None:
    """A recipe pinning a SHA-256 the downloaded bytes do not have: refused, nothing cached or written."""
    root = tmp_path / "root"
    shutil.copytree(project_root() / "recipes", root / "recipes")
    shutil.copytree(project_root() / "matrix", root / "matrix", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    models = root / "recipes" / "models.toml"
    wrong = "0" * 63 + "1"
    text = models.read_text()
    assert "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" in text
    models.write_text(text.replace("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", wrong))
    env = dict(os.environ, DX_ROOT=str(root), DX_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    res = dxbuild("--model", "smollm2", "-o", str(out), env=env)
    _one_clear_line(res, 4, "SHA-256", wrong)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "cache" / "models" / f"sha256-{wrong}").exists()


def test_output_dir_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        out = Path("/sys/fs")  # read-only even for root
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    res = dxbuild("--model", "smollm2", "-o", str(out))
    _one_clear_line(res, 2, "not writable", str(out))


def test_no_options_prints_help() -> None:
    res = dxbuild()
    assert res.returncode == 0
    assert "--gpu TIER" in res.stdout and "--model MODEL" in res.stdout
