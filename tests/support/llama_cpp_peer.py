"""``llama-cpp-python[server]`` built from the very sdist DX pins, as the peer a Python user would pick.

The engine recipe (recipes/engine.toml) pins a ``llama-cpp-python`` sdist because it vendors llama.cpp
at a known commit; building the peer from those same bytes means both servers run the same llama.cpp,
so the benchmark compares what is wrapped around it. The venv lives under ``$DX_CACHE_DIR/peers``
(support.peers: temporary sibling, renamed into place, under a lock, log beside it), named by version and
Python, so only the first run pays for compiling llama.cpp (15-30 min on 2 cores; ccache is used when
installed). Delete the folder to rebuild.

Run it by hand to build it ahead of a benchmark: ``python tests/support/llama_cpp_peer.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.peers import _fail, _run, cached, peers_dir

# A plain CPU build, as `pip install llama-cpp-python` gives on a machine without CUDA (native CPU flags,
# llama.cpp's defaults), minus the pieces a server never needs.
CPU_CMAKE_ARGS = ["-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_BLAS=OFF", "-DLLAMA_CURL=OFF",
                  "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]


def pinned_sdist() -> tuple[str, Path]:
    """(version, archive) of the llama-cpp-python sdist recipes/engine.toml pins, downloaded and hash-checked."""
    from dxbuild.engine.source import download_sdist
    from dxbuild.paths import cache_dir
    from dxmatrix.recipes import load_engine_recipe

    src = load_engine_recipe().source
    if src.kind != "sdist" or src.package != "llama-cpp-python":
        raise AssertionError(f"the engine recipe pins {src.kind}:{src.package}, not a llama-cpp-python sdist")
    peers_dir().mkdir(parents=True, exist_ok=True)
    archive = download_sdist(src, cache_dir(), peers_dir() / "llama-cpp-python-download.log", echo=None)
    return src.version, archive


def venv_name(version: str) -> str:
    return f"llama-cpp-python-{version}-py{sys.version_info[0]}{sys.version_info[1]}"


def llama_cpp_python() -> Path:
    """The python of a venv holding ``llama-cpp-python[server]`` compiled from DX's pinned sdist."""
    version, archive = pinned_sdist()

    def build(tmp: Path, log: Path) -> None:
        if _run([sys.executable, "-m", "venv", str(tmp)], log).returncode:
            _fail("python -m venv", log)
        cmake_args = list(CPU_CMAKE_ARGS)
        if shutil.which("ccache"):
            cmake_args += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        env = {**os.environ, "CMAKE_ARGS": " ".join(cmake_args), "FORCE_CMAKE": "1",
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        # pip's own build isolation fetches scikit-build-core; the sdist is given by path so pip builds
        # exactly these (hash-checked) bytes; the [server] extra brings uvicorn, fastapi, sse-starlette.
        if _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                 "--no-cache-dir", "-v", f"llama-cpp-python[server] @ file://{archive}"], log, env=env).returncode:
            _fail(f"pip install llama-cpp-python[server]=={version} (from {archive.name})", log)

    return cached(venv_name(version), build) / "bin" / "python"


if __name__ == "__main__":
    print(llama_cpp_python())
