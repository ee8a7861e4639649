"""CUDA 12: needs a CUDA 12 toolkit on the build host.

PyPI's ``-cu12`` wheels carry ``ptxas`` but no ``nvcc``, so unlike cuda13 this
toolkit cannot be assembled from wheels. The host's toolkit is found through
``CUDACXX``, ``CUDA_HOME``/``CUDA_PATH``, ``nvcc`` on PATH or
``/usr/local/cuda-12*``, and must really be CUDA 12: a CUDA 13 nvcc would build
an engine that needs driver 580, not the 525 the cuda12 tier promises.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.toolchains import host as host_tc
from dxbuild.toolchains.base import Toolchain

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

WANT_MAJOR = 12


def nvcc_candidates() -> list[str]:
    cands = []
    if os.environ.get("CUDACXX"):
        cands.append(os.environ["CUDACXX"])
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    if shutil.which("nvcc"):
        cands.append(str(shutil.which("nvcc")))
    cands += sorted(glob.glob(f"/usr/local/cuda-{WANT_MAJOR}*/bin/nvcc"), reverse=True)
    seen: list[str] = []
    for c in cands:
        if c not in seen and os.access(c, os.X_OK):
            seen.append(c)
    return seen


def nvcc_release(nvcc: str) -> str | None:
    """'12.4' from ``nvcc --version``, or None if it does not run."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_nvcc() -> tuple[str | None, list[str]]:
    """(the first CUDA 12 nvcc, [what else was seen and why it was passed over])."""
    passed = []
    for nvcc in nvcc_candidates():
        rel = nvcc_release(nvcc)
        if rel and rel.split(".")[0] == str(WANT_MAJOR):
            return nvcc, passed
        passed.append(f"{nvcc} is CUDA {rel or 'unknown'}")
    return None, passed


def host_problem(cell: Cell) -> str | None:
    problem = host_tc.cross_problem(cell)
    if problem:
        return problem
    nvcc, passed = find_nvcc()
    if nvcc is None:
        seen = f" (found only: {'; '.join(passed)})" if passed else ""
        return (f"no CUDA 12 toolkit on this machine{seen}; PyPI's -cu12 wheels have no nvcc. "
                "Set CUDA_HOME to a CUDA 12 install, or let CI build this tier, or build cuda13 here")
    return host_tc.host_problem(cell)


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    nvcc, _ = find_nvcc()
    assert nvcc is not None
    base = host_tc.base_toolchain(cell.toolchain)
    home = str(Path(nvcc).resolve().parent.parent)
    libdir = Path(home) / ("lib64" if (Path(home) / "lib64").is_dir() else "lib")
    libs = tuple(str(p) for n in ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12")
                 for p in [libdir / n] if p.exists())
    return replace(base, env={"CUDACXX": nvcc, "CUDA_HOME": home}, runtime_libs=libs,
                   cmake_defs={**base.cmake_defs, "CMAKE_CUDA_COMPILER": nvcc},
                   versions={**base.versions, "nvcc": nvcc_release(nvcc) or "unknown"})
