"""Find the `llama-server` binary the runtime supervises.

Order (first hit wins), so a minted executable always uses the engine it was
built with and a developer checkout falls back to what is at hand:

1. bundled: ``engine/bin/llama-server`` next to the ``dx`` package (inside a
   Nuitka onefile bundle the engine directory is shipped as data there);
2. ``$DX_ENGINE`` (a path to a llama-server binary or an engine directory);
3. an installed engine wheel (``pip install 'dxbuild[cpu]'`` pulls ``dx-engine-cpu``):
   the first importable ``dx_engine_<tier>`` package, GPU tiers before cpu (each
   GPU engine carries the CPU kernels too), found with ``importlib.util.find_spec``
   — a path lookup, nothing imported — so ``pip install`` then ``dx serve`` needs no build;
4. the dxbuild engine cache: ``$DX_CACHE_DIR`` or ``~/.cache/dx`` →
   ``engines/cpu-linux-<arch>-*/bin/llama-server``, the newest ``engine.json``
   (the builder is not imported: the runtime must not depend on it);
5. ``llama-server`` on ``PATH``.

``$DX_ENGINE`` stays above the wheel: a path the user names wins over what pip installed.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from dx import config
from dxverify.errors import ConfigurationError

_BINARY = "llama-server"


def _bundled_engine() -> Path | None:
    here = Path(__file__).resolve().parents[1]  # the dx package (this module is dx/engine/locate.py)
    candidates = [here / "engine" / "bin" / _BINARY, here.parent / "engine" / "bin" / _BINARY]
    # Nuitka: the data files unpack next to the `dx` package (here.parent). Not
    # `__compiled__.containing_dir`: in onefile mode that is the folder holding the
    # executable, where anyone could drop an `engine/` of their own.
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _from_env() -> Path | None:
    value = config.engine_override()
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "bin" / _BINARY
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigurationError(
            f"DX_ENGINE={value} is not an executable llama-server",
            hint="point it at a llama-server binary or an engine directory with bin/llama-server",
        )
    return path


#: engine wheels' packages, in the order they are preferred (dxbuild.engine.wheel.package_name)
_WHEEL_PACKAGES = ("dx_engine_cuda13", "dx_engine_cuda12", "dx_engine_rocm", "dx_engine_vulkan",
                   "dx_engine_metal", "dx_engine_cpu")


def _from_wheel() -> Path | None:
    import importlib.util

    for name in _WHEEL_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            binary = Path(folder) / "bin" / _BINARY
            if binary.is_file() and os.access(binary, os.X_OK):
                return binary
    return None


def _cache_dir() -> Path:
    env = config.cache_dir_override()
    if env:
        return Path(env).expanduser()
    xdg = config.xdg_cache_home()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dx"


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _from_cache() -> Path | None:
    engines = _cache_dir() / "engines"
    if not engines.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for entry in engines.glob(f"cpu-linux-{_machine()}-*"):
        marker = entry / "engine.json"
        binary = entry / "bin" / _BINARY
        if not (marker.is_file() and binary.is_file() and os.access(binary, os.X_OK)):
            continue
        mtime = marker.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, binary)
    return best[1] if best else None


def locate_engine() -> Path:
    """Return the llama-server to run, or raise a ConfigurationError saying where we looked."""
    for finder in (_bundled_engine, _from_env, _from_wheel, _from_cache):
        found = finder()
        if found is not None:
            return found
    on_path = shutil.which(_BINARY)
    if on_path:
        return Path(on_path)
    raise ConfigurationError(
        "no llama-server engine found (looked in the bundle, $DX_ENGINE, the dx-engine-* wheels, "
        f"{_cache_dir() / 'engines'} and PATH)",
        hint="`pip install 'dxbuild[cpu]'`, build one with `dxbuild engine --tier cpu`, "
             "or set DX_ENGINE=/path/to/llama-server",
    )


_RPC_SERVERS = ("ggml-rpc-server", "rpc-server")  # the pinned llama.cpp's name, and the older one


def locate_rpc_server() -> Path:
    """The RPC worker from the same build as the engine `locate_engine` picks (client and server must match)."""
    engine = locate_engine()
    for name in _RPC_SERVERS:
        path = engine.parent / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigurationError(
        f"the engine at {engine.parent} has no ggml-rpc-server (built without GGML_RPC)",
        hint="rebuild it with `dxbuild engine --tier cpu`, or set DX_ENGINE to an engine built with RPC",
    )
