"""Heavy peer programs the client tests drive, installed once into the DX cache and reused.

Open WebUI (a few GB of Python: torch, chromadb, onnxruntime, ...) cannot share the test venv (it pins
its own langchain-core, openai, anthropic), and the npm ``ollama`` client lives in node_modules. Each gets
one folder under ``$DX_CACHE_DIR/peers`` (``~/.cache/dx/peers``), named by the version it holds, built in
a temporary sibling folder and renamed into place when complete, under a lock so two suites running side
by side build it once. A folder that is there is used as is: delete it to rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

OPEN_WEBUI_VERSION = "0.12.4"
NPM_OLLAMA_VERSION = "0.6.4"
# Open WebUI needs torch (sentence-transformers); PyPI's default wheel brings ~3 GB of CUDA libraries.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def peers_dir() -> Path:
    from dxbuild.paths import cache_dir

    return cache_dir() / "peers"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], log: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    with open(log, "a") as out:
        out.write(f"+ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, text=True, **kw)  # type: ignore[call-overload]


def cached(name: str, build: Callable[[Path, Path], None]) -> Path:
    """``peers/<name>``, built by ``build(tmp_dir, log)`` into a temporary sibling the first time.

    The log of the last build stays beside it as ``<name>.log`` (with the seconds it took).
    """
    final = peers_dir() / name
    if final.is_dir():
        return final
    with _locked(peers_dir() / f".{name}.lock"):
        if final.is_dir():  # another suite built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=peers_dir()))
        tmp.chmod(0o755)
        log = peers_dir() / f"{name}.log"
        log.write_text("")
        start = time.monotonic()
        try:
            build(tmp, log)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with open(log, "a") as out:
            out.write(f"built in {time.monotonic() - start:.0f} s\n")
        os.rename(tmp, final)
    return final


def _fail(what: str, log: Path) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"{what} failed (log: {log}):\n{tail}")


def open_webui_python() -> Path:
    """The python of a venv holding ``open-webui==OPEN_WEBUI_VERSION`` (first build: several minutes)."""
    name = f"open-webui-{OPEN_WEBUI_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"

    def build(tmp: Path, log: Path) -> None:
        if _run([sys.executable, "-m", "venv", str(tmp)], log).returncode:
            _fail("python -m venv", log)
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        # torch for the CPU first (a wheel in pip's own find-links, else PyTorch's CPU index), so that
        # open-webui's requirements do not pull the CUDA build (~3 GB more); PyPI's torch when neither is there.
        _run([*pip, "--no-deps", "--no-index", "--only-binary=:all:", "torch"], log)
        if _run([*pip, "--retries", "1", "--timeout", "30", "--index-url", TORCH_CPU_INDEX,
                 "--extra-index-url", "https://pypi.org/simple", "torch"], log).returncode:
            _run([*pip, "torch"], log)
        if _run([*pip, "torch", f"open-webui=={OPEN_WEBUI_VERSION}"], log).returncode:
            _fail(f"pip install open-webui=={OPEN_WEBUI_VERSION}", log)

    return cached(name, build) / "bin" / "python"


def npm_ollama() -> Path:
    """A folder whose node_modules holds the npm ``ollama`` client (``NODE_PATH=<it>/node_modules``)."""
    from support.tools import need

    npm = need("npm")

    def build(tmp: Path, log: Path) -> None:
        (tmp / "package.json").write_text('{"private": true}\n')
        if _run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp),
                 f"ollama@{NPM_OLLAMA_VERSION}"], log).returncode:
            _fail(f"npm install ollama@{NPM_OLLAMA_VERSION}", log)

    return cached(f"npm-ollama-{NPM_OLLAMA_VERSION}", build)
