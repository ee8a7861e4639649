"""CUDA 13: a complete toolkit assembled from NVIDIA's PyPI wheels into the DX cache.

A bare Linux box with Python can build the cuda13 tier: the wheels pinned in
``recipes/tiers.toml`` (``toolkit_wheels``: nvcc, runtime, crt, nvvm, cccl,
cublas of one 13.0.x family, so the engine runs on drivers >= 580) are
downloaded with pip (``--require-hashes``), unpacked into
``toolchains/cuda13-<key>/`` and given the few symlinks a toolkit has and
wheels cannot carry (``libcudart.so`` → ``.so.13``, ``lib64``,
``targets/<arch>-linux``). Nothing is installed into the user's environment.

The wheels carry no ``libcuda`` stub. DX builds with ``GGML_CUDA_NO_VMM=ON``
instead of generating one: with VMM off, ggml-cuda links only cudart and
cuBLAS, never the driver API, so the link needs no libcuda at all and the
engine finds the real driver at run time through cudart. Faking a stub would
mean DX maintaining a list of driver symbols; the price of NO_VMM is ggml's
legacy memory pool instead of the virtual-memory one (no effect on results).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dxbuild.run_cmd import capture, run_cmd
from dxbuild.toolchains import host as host_tc
from dxbuild.toolchains.base import Toolchain
from dxverify.errors import ConfigurationError, MalformedInputError

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

#: wheel-less symlinks a CUDA toolkit has: link name -> target (relative to the toolkit root)
LIB_LINKS = {
    "lib/libcudart.so": "libcudart.so.13",
    "lib/libcublas.so": "libcublas.so.13",
    "lib/libcublasLt.so": "libcublasLt.so.13",
    "lib/libnvvm.so": "libnvvm.so.4",
    "lib64": "lib",
}
_TARGET_ARCH = {"x86_64": "x86_64-linux", "arm64": "sbsa-linux"}


def _wheels(cell: Cell) -> dict[str, tuple[str, ...]]:
    from dxmatrix.recipes import get_tier

    wheels = get_tier(cell.tier).toolkit_wheels
    if not wheels:
        raise ConfigurationError(f"tier {cell.tier}: toolkit_wheels is empty",
                                 hint="pin the CUDA wheels in recipes/tiers.toml")
    return wheels


def toolkit_key(wheels: dict[str, tuple[str, ...]], arch: str) -> str:
    text = repr((arch, sorted((k, tuple(sorted(v))) for k, v in wheels.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def host_problem(cell: Cell) -> str | None:
    problem = host_tc.cross_problem(cell)
    if problem:
        return problem
    if host_tc.HOST_OS != "linux":
        return ("the CUDA 13 toolkit is assembled from PyPI wheels on Linux only; "
                "on Windows install CUDA 13 and use a Linux runner for DX's cuda13 build")
    return host_tc.host_problem(cell)


def _extract_wheel(whl: Path, dest: Path) -> None:
    """Unpack a wheel's files (not its metadata), keeping the executable bits zip records."""
    try:
        with zipfile.ZipFile(whl) as z:
            for info in z.infolist():
                name = info.filename
                if ".dist-info/" in name or name.endswith("/"):
                    continue
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts:
                    raise MalformedInputError(f"{whl.name}: unsafe path {name!r} in wheel")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                mode = (info.external_attr >> 16) & 0o777
                if mode & stat.S_IXUSR or "/bin/" in name:
                    os.chmod(target, 0o755)
    except zipfile.BadZipFile as e:
        raise MalformedInputError(f"{whl.name}: not a valid wheel: {e}") from None


def assemble(wheels: dict[str, tuple[str, ...]], arch: str, cache: Path, log: Path) -> Path:
    """The toolkit root (with bin/nvcc), downloaded and unpacked once per pinned wheel set."""
    key = toolkit_key(wheels, arch)
    final = cache / "toolchains" / f"cuda13-{key}"
    if (final / "cu13" / "bin" / "nvcc").is_file():
        return final / "cu13"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".cuda13-{key}.tmp-", dir=final.parent))
    try:
        req = tmp / "requirements.txt"
        req.write_text("".join(f"{spec} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n"
                               for spec, hashes in sorted(wheels.items())))
        run_cmd([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                 "--require-hashes", "--disable-pip-version-check", "-d", tmp / "wheels", "-r", req],
                log=log, what="pip download of the CUDA 13 wheels")
        root = tmp / "unpacked"
        for whl in sorted((tmp / "wheels").glob("*.whl")):
            _extract_wheel(whl, root)
        kit = root / "nvidia" / "cu13"
        if not (kit / "bin" / "nvcc").is_file():
            raise MalformedInputError("the CUDA wheels did not provide nvidia/cu13/bin/nvcc")
        for link, target in LIB_LINKS.items():
            p = kit / link
            if not p.exists() and (p.parent / target).exists():
                os.symlink(target, p)
        tdir = kit / "targets" / _TARGET_ARCH.get(arch, f"{arch}-linux")
        tdir.mkdir(parents=True)
        for sub in ("include", "lib"):
            os.symlink(f"../../{sub}", tdir / sub)
        os.symlink("lib", tdir / "lib64")
        out = tmp / "out"
        out.mkdir()
        os.rename(kit, out / "cu13")
        shutil.rmtree(tmp / "wheels")
        shutil.rmtree(root)
        try:
            os.rename(out, final)
        except OSError:
            if not (final / "cu13" / "bin" / "nvcc").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "cu13"


def provision(cell: Cell, cache: Path, log: Path) -> Toolchain:
    kit = assemble(_wheels(cell), cell.arch, cache, log)
    nvcc = str(kit / "bin" / "nvcc")
    base = host_tc.base_toolchain(cell.toolchain)
    version = capture([nvcc, "--version"]).strip().splitlines()
    env = {
        "CUDA_HOME": str(kit),
        "CUDA_PATH": str(kit),
        "CUDACXX": nvcc,
        "PATH": f"{kit / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    defs = {**base.cmake_defs, "CMAKE_CUDA_COMPILER": nvcc, "CUDAToolkit_ROOT": str(kit),
            "CMAKE_CUDA_HOST_COMPILER": base.cmake_defs["CMAKE_CXX_COMPILER"]}
    # the engine carries the CUDA runtime and cuBLAS it links (redistributable), not the driver
    libs = tuple(str(kit / "lib" / n) for n in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"))
    return replace(base, env=env, cmake_defs=defs, runtime_libs=libs,
                   versions={**base.versions, "nvcc": version[-1] if version else "unknown",
                             "cuda_wheels": toolkit_key(_wheels(cell), cell.arch)})
