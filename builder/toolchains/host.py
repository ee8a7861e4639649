"""The host's C/C++ compiler plus CMake and Ninja (from PyPI when the host lacks them).

CMake and Ninja are dependencies of dxbuild itself (the ``cmake`` and ``ninja``
wheels), so a bare machine with Python gets them with ``pip install``; a
system install on PATH is used first.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.run_cmd import capture
from dxbuild.toolchains.base import Toolchain

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

HOST_OS = {"Linux": "linux", "Darwin": "macos", "Windows": "windows"}.get(platform.system(), platform.system().lower())
HOST_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine().lower())


def _wheel_tool(name: str) -> str | None:
    """``cmake``/``ninja`` from their PyPI wheels, if installed in this Python."""
    try:
        if name == "cmake":
            import cmake

            d = Path(cmake.CMAKE_BIN_DIR)
        else:
            import ninja

            d = Path(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        return None
    exe = d / (name + (".exe" if os.name == "nt" else ""))
    return str(exe) if exe.is_file() else None


def find_tool(name: str) -> str | None:
    return shutil.which(name) or _wheel_tool(name)


def compilers() -> tuple[str | None, str | None]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return cc, cxx


def cross_problem(cell: Cell) -> str | None:
    """The reason a cell for another OS/arch cannot be built here, or None."""
    if cell.os != HOST_OS:
        return f"it targets {cell.os} and this machine runs {HOST_OS}; build it on a {cell.os} runner ({cell.runner or 'see dxbuild matrix'})"
    if cell.arch != HOST_ARCH:
        return f"it targets {cell.arch} and this machine is {HOST_ARCH}; build it on an {cell.arch} runner ({cell.runner or 'see dxbuild matrix'})"
    return None


def host_problem(cell: Cell) -> str | None:
    problem = cross_problem(cell)
    if problem:
        return problem
    cc, cxx = compilers()
    if not cc or not cxx:
        return "no C/C++ compiler found (set CC/CXX or install gcc/clang, e.g. apt-get install build-essential)"
    for tool in ("cmake", "ninja"):
        if not find_tool(tool):
            return f"{tool} not found; `python3 -m pip install {tool}`"
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else "unknown"


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    return base_toolchain(cell.toolchain)


def base_toolchain(name: str) -> Toolchain:
    """CMake + Ninja + the host C/C++ compiler, with their versions for the cache key."""
    cmake, ninja = find_tool("cmake"), find_tool("ninja")
    cc, cxx = compilers()
    assert cmake and ninja and cc and cxx  # host_problem checked these
    versions = {
        "cmake": re.sub(r"^cmake version\s*", "", _first_line(capture([cmake, "--version"]))),
        "ninja": _first_line(capture([ninja, "--version"])),
        "cc": _first_line(capture([cc, "--version"])),
        "cxx": _first_line(capture([cxx, "--version"])),
    }
    defs = {"CMAKE_C_COMPILER": cc, "CMAKE_CXX_COMPILER": cxx, "CMAKE_MAKE_PROGRAM": ninja}
    return Toolchain(name=name, cmake=cmake, ninja=ninja, cmake_defs=defs, versions=versions)
