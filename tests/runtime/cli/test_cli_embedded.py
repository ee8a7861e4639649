"""A minted executable knows its own model: `python -m dx` pointed at a minted-format file.

``DX_SELF_EXECUTABLE`` makes the uncompiled runtime read the trailer of a file
laid out exactly as a mint lays it out (runtime bytes, padding, the real
SmolLM2, metadata, trailer), so every command runs as it would inside the
executable without a Nuitka build. The interactive chat starts the real engine.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_minted import fake_minted
from test_cli import SMOL_SHA, one_line_error

from dx.models import embedded


@pytest.fixture
def exe_env(tmp_path: Path, smollm2_gguf: Path) -> dict[str, str]:
    exe = fake_minted(tmp_path / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf)
    e = {**os.environ, "DX_HOME": str(tmp_path / "dxhome"), "OLLAMA_MODELS": str(tmp_path / "no-ollama"),
         "DX_HOST": "", embedded.SELF_ENV: str(exe)}
    for k in ("DX_DEBUG", "DX_API_KEY"):
        e.pop(k, None)
    return e


@pytest.fixture
def plain_env(exe_env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in exe_env.items() if k != embedded.SELF_ENV}


def dx(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dx", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=180)


def test_verify_without_a_path_checks_the_executable_itself(exe_env: dict[str, str]) -> None:
    r = dx("verify", env=exe_env)
    assert r.returncode == 0, r.stderr
    assert f"sha256 {SMOL_SHA} (matches trailer)" in r.stdout
    assert "model:   'smollm2' from test" in r.stdout
    assert r.stdout.strip().endswith("embedded at byte 65536")
    doc = json.loads(dx("verify", "--json", env=exe_env).stdout)
    assert doc["ok"] and doc["kind"] == "executable" and doc["path"] == exe_env[embedded.SELF_ENV]
    assert "architecture:   llama" in dx("inspect", env=exe_env).stdout


def test_verify_without_a_path_outside_an_executable_is_a_usage_error(plain_env: dict[str, str]) -> None:
    one_line_error(dx("verify", env=plain_env), 2, "verify needs a PATH", "dx verify FILE")
    one_line_error(dx("inspect", env=plain_env), 2, "inspect needs a PATH")


def test_a_damaged_executable_still_verifies_itself_and_says_why(exe_env: dict[str, str]) -> None:
    exe = Path(exe_env[embedded.SELF_ENV])
    with open(exe, "r+b") as f:
        f.seek(70_000)
        b = f.read(1)
        f.seek(70_000)
        f.write(bytes([b[0] ^ 1]))
    one_line_error(dx("verify", env=exe_env), 4, "SHA-256 mismatch")


def test_list_shows_the_embedded_model_with_the_stores(exe_env: dict[str, str], smollm2_gguf: Path) -> None:
    assert dx("pull", str(smollm2_gguf), "--name", "other:v1", env=exe_env).returncode == 0
    header, *rows = dx("list", env=exe_env).stdout.strip().splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "QUANT", "MODIFIED", "SOURCE"]
    assert rows[0].split()[:5] == ["smollm2", SMOL_SHA[:12], "98.4", "MB", "Q4_1"]
    assert rows[0].split()[-1] == "embedded"
    assert rows[1].split()[0] == "other:v1" and rows[1].split()[-1] == "file"
    listed = json.loads(dx("list", "--json", env=exe_env).stdout)
    assert listed[0]["name"] == "smollm2" and listed[0]["offset"] == 65536
    assert listed[0]["family"] == "llama" and listed[0]["parameter_size"] == "135M" and listed[0]["read_only"]


@pytest.mark.parametrize("args", [(), ("smollm2",), ("smollm2:latest",)], ids=["none", "name", "name:latest"])
def test_show_and_doctor_use_the_embedded_model(
    exe_env: dict[str, str], smollm2_gguf: Path, args: tuple[str, ...]
) -> None:
    r = dx("show", *args, env=exe_env)
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)
    assert r.stdout.startswith("name              smollm2\n")
    assert "architecture      llama" in r.stdout and "parameters        135M" in r.stdout
    assert "quantization      Q4_1" in r.stdout and f"sha256            {SMOL_SHA}" in r.stdout
    assert fields["path"] == exe_env[embedded.SELF_ENV]
    doc = json.loads(dx("doctor", *args, "--json", env=exe_env).stdout)
    assert doc["model"]["model"] == "smollm2" and doc["model"]["total_layers"] == 31
    assert doc["model"]["model_bytes"] == smollm2_gguf.stat().st_size


def test_names_outside_an_executable_still_go_to_the_store(plain_env: dict[str, str]) -> None:
    one_line_error(dx("doctor", "smollm2", env=plain_env), 2, "smollm2:latest")
    one_line_error(dx("show", env=plain_env), 2, "dx show needs a MODEL")
    doc = json.loads(dx("doctor", "--json", env=plain_env).stdout)
    assert doc["model"] is None


def test_run_without_arguments_means_the_embedded_model(exe_env: dict[str, str], plain_env: dict[str, str]) -> None:
    # stdin closed and no PROMPT: not "Missing argument 'MODEL'", but what to type instead.
    r = dx("run", env=exe_env)
    one_line_error(r, 2, "nothing on stdin and no PROMPT", 'run "Why is the sky blue?"')
    assert "MODEL" not in r.stderr
    one_line_error(dx("run", env=plain_env), 2, "dx run needs a MODEL")
    one_line_error(dx("run", "no/such/../name", "hi", env=plain_env), 2, "invalid model name")


@pytest.mark.integration
def test_run_without_arguments_chats_with_the_embedded_model(exe_env: dict[str, str], cpu_engine: Path) -> None:
    from test_cli_run import ASK, QUESTION, engines_running, read_until

    env = {**exe_env, "DX_ENGINE": str(cpu_engine)}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dx", "run", *ASK], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    try:
        banner = read_until(master, b">>> ")
        assert banner.lstrip().startswith(b"smollm2 "), banner
        os.write(master, QUESTION.encode() + b"\n")
        assert b"Paris" in read_until(master, b">>> ")
        os.write(master, b"/bye\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert engines_running(str(Path(env[embedded.SELF_ENV]).parent)) == []
