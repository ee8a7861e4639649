"""Toolchains: what compiles a tier, where it comes from, and whether this host has it.

Each toolchain named in ``recipes/tiers.toml`` is one module here exposing the
same two functions, so tier-specific knowledge lives in one place and the
engine build never asks ``if tier == ...``:

- ``host_problem(cell) -> str | None``: why this host cannot build the cell
  (with what to do instead), or None. Cheap; used by ``dxbuild matrix --host``.
- ``provision(cell, cache, log) -> Toolchain``: make the toolchain available
  (possibly downloading it into the DX cache) and describe it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from dxbuild.toolchains.base import Toolchain
from dxverify.errors import UnsupportedError

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

__all__ = ["MODULES", "Toolchain", "host_problem", "module_for", "module_for_cell", "provision"]

#: toolchain name (as in tiers.toml) -> module under dxbuild.toolchains
MODULES = {
    "host": "host",
    "cuda13-pypi": "cuda13_pypi",
    "cuda12-host": "cuda12_host",
    "rocm-host": "rocm_host",
    "vulkan-host": "vulkan_host",
    "xcode": "xcode",
}


def module_for(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"dxbuild.toolchains.{MODULES[name]}")
    except KeyError:
        raise UnsupportedError(f"no toolchain module for {name!r}") from None


def module_for_cell(cell: Cell) -> ModuleType:
    """The toolchain module that builds ``cell`` here: the tier's, or the cross compiler for another arch."""
    from dxbuild.toolchains import cross_gnu

    return cross_gnu if cross_gnu.applies(cell) else module_for(cell.toolchain)


def host_problem(cell: Cell) -> str | None:
    """Why this machine cannot build ``cell``, or None when it can."""
    return module_for_cell(cell).host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    """The toolchain for ``cell``; fails fast with UnsupportedError when this host cannot build it."""
    mod = module_for_cell(cell)
    problem = mod.host_problem(cell)
    if problem:
        raise UnsupportedError(f"cannot build {cell.name} on this machine: {problem}")
    return mod.provision(cell, cache, log)
