"""A minted executable serving its embedded model, as a user starts it: `./dx-smollm2-… serve --port N`.

A fresh HOME (so a fresh DX home and a new API key, read from what it prints), none of this machine's
DX_/OLLAMA_ variables, auth on. Its output is kept (``lines``) for failure messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from support.serve_harness import Clients, stop_process

# What a user types for the SmolLM2 executable's embedded model: the name `list` shows, without a tag.
MODEL = "smollm2"
# Sampling that makes SmolLM2's answers the same every run.
GREEDY = {"temperature": 0, "seed": 7}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_env(home: Path) -> dict[str, str]:
    """This machine's environment less anything that would tell the executable about DX or Ollama here."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DX_", "XDG_", "NUITKA_", "PYTHON", "OLLAMA_", "OPENAI_", "ANTHROPIC_"))}
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    return env


@dataclass
class MintedServer(Clients):
    proc: subprocess.Popen  # type: ignore[type-arg]
    url: str
    api_key: str
    home: Path
    lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self) -> None:
        stop_process(self.proc)


def start_minted(exe: Path, home: Path, *args: str, timeout: float = 180.0) -> MintedServer:
    """``exe serve --port <free> *args`` in a fresh HOME; returns once it printed its URL and API key."""
    port = free_port()
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), *args], env=fresh_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url, key = "", ""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if line.startswith("dx: serving ") and " on http://" in line:
                url = line.split(" on ", 1)[1].split()[0].rstrip("/")
            if line.startswith("dx: API key "):
                key = line.split()[3]
            if url and key:
                break
    finally:
        timer.cancel()
    if not (url and key):
        stop_process(proc)
        raise AssertionError(f"{exe.name} serve did not print its URL and API key:\n" + "\n".join(lines))
    server = MintedServer(proc, url, key, home, lines)

    def drain() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    return server
