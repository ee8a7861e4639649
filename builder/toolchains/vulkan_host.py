"""Vulkan: the host compiler plus the Vulkan headers/loader and glslc (shader compiler)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.run_cmd import capture
from dxbuild.toolchains import Toolchain
from dxbuild.toolchains import host as host_tc

if TYPE_CHECKING:
    from dxmatrix.cell import Cell


def _has_vulkan_headers() -> bool:
    return any(Path(p).is_file() for p in ("/usr/include/vulkan/vulkan.h", "/usr/local/include/vulkan/vulkan.h"))


def host_problem(cell: Cell) -> str | None:
    problem = host_tc.cross_problem(cell)
    if problem:
        return problem
    missing = []
    if not shutil.which("glslc"):
        missing.append("glslc (apt-get install glslc)")
    if host_tc.HOST_OS == "linux" and not _has_vulkan_headers():
        missing.append("Vulkan headers and loader (apt-get install libvulkan-dev)")
    if missing:
        return "missing " + " and ".join(missing) + "; or let CI build this tier"
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    base = host_tc.base_toolchain(cell.toolchain)
    glslc = capture(["glslc", "--version"]).strip().splitlines()
    return replace(base, versions={**base.versions, "glslc": glslc[0] if glslc else "unknown"})
