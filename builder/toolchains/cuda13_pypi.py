"""CUDA 13 toolkit assembled from PyPI wheels into the DX cache (filled in below)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.toolchains import Toolchain
from dxbuild.toolchains import host as host_tc

if TYPE_CHECKING:
    from dxmatrix.cell import Cell


def host_problem(cell: Cell) -> str | None:
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    raise NotImplementedError
