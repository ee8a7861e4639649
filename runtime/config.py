"""Every environment variable the runtime reads, in one place (like Ollama's ``envconfig``).

Each setting is a function, read when asked (tests and ``dx serve`` change the
environment at run time), named after what it means rather than the variable.
Only the standard library: this module sits at the bottom of the runtime's layers.
"""

from __future__ import annotations

import os
from pathlib import Path

# Options click reads from the environment (``dx serve``'s envvar=...): the names live here too.
HOST_ENV = "DX_HOST"
PORT_ENV = "DX_PORT"
API_KEY_ENV = "DX_API_KEY"
ALLOWED_HOSTS_ENV = "DX_ALLOWED_HOSTS"
ALLOW_ORIGINS_ENV = "DX_ALLOW_ORIGINS"
SWARM_SECRET_ENV = "DX_SWARM_SECRET"
SELF_EXECUTABLE_ENV = "DX_SELF_EXECUTABLE"
OLLAMA_REGISTRY_ENV = "DX_OLLAMA_REGISTRY"
OLLAMA_TOKEN_ENV = "DX_OLLAMA_TOKEN"
PULL_PARTS_ENV = "DX_PULL_PARTS"
PULL_STALL_ENV = "DX_PULL_STALL_S"
CUDA_RUNTIME_ENV = "DX_CUDA_RUNTIME"  # a directory with cuBLAS/cudart, tried first (read from the mapping dx.host.cuda_libs is given)


def dx_home() -> Path:
    """DX's own directory: ``$DX_HOME`` or ``~/.dx`` (models, API key, caches)."""
    env = os.environ.get("DX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".dx"


def api_key_env() -> str | None:
    """The API key a client command sends (``$DX_API_KEY``), None when unset or empty."""
    return os.environ.get(API_KEY_ENV) or None


def engine_override() -> str | None:
    """``$DX_ENGINE``: a llama-server binary or a directory holding one."""
    return os.environ.get("DX_ENGINE")


def cache_dir_override() -> str | None:
    """``$DX_CACHE_DIR``: DX's cache (built engines, bundles) instead of ``~/.cache/dx``."""
    return os.environ.get("DX_CACHE_DIR")


def pdeathsig_disabled() -> bool:
    """``DX_NO_PDEATHSIG=1``: do not tie the engine's life to dx's thread (debugging only)."""
    return os.environ.get("DX_NO_PDEATHSIG") == "1"


def ollama_models_dir() -> str | None:
    """``$OLLAMA_MODELS``: Ollama's own store, read-only to DX."""
    return os.environ.get("OLLAMA_MODELS")


def self_executable_override() -> str | None:
    """``$DX_SELF_EXECUTABLE``: the file to read an embedded model from instead of ``sys.argv[0]`` (tests, wrappers)."""
    return os.environ.get(SELF_EXECUTABLE_ENV) or None


def swarm_secret_env() -> str | None:
    """``$DX_SWARM_SECRET``: the swarm secret file (a path, never the secret itself)."""
    return os.environ.get(SWARM_SECRET_ENV) or None


def ollama_registry_override() -> str:
    """``$DX_OLLAMA_REGISTRY``: a registry base URL used instead of ``https://<host>`` ('' when unset)."""
    return (os.environ.get(OLLAMA_REGISTRY_ENV) or "").strip().rstrip("/")


def ollama_token_env() -> str | None:
    """``$DX_OLLAMA_TOKEN`` as set (None when unset or empty); sent only to the registry's own host."""
    return os.environ.get(OLLAMA_TOKEN_ENV) or None


def pull_parts_env() -> str:
    """``$DX_PULL_PARTS``: parallel Range parts of a big blob, as written ('' when unset)."""
    return (os.environ.get(PULL_PARTS_ENV) or "").strip()


def pull_stall_env() -> str:
    """``$DX_PULL_STALL_S``: seconds without a byte before a part is retried, as written ('' when unset)."""
    return os.environ.get(PULL_STALL_ENV, "") or ""


def xdg_cache_home() -> str | None:
    """``$XDG_CACHE_HOME`` (the base of DX's cache when ``$DX_CACHE_DIR`` is unset)."""
    return os.environ.get("XDG_CACHE_HOME") or None
