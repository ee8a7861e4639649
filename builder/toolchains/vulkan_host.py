"""Vulkan: the host compiler plus the Vulkan headers/loader, SPIR-V headers and glslc (shader compiler).

On Debian/Ubuntu all of it is four packages (``glslc libvulkan-dev
spirv-headers``, and ``mesa-vulkan-drivers`` for lavapipe, Mesa's CPU Vulkan
driver, to run the result without a GPU); ``host_problem`` names the missing
ones and the one command that installs them. Debian 12's headers are 1.3.239,
older than the pinned ggml-vulkan expects: the tier's patch
``0002-vulkan-without-layer-settings-ext.patch`` covers the one gap.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.run_cmd import capture
from dxbuild.toolchains import host as host_tc
from dxbuild.toolchains.base import Toolchain

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

INCLUDE_DIRS = ("/usr/include", "/usr/local/include")
#: what the build needs -> (how to tell it is there, the Debian package)
NEEDS = {
    "glslc": (lambda: shutil.which("glslc") is not None, "glslc"),
    "Vulkan headers and loader": (lambda: _header("vulkan/vulkan.h"), "libvulkan-dev"),
    "SPIR-V headers": (lambda: _header("spirv/unified1/spirv.hpp"), "spirv-headers"),
}


def _header(rel: str) -> bool:
    return any((Path(d) / rel).is_file() for d in INCLUDE_DIRS)


def header_version() -> int | None:
    """VK_HEADER_VERSION of the installed headers (239 on Debian 12), or None."""
    for d in INCLUDE_DIRS:
        p = Path(d) / "vulkan" / "vulkan_core.h"
        if p.is_file():
            m = re.search(r"^#define VK_HEADER_VERSION (\d+)", p.read_text(errors="replace"), re.M)
            return int(m.group(1)) if m else None
    return None


def missing_packages() -> list[tuple[str, str]]:
    """[(what, Debian package)] the build lacks on this host."""
    return [(what, pkg) for what, (present, pkg) in NEEDS.items() if not present()]


def host_problem(cell: Cell) -> str | None:
    problem = host_tc.cross_problem(cell)
    if problem:
        return problem
    if host_tc.HOST_OS == "linux":
        missing = missing_packages()
        if missing:
            return (f"missing {', '.join(w for w, _ in missing)}: "
                    f"apt-get install -y {' '.join(p for _, p in missing)}; or let CI build this tier")
    elif not shutil.which("glslc"):
        return "glslc not found: install the Vulkan SDK (https://vulkan.lunarg.com); or let CI build this tier"
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    base = host_tc.base_toolchain(cell.toolchain)
    glslc = capture(["glslc", "--version"]).strip().splitlines()
    versions = {**base.versions, "glslc": glslc[0] if glslc else "unknown"}
    hv = header_version()
    if hv is not None:
        versions["vulkan_headers"] = f"1.x.{hv}"
    return replace(base, versions=versions)
