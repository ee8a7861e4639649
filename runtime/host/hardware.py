"""What this machine has: CPU and its ISA, memory, GPUs and their drivers.

Everything is read through a :class:`Probe` — a filesystem root (``/proc``,
``/sys``) and a command runner (``nvidia-smi``, ``rocm-smi``, ``vulkaninfo``,
``sysctl``) — so tests can point it at a fake tree or put a fake
``nvidia-smi`` on PATH for hardware that does not exist here, while the real
CPU and memory of the test machine are read for real.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Runner = Callable[[Sequence[str]], "str | None"]

PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
# /proc/cpuinfo flag -> the name users know. Order is the order we print.
X86_FEATURES = [
    ("sse4_2", "SSE4.2"), ("avx", "AVX"), ("f16c", "F16C"), ("fma", "FMA"), ("avx2", "AVX2"),
    ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512-VNNI"),
    ("avx512_bf16", "AVX-512-BF16"), ("amx_tile", "AMX"),
]
ARM_FEATURES = [("asimd", "NEON"), ("fphp", "FP16"), ("asimddp", "DOTPROD"), ("i8mm", "I8MM"),
                ("sve", "SVE"), ("sve2", "SVE2"), ("sme", "SME")]


def run_command(argv: Sequence[str], timeout: float = 10.0) -> str | None:
    """Run a probe command; its stdout, or None when it is missing, fails or hangs."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


@dataclass(frozen=True)
class Probe:
    """Where detection reads from. The default is this machine."""

    root: Path = Path("/")
    run: Runner = run_command
    system: str = field(default_factory=platform.system)
    machine: str = field(default_factory=platform.machine)

    def read(self, path: str) -> str | None:
        try:
            return (self.root / path.lstrip("/")).read_text(errors="replace")
        except OSError:
            return None

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")


@dataclass(frozen=True)
class CPUInfo:
    model: str
    logical_cores: int
    physical_cores: int
    usable_cores: int               # what this process may run on (affinity, containers)
    features: list[str]             # AVX2, AVX-512, NEON ... in order
    flags: list[str] = field(repr=False, default_factory=list)


@dataclass(frozen=True)
class MemoryInfo:
    total: int                      # bytes
    available: int
    limit: int | None = None        # cgroup memory.max, when set


@dataclass(frozen=True)
class GPU:
    vendor: str                     # nvidia | amd | intel | apple
    name: str
    memory_total: int | None        # bytes (unified memory for Apple)
    memory_free: int | None = None
    driver: str | None = None
    cuda_version: str | None = None
    source: str = ""                # how we found it: nvidia-smi, sysfs, rocm-smi, sysctl
    usable: bool = True             # False: present, but no working driver


@dataclass(frozen=True)
class Hardware:
    os: str
    arch: str
    cpu: CPUInfo
    memory: MemoryInfo
    gpus: list[GPU]
    rocm: bool
    vulkan_devices: list[str]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu"].pop("flags", None)
        return d


def detect(probe: Probe | None = None) -> Hardware:
    """Everything at once; each part degrades to 'unknown' rather than failing."""
    probe = probe or Probe()
    gpus = detect_nvidia(probe) + detect_amd(probe) + detect_apple(probe)
    gpus += detect_driverless_pci(probe, {g.vendor for g in gpus})
    return Hardware(
        os=probe.system.lower(),
        arch=_norm_arch(probe.machine),
        cpu=detect_cpu(probe),
        memory=detect_memory(probe),
        gpus=gpus,
        rocm=detect_rocm(probe),
        vulkan_devices=detect_vulkan(probe),
    )


def _norm_arch(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


# ---- CPU -----------------------------------------------------------------------------


def detect_cpu(probe: Probe) -> CPUInfo:
    if probe.system == "Darwin":
        return _detect_cpu_darwin(probe)
    text = probe.read("/proc/cpuinfo") or ""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    model, flags = "", []
    cores: set[tuple[str, str]] = set()
    logical = 0
    for block in blocks:
        info = {}
        for line in block.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
        if "processor" not in info:
            continue
        logical += 1
        model = model or info.get("model name") or info.get("Model") or info.get("Hardware", "")
        flags = flags or (info.get("flags") or info.get("Features") or "").split()
        if "physical id" in info and "core id" in info:
            cores.add((info["physical id"], info["core id"]))
    logical = logical or os.cpu_count() or 1
    physical = len(cores) or logical
    usable = logical
    if probe.is_host and hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
    table = ARM_FEATURES if _norm_arch(probe.machine) == "aarch64" else X86_FEATURES
    fs = set(flags)
    features = [label for flag, label in table if flag in fs]
    if _norm_arch(probe.machine) == "aarch64" and "NEON" not in features:
        features.insert(0, "NEON")  # mandatory in ARMv8-A; some kernels do not list asimd
    return CPUInfo(model or "unknown CPU", logical, min(physical, logical), min(usable, logical), features, flags)


def _detect_cpu_darwin(probe: Probe) -> CPUInfo:
    def sysctl(key: str) -> str:
        return (probe.run(["sysctl", "-n", key]) or "").strip()

    logical = int(sysctl("hw.logicalcpu") or os.cpu_count() or 1)
    physical = int(sysctl("hw.physicalcpu") or logical)
    arm = _norm_arch(probe.machine) == "aarch64"
    return CPUInfo(sysctl("machdep.cpu.brand_string") or "unknown CPU", logical, physical, logical,
                   ["NEON"] if arm else [])


# ---- memory ---------------------------------------------------------------------------


def detect_memory(probe: Probe) -> MemoryInfo:
    if probe.system == "Darwin":
        total = int((probe.run(["sysctl", "-n", "hw.memsize"]) or "0").strip() or 0)
        return MemoryInfo(total, total)
    info: dict[str, int] = {}
    for line in (probe.read("/proc/meminfo") or "").splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and parts[0].isdigit():
            info[k.strip()] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    limit = None
    raw = (probe.read("/sys/fs/cgroup/memory.max") or "").strip()
    if raw.isdigit() and 0 < int(raw) < total:
        limit = int(raw)
        available = min(available, limit)
    return MemoryInfo(total, available, limit)


# ---- GPUs -----------------------------------------------------------------------------

_NVSMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits"]


def nvidia_driver(root: Path = Path("/")) -> tuple[str | None, str]:
    """(driver version or None, how we know): /proc/driver/nvidia/version, else a loadable libcuda.so.1.

    The one NVIDIA driver probe: ``dx doctor`` (through :func:`detect_nvidia`, when nvidia-smi
    does not say) and the CUDA library search (``dx.host.cuda_libs``) both ask it.
    """
    proc = root / "proc" / "driver" / "nvidia" / "version"
    try:
        text = proc.read_text(errors="replace")
    except OSError:
        text = None
    if text is not None:
        m = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
        return (m.group(1) if m else "unknown"), f"from {proc}"
    # WSL and some containers have libcuda.so.1 but no /proc entry.
    for d in ("usr/lib/wsl/lib", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib"):
        if (root / d / "libcuda.so.1").exists():
            return "unknown", f"{root / d / 'libcuda.so.1'} present, {proc} absent"
    return None, f"{proc} absent and no libcuda.so.1"


def detect_nvidia(probe: Probe) -> list[GPU]:
    out = probe.run(_NVSMI_QUERY)
    if not out:
        return []
    banner = probe.run(["nvidia-smi"]) or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    cuda = m.group(1) if m else None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        name, total, free, driver = parts[0], parts[1], parts[2], parts[3]
        if not driver:  # nvidia-smi answered without a version: ask the driver itself
            found, _how = nvidia_driver(probe.root)
            driver = found if found and found != "unknown" else ""
        gpus.append(GPU("nvidia", name, _mib(total), _mib(free), driver or None, cuda, "nvidia-smi"))
    return gpus


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * 1024 * 1024
    except ValueError:
        return None


def detect_amd(probe: Probe) -> list[GPU]:
    """AMD GPUs from sysfs (amdgpu exposes VRAM size); names from rocm-smi when present."""
    if probe.system != "Linux":
        return []
    names = []
    out = probe.run(["rocm-smi", "--showproductname", "--csv"])
    if out:
        for line in out.strip().splitlines()[1:]:
            cols = [c.strip() for c in line.split(",")]
            if len(cols) > 1:
                names.append(cols[1])
    gpus = []
    drm = probe.root / "sys/class/drm"
    for card in sorted(drm.glob("card[0-9]*")) if drm.is_dir() else []:
        if "-" in card.name:
            continue  # connectors (card0-HDMI-A-1)
        vendor = (probe.read(f"/sys/class/drm/{card.name}/device/vendor") or "").strip()
        if vendor != "0x1002":
            continue
        vram = (probe.read(f"/sys/class/drm/{card.name}/device/mem_info_vram_total") or "").strip()
        name = names[len(gpus)] if len(gpus) < len(names) else (
            (probe.read(f"/sys/class/drm/{card.name}/device/product_name") or "").strip() or "AMD GPU")
        gpus.append(GPU("amd", name, int(vram) if vram.isdigit() else None, None, None, None,
                        "rocm-smi" if names else "sysfs"))
    return gpus


def detect_apple(probe: Probe) -> list[GPU]:
    if probe.system != "Darwin" or _norm_arch(probe.machine) != "aarch64":
        return []
    total = int((probe.run(["sysctl", "-n", "hw.memsize"]) or "0").strip() or 0)
    chip = (probe.run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "Apple Silicon").strip()
    # Metal may use about three quarters of unified memory by default.
    return [GPU("apple", chip, total * 3 // 4 if total else None, None, None, None, "sysctl")]


def detect_driverless_pci(probe: Probe, seen_vendors: set[str]) -> list[GPU]:
    """GPUs that lspci would show but whose driver tools did not answer: reported, not ignored."""
    if probe.system != "Linux":
        return []
    found = []
    pci = probe.root / "sys/bus/pci/devices"
    for dev in sorted(pci.iterdir()) if pci.is_dir() else []:
        cls = (probe.read(f"/sys/bus/pci/devices/{dev.name}/class") or "").strip()
        vendor = PCI_VENDORS.get((probe.read(f"/sys/bus/pci/devices/{dev.name}/vendor") or "").strip())
        if not cls.startswith("0x03") or vendor is None or vendor in seen_vendors or vendor == "intel":
            continue
        found.append(GPU(vendor, f"{vendor.upper()} GPU at PCI {dev.name}", None, source="sysfs", usable=False))
    return found


def detect_rocm(probe: Probe) -> bool:
    return probe.run(["rocm-smi", "--showdriverversion"]) is not None or (probe.root / "opt/rocm").is_dir()


def detect_vulkan(probe: Probe) -> list[str]:
    out = probe.run(["vulkaninfo", "--summary"])
    if not out:
        return []
    return [m.group(1).strip() for m in re.finditer(r"deviceName\s*=\s*(.+)", out)]
