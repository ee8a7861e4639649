"""ROCm/HIP: needs a ROCm installation on the build host (hipcc / ROCM_PATH); not on PyPI."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.run_cmd import capture
from dxbuild.toolchains import host as host_tc
from dxbuild.toolchains.base import Toolchain

if TYPE_CHECKING:
    from dxmatrix.cell import Cell


def rocm_root() -> Path | None:
    for cand in (os.environ.get("ROCM_PATH"), os.environ.get("HIP_PATH"), "/opt/rocm"):
        if cand and (Path(cand) / "bin" / "hipcc").exists():
            return Path(cand)
    hipcc = shutil.which("hipcc")
    return Path(hipcc).resolve().parent.parent if hipcc else None


def host_problem(cell: Cell) -> str | None:
    problem = host_tc.cross_problem(cell)
    if problem:
        return problem
    if rocm_root() is None:
        return ("no ROCm found (no hipcc under $ROCM_PATH or /opt/rocm); install ROCm 6, "
                "or let CI build this tier, or build the vulkan tier for AMD GPUs instead")
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    root = rocm_root()
    assert root is not None
    base = host_tc.base_toolchain(cell.toolchain)
    version = capture([str(root / "bin" / "hipcc"), "--version"]).strip().splitlines()
    return replace(base, env={"ROCM_PATH": str(root), "HIP_PATH": str(root)},
                   versions={**base.versions, "hip": version[0] if version else "unknown"})
