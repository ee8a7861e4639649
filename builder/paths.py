"""Where DX keeps things: the project tree and the user's cache."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout that holds recipes/, matrix/ and ci/ (DX_ROOT overrides)."""
    env = os.environ.get("DX_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Content-addressed caches: sources, toolchains, engines, bundles, models.

    DX_CACHE_DIR overrides; otherwise $XDG_CACHE_HOME/dx or ~/.cache/dx.
    """
    env = os.environ.get("DX_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "dx").resolve()
