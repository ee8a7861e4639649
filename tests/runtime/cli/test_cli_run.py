"""`dx run` against the real cpu engine and SmolLM2: one-shot, piped stdin, a chat on a terminal,
and through a running `dx serve` (--host)."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ASK = ["--temperature", "0", "--seed", "1", "--max-tokens", "48"]
# SmolLM2-135M answers this one reliably at temperature 0 ("The capital of France is Paris.").
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def run_env(tmp_path_factory: pytest.TempPathFactory, cpu_engine: Path, smollm2_gguf: Path) -> dict[str, str]:
    home = tmp_path_factory.mktemp("dxhome")
    env = {**os.environ, "DX_HOME": str(home), "DX_ENGINE": str(cpu_engine),
           "OLLAMA_MODELS": str(home / "no-ollama"), "DX_HOST": ""}
    for k in ("DX_DEBUG", "DX_API_KEY"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "dx", "pull", str(smollm2_gguf), "--name", "smollm2"],
                       capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return env


def engines_running(home: str) -> list[int]:
    """llama-server processes serving a model from this test's DX_HOME (read from /proc, killed by no one)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"llama-server") and any(home.encode() in a for a in cmd):
                pids.append(int(p.name))
    return pids


def dx(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dx", *args], capture_output=True, text=True, env=env,
                          input="" if stdin is None else stdin, timeout=180)


def test_one_shot_streams_an_answer_and_leaves_no_engine(run_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "dx", "run", "smollm2", QUESTION, *ASK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=run_env)
    chunks: list[bytes] = []
    assert proc.stdout is not None
    while chunk := os.read(proc.stdout.fileno(), 65536):
        chunks.append(chunk)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=60) == 0, err
    answer = b"".join(chunks).decode()
    assert re.search(r"[A-Za-z]{3}", answer), answer
    assert "Paris" in answer, answer
    assert len(chunks) > 1, "the answer arrived in one piece: not streamed"
    assert engines_running(run_env["DX_HOME"]) == []


def test_piped_stdin_is_the_prompt(run_env: dict[str, str], smollm2_gguf: Path) -> None:
    r = dx("run", str(smollm2_gguf), *ASK, env=run_env, stdin=QUESTION + "\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # PROMPT and piped text together: the prompt first, then what came on stdin.
    r = dx("run", "smollm2", "Answer in one word.", *ASK, env=run_env, stdin="What is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def read_until(fd: int, pattern: bytes, timeout: float = 90) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while pattern not in buf:
        left = end - time.monotonic()
        assert left > 0, f"timed out waiting for {pattern!r}; got {buf[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            buf += data
    return buf


def test_interactive_chat_on_a_terminal(run_env: dict[str, str]) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dx", "run", "smollm2", *ASK], stdin=slave, stdout=slave,
                            stderr=slave, env=run_env, close_fds=True)
    os.close(slave)
    try:
        read_until(master, b">>> ")
        os.write(master, QUESTION.encode() + b"\n")
        first = read_until(master, b">>> ")
        assert b"Paris" in first, first
        os.write(master, b"/bye\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert engines_running(run_env["DX_HOME"]) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dx_server(run_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dx", "serve", "smollm2", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env=run_env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving" in line, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_run_and_ps_through_a_running_server(run_env: dict[str, str], dx_server: str) -> None:
    # The API key comes from $DX_HOME/api_key, written by `dx serve`.
    r = dx("run", "smollm2", QUESTION, *ASK, "--host", dx_server, env=run_env)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    r = dx("run", "smollm2", *ASK, env={**run_env, "DX_HOST": dx_server}, stdin=QUESTION)
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    r = dx("ps", "--host", dx_server, env=run_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert "smollm2" in r.stdout
    r = dx("run", "smollm2", "hi", "--host", dx_server, env={**run_env, "DX_API_KEY": "wrong"})
    assert r.returncode == 8 and "HTTP 401" in r.stderr and r.stderr.count("\n") == 1
    r = dx("run", "nothing", "hi", "--host", dx_server, env=run_env)
    assert r.returncode == 8 and "nothing" in r.stderr and r.stderr.count("\n") == 1


def test_run_pulls_an_hf_model_on_first_use(run_env: dict[str, str], smollm2_gguf: Path) -> None:
    from support.hub_server import FakeHub

    hub = FakeHub()
    hub.add("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2.gguf", smollm2_gguf)
    hub.start()
    try:
        env = {**run_env, "HF_ENDPOINT": hub.url}
        spec = "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.gguf"
        r = dx("run", spec, QUESTION, *ASK, env=env)
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout
        assert len(hub.gets("smollm2.gguf")) == 1
    finally:
        hub.stop()
    # Pulled once: the next run needs no Hub at all.
    r = dx("run", spec, QUESTION, *ASK, env={**run_env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
