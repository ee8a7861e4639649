"""Start a real llama-server (natively, or under qemu-user) and talk to it: shared by the tier tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
          ready_s: float = 600) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``argv`` (a llama-server command line, without --host/--port) and yield (process, URL) once healthy."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_s
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"llama-server not healthy in {ready_s:.0f} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield proc, url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def chat(url: str, question: str = "What is the capital of France? Answer in one word.",
         max_tokens: int = 16, timeout: float = 600) -> str:
    """One greedy chat answer from llama-server's OpenAI route (non-empty, tokens counted)."""
    r = httpx.post(f"{url}/v1/chat/completions", timeout=timeout, json={
        "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    assert body["usage"]["completion_tokens"] > 0
    return text


def complete(url: str, prompt: str = "The capital of France is", n_predict: int = 4, timeout: float = 600) -> str:
    """A greedy raw completion from llama-server's /completion (few tokens: cheap under emulation)."""
    r = httpx.post(f"{url}/completion", timeout=timeout,
                   json={"prompt": prompt, "n_predict": n_predict, "temperature": 0, "seed": 42})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens_predicted"] > 0 and body["content"].strip(), body
    return str(body["content"])


def loaded_cpu_variant(log_text: str) -> str | None:
    """The CPU backend module ggml picked (``libggml-cpu-<variant>.so``), from the engine's log."""
    import re

    m = re.findall(r"loaded CPU backend from \S*libggml-cpu-([A-Za-z0-9_.]+)\.so", log_text)
    return m[-1] if m else None
