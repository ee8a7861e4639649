"""Where DX's shipped data is read from: the installed packages, found through ``importlib.resources``.

``recipes/`` is the data package ``dxrecipes``, ``ci/`` is ``dxci`` and
``matrix.toml`` sits in ``dxmatrix`` itself, so a plain ``pip install .`` finds
them as an editable checkout does. ``DX_ROOT`` names another tree holding
``recipes/``, ``matrix/`` and ``ci/`` (tests use it to try edited copies).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path


def data_dir(package: str, folder: str) -> Path:
    """The folder of data package ``package`` (``folder`` under ``$DX_ROOT`` when that is set)."""
    env = os.environ.get("DX_ROOT")
    if env:
        return Path(env).resolve() / folder
    return Path(str(importlib.resources.files(package)))


def recipes_dir() -> Path:
    """``recipes/``: engine.toml, tiers.toml, models.toml, patches/, schema/."""
    return data_dir("dxrecipes", "recipes")


def matrix_path() -> Path:
    """``matrix/matrix.toml``: the release matrix."""
    return data_dir("dxmatrix", "matrix") / "matrix.toml"
