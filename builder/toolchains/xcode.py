"""Metal: Apple's toolchain (Xcode command line tools) on macOS; nothing else can build it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.toolchains import host as host_tc
from dxbuild.toolchains.base import Toolchain

if TYPE_CHECKING:
    from dxmatrix.cell import Cell


def host_problem(cell: Cell) -> str | None:
    if host_tc.HOST_OS != "macos":
        return ("Metal builds need macOS with Xcode; this machine runs "
                f"{host_tc.HOST_OS}. Build it on a macOS runner ({cell.runner or 'macos-14'}), "
                "or build the cpu tier here")
    if not shutil.which("xcrun"):
        return "xcrun not found; install the Xcode command line tools (xcode-select --install)"
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    return host_tc.base_toolchain(cell.toolchain)
