"""Start a real `python -m dx serve` subprocess for tests, on a free loopback port.

Each server gets its own DX_HOME/HOME (so the API key, store and logs are
isolated) and is found by the URL it prints. ``children()`` lists the engine
processes it started, read from /proc, so tests can kill them or check none is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import ollama
    import openai

_URL = re.compile(r"on (http://\S+)")
_KEY = re.compile(r"API key (\S+)")


def engine_binary(request: pytest.FixtureRequest) -> Path:
    """The cpu engine from the shared ``cpu_engine`` fixture (built and cached by dxbuild).

    DX_TEST_ENGINE=/path/to/llama-server overrides it, for a developer iterating
    on the runtime with an engine at hand.
    """
    env = os.environ.get("DX_TEST_ENGINE")
    if env:
        return Path(env)
    return Path(request.getfixturevalue("cpu_engine")) / "bin" / "llama-server"


def engine_without_prompt_cache(engine: Path, where: Path) -> Path:
    """A test-only wrapper that runs ``engine`` with ``--no-cache-prompt``, for tests that compare two
    answers at temperature 0 made through paths that cannot send ``cache_prompt: false`` (Ollama's
    API): a prompt served partly from a slot's cache is computed in other batch shapes, and SmolLM2's
    greedy answer can then part from the first one a few tokens in."""
    wrapper = where / "bin" / "llama-server"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(engine))} "$@" --no-cache-prompt\n')
    wrapper.chmod(0o755)
    return wrapper


class Clients:
    """The real ``openai`` and ``ollama`` clients on a server with ``url``, ``api_key`` and ``headers``."""

    url: str
    api_key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self, timeout: float = 120) -> openai.OpenAI:
        """``openai`` on this server's /v1, with its key, no retries."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=timeout)

    def ollama(self, timeout: float | None = 120) -> ollama.Client:
        """``ollama`` on this server, with its key."""
        import ollama

        return ollama.Client(host=self.url, headers=self.headers, timeout=timeout)


@dataclass
class DXServer(Clients):
    proc: subprocess.Popen
    url: str
    api_key: str | None
    home: Path
    stderr_path: Path
    lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def children(self, name: str = "llama-server") -> list[int]:
        """PIDs of processes named ``name`` whose parent is this server."""
        return [pid for pid, ppid, comm in _processes() if ppid == self.proc.pid and comm == name]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()


def stop_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM, up to 15 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _processes() -> list[tuple[int, int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                out.append((int(entry), int(fields[1]), comm))
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


# What the machine running the suite may have set for its own Ollama or dx: each would change every
# server a test starts (dx serve reads them, dx.config), so a test sets the ones it means.
_SERVE_VARIABLES = ("OLLAMA_", "DX_HOST", "DX_PORT", "DX_KEEP_ALIVE", "DX_CTX", "DX_PARALLEL", "DX_MAX_",
                    "DX_FLASH_ATTN", "DX_KV_CACHE_TYPE", "DX_ALLOW", "DX_API_KEY")


def dx_env(home: Path, engine: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVE_VARIABLES)}
    env.update(DX_HOME=str(home), HOME=str(home), PYTHONUNBUFFERED="1", OLLAMA_MODELS=str(home / "no-ollama"))
    if engine is not None:
        env["DX_ENGINE"] = str(engine)
    else:
        env.pop("DX_ENGINE", None)
    env.pop("DX_DEBUG", None)
    return env


def start_dx(
    tmp: Path, *args: str, engine: Path | None = None, model: str | None = None, timeout: float = 60.0,
    env: dict[str, str] | None = None, python: str = sys.executable, exe: Sequence[str] | None = None,
) -> DXServer:
    """Run ``dx serve [model] --port 0 *args`` and wait until it prints its URL (``python``: another venv's;
    ``exe``: another dx altogether, a minted executable, instead of ``python -m dx``)."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    stderr_path = tmp / "dx-serve.stderr"
    cmd = [*(exe or (python, "-m", "dx")), "serve", *([model] if model else []), "--port", "0", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=open(stderr_path, "wb"), env={**dx_env(home, engine), **(env or {})}, text=True,  # noqa: SIM115
    )
    deadline = time.monotonic() + timeout
    url, key, lines = None, None, []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if (m := _URL.search(line)) and url is None:
            url = m.group(1)
        if m := _KEY.search(line):
            key = m.group(1)
        if url and (key or "no API key" in line):
            return DXServer(proc, url, key, home, stderr_path, lines)
    proc.kill()
    proc.wait()
    raise AssertionError(f"dx serve did not start: {''.join(lines)} {stderr_path.read_text(errors='replace')}")


def serve_model(tmp: Path, gguf: Path, name: str, *args: str, engine: Path | None = None) -> DXServer:
    """``gguf`` imported into a fresh store under ``tmp`` as ``name``, then ``dx serve name *args`` (auth on)."""
    from dx.models.catalog import Store

    Store(root=tmp / "home", ollama_dir=False).import_file(gguf, name)
    return start_dx(tmp, *args, engine=engine, model=name)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
