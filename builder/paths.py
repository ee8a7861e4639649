"""Where DX keeps things: the user's cache, the shipped data, and the checkout generated files go to."""

from __future__ import annotations

import os
from pathlib import Path

from dxmatrix.resources import data_dir


def project_root() -> Path:
    """The checkout that committed, generated files are compared with and written to.

    ``dxbuild render-ci`` (``.github/workflows/``) and ``dxbuild schema --write``
    write here: ``$DX_ROOT``, else the checkout this package runs from (an
    editable install), else the current directory. Shipped data is never read
    from here: see :func:`ci_dir` and ``dxmatrix.resources``.
    """
    env = os.environ.get("DX_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "builder").is_dir():
        return here
    return Path.cwd()


def ci_dir() -> Path:
    """``ci/`` (the data package ``dxci``): Jinja2 templates, JSON schemas, the pinned sigstore root."""
    return data_dir("dxci", "ci")


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
