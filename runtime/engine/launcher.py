"""How an engine child is started so that it can never outlive ``dx``.

* ``PR_SET_PDEATHSIG`` (SIGKILL) set in the child between fork and exec, so a
  SIGKILLed ``dx`` takes its engines with it. The signal fires when the *thread*
  that forked the child exits, so every engine is forked from one long-lived
  launcher thread, never from a short-lived HTTP handler thread.
* a pipe-watch fallback for systems without prctl (and as a second line): a
  tiny ``sh`` watchdog blocks reading a pipe whose only writer is ``dx``; when
  ``dx`` dies the read returns EOF and the watchdog kills the engine's process
  group.

Also the small helpers an engine and a swarm worker share: a free loopback port,
a log's tail, the log directory, the CUDA libraries an engine child finds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dx import config
from dx.config import dx_home

if TYPE_CHECKING:
    from dx.host.cuda_libs import EngineCuda


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGKILL the child when its parent dies.

    libc and prctl are looked up here, in the parent, so the child only calls them.
    """
    if not sys.platform.startswith("linux") or config.pdeathsig_disabled():
        return None  # DX_NO_PDEATHSIG=1: leave it to the pipe watchdog (tests prove that path alone)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (ImportError, OSError, AttributeError):  # no ctypes in this bundle: the watchdog still covers it
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Launcher:
    """One long-lived thread that forks every engine (PDEATHSIG is per *thread*)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: list[tuple[Callable[[], object], list, threading.Event]] = []
        self._cond = threading.Condition(self._lock)

    def run(self, job: Callable[[], object]) -> object:
        if threading.current_thread() is threading.main_thread():
            return job()
        done = threading.Event()
        box: list = []
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dx-engine-launcher", daemon=True)
                self._thread.start()
            self._jobs.append((job, box, done))
            self._cond.notify()
        done.wait()
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, box, done = self._jobs.pop(0)
            try:
                box.append(("ok", job()))
            except BaseException as exc:  # handed back to the caller's thread
                box.append(("error", exc))
            done.set()


_launcher = _Launcher()

#: ggml's loadable GPU backend modules (next to llama-server) -> the name users know
_GPU_BACKENDS = {"vulkan": "Vulkan", "cuda": "CUDA", "hip": "ROCm"}
_devices_said = threading.Event()


def _say_engine_devices(binary: Path) -> None:
    """One line, once per process, for a GPU engine: the device it will use, or that it runs on the CPU.

    ggml quietly falls back to its CPU backend when a GPU backend finds no
    device; ``llama-server --list-devices`` (a fraction of a second) lists the
    GPU devices it can use, and none means CPU.
    """
    if _devices_said.is_set():
        return
    _devices_said.set()
    apis = [name for mod, name in _GPU_BACKENDS.items() if any(binary.parent.glob(f"*ggml-{mod}.*"))]
    if not apis:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
    cuda = _cuda_for(binary, env)
    if cuda.notice:  # a thin CUDA engine without cuBLAS or a driver: the one line names what to install
        print(cuda.notice, file=sys.stderr, flush=True)
        return
    env.update(cuda.env)
    try:
        out = subprocess.run([str(binary), "--list-devices"], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    listed = out.split("Available devices:", 1)[-1].split("\n")
    devices = [d.strip() for d in listed if d.strip() and d.strip() != "(none)"]
    if devices:
        print(f"dx: the engine runs on {'; '.join(devices)}", file=sys.stderr, flush=True)
    else:
        print(f"dx: the engine found no {' or '.join(apis)} device; running on the CPU", file=sys.stderr, flush=True)


def _cuda_for(binary: Path, env: dict[str, str]) -> EngineCuda:
    """A thin CUDA engine's cuBLAS/cudart search (dx.host.cuda_libs): env additions, log lines, notice."""
    from dx.host.cuda_libs import for_engine  # imported only when an engine starts: dx stays import-light

    return for_engine(binary, env)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 8) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def default_log_dir() -> Path:
    return dx_home() / "logs"
