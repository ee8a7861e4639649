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
