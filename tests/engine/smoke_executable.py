"""The smoke test of a minted executable: serve, one answer, stop. Standard library only.

The suite runs it on what it mints here (tests/engine/test_smoke_executable.py,
the vulkan tier's tests) and the release workflow runs the same file on every
CPU cell's mint, so "it answers" means the same thing on a laptop and a runner:

    python tests/engine/smoke_executable.py dist/dx-smollm2-cpu-linux-x86_64 [--env K=V ...]

Exit 0 with the answer on stdout; otherwise exit 1 with one line saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

QUESTION = "What is the capital of France? Answer in one word."


@dataclass
class Serving:
    """A minted executable serving in a fresh HOME: its URL, key and what it printed so far."""

    proc: subprocess.Popen[str]
    url: str
    key: str | None
    home: Path
    output: list[str] = field(default_factory=list)   # stdout + stderr lines, still being appended

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


@contextlib.contextmanager
def serving(exe: Path, *, env: Mapping[str, str] | None = None, home: Path | None = None,
            start_timeout: float = 300) -> Iterator[Serving]:
    """Start ``exe`` with no arguments (it serves its embedded model) in a fresh HOME; stop it after."""
    home = home or Path(tempfile.mkdtemp(prefix="dx-smoke-"))
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("DX_", "PYTHON", "OLLAMA_", "OPENAI_"))}
    run_env.update(HOME=str(home), USERPROFILE=str(home), TMPDIR=str(home / "tmp"), DX_PORT="0")
    run_env.update(env or {})
    proc = subprocess.Popen([str(exe)], env=run_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith("dx: serving ") and " on http" in line:
                found["url"] = line.split(" on ", 1)[1].strip()
            elif line.startswith("dx: API key "):
                found["key"] = line.split()[3]
            if "url" in found and ("key" in found or line.startswith("dx: no API key")):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(start_timeout) or "url" not in found:
            raise RuntimeError(f"{exe.name} did not start serving in {start_timeout:.0f} s: {' | '.join(lines[-5:])}")
        yield Serving(proc=proc, url=found["url"], key=found.get("key"), home=home, output=lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(run: Serving, question: str = QUESTION, *, max_tokens: int = 16, timeout: float = 600) -> str:
    """One greedy chat answer through dx's OpenAI route, with the standard library."""
    headers = {"Content-Type": "application/json", **run.headers}
    with urllib.request.urlopen(urllib.request.Request(run.url + "/v1/models", headers=headers),
                                timeout=60) as resp:
        model = json.load(resp)["data"][0]["id"]   # the embedded model comes first
    body = json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": question}]}).encode()
    req = urllib.request.Request(run.url + "/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.load(resp)
    answer = reply["choices"][0]["message"]["content"]
    if not isinstance(answer, str) or not answer.strip():
        raise RuntimeError(f"the executable answered with no text: {reply}")
    return answer


def smoke(exe: Path, *, env: Mapping[str, str] | None = None, home: Path | None = None) -> tuple[str, list[str]]:
    """Serve, ask once, stop: (the answer, what the executable printed)."""
    with serving(exe, env=env, home=home) as run:
        t0 = time.monotonic()
        answer = ask(run)
        run.output.append(f"(answered in {time.monotonic() - t0:.1f} s)")
        return answer, run.output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a minted executable, ask it one question, stop it.")
    ap.add_argument("exe", type=Path)
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the executable")
    args = ap.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.env)
    try:
        answer, _ = smoke(args.exe.resolve(), env=extra)
    except Exception as e:  # a smoke test reports any failure as one line
        print(f"smoke: {args.exe}: {e}", file=sys.stderr)
        return 1
    print(f"smoke: {args.exe.name} answered: {answer.strip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
