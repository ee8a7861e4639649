"""Whether an engine built for a cell can also run on this machine, and how.

``dxbuild matrix --host`` tells three cases apart: a cell that builds and runs
here (the suite can test it end to end), one that only builds here, and one
that cannot be built here (``toolchains.host_problem``). Running includes the
emulated and software ways the suite really uses: another Linux arch under
qemu-user with the cross sysroot, Vulkan on Mesa's lavapipe (a CPU driver).
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dx.host.hardware import nvidia_driver
from dxbuild.toolchains import host as host_tc

if TYPE_CHECKING:
    from dxmatrix.cell import Cell

#: matrix arch -> qemu-user's name for it
QEMU_ARCH = {"arm64": "aarch64", "x86_64": "x86_64"}
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")


def qemu_user(arch: str) -> str | None:
    """qemu-user for ``arch`` (``qemu-aarch64-static`` from Debian's qemu-user-static), or None."""
    name = QEMU_ARCH.get(arch, arch)
    return shutil.which(f"qemu-{name}-static") or shutil.which(f"qemu-{name}")


def vulkan_icds() -> list[str]:
    """The Vulkan driver manifests the loader would find (``VK_ICD_FILENAMES`` first)."""
    env = os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES")
    if env:
        return [p for p in env.split(os.pathsep) if Path(p).is_file()]
    return sorted(p for d in ICD_DIRS for p in glob.glob(f"{d}/*.json"))


def _vulkan_loader() -> bool:
    return any(glob.glob(f"{d}/libvulkan.so.1") for d in
               ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"))


def _arch_problem(cell: Cell) -> tuple[str | None, str]:
    """(why the cell's arch cannot run here, or None; how it runs)."""
    if cell.os != host_tc.HOST_OS:
        return f"it is a {cell.os} executable", ""
    if cell.arch == host_tc.HOST_ARCH:
        return None, "natively"
    if cell.os != "linux":
        return f"{cell.arch} needs a {cell.arch} machine", ""
    from dxbuild.toolchains.cross_gnu import TARGETS, sysroot

    if qemu_user(cell.arch) is None:
        return f"no qemu-{QEMU_ARCH[cell.arch]}-static: apt-get install -y qemu-user-static", ""
    if cell.arch in TARGETS and not sysroot(cell.arch).is_dir():
        return f"no {cell.arch} sysroot in {sysroot(cell.arch)}: apt-get install -y {TARGETS[cell.arch][2]}", ""
    return None, f"under qemu-{QEMU_ARCH[cell.arch]} -L {sysroot(cell.arch)}"


def run_problem(cell: Cell) -> tuple[str | None, str]:
    """(why an engine for ``cell`` cannot run on this machine, or None; how it runs when it can)."""
    why, how = _arch_problem(cell)
    if why:
        return why, ""
    if cell.tier == "cpu":
        return None, how
    if cell.toolchain == "vulkan-host":
        if not _vulkan_loader():
            return "no Vulkan loader (libvulkan.so.1): apt-get install -y libvulkan1", ""
        icds = vulkan_icds()
        if not icds:
            return "no Vulkan driver: apt-get install -y mesa-vulkan-drivers (lavapipe runs Vulkan on the CPU)", ""
        names = sorted({Path(p).name.split("_icd")[0] for p in icds})
        on = "lavapipe (Mesa's CPU Vulkan driver)" if "lvp" in names else ", ".join(names)
        return None, f"{how}, on {on}"
    if cell.min_nvidia_driver is not None:
        driver, _ = nvidia_driver()  # dx.host.hardware's one probe: /proc/driver/nvidia/version, else libcuda.so.1
        if driver is None:
            return "no NVIDIA GPU driver on this machine", ""
        return None, how
    if cell.toolchain == "rocm-host":
        return (None, how) if Path("/dev/kfd").exists() else ("no AMD GPU (/dev/kfd) on this machine", "")
    if cell.toolchain == "xcode":
        return (None, how) if host_tc.HOST_OS == "macos" else ("Metal runs on macOS only", "")
    return None, how
