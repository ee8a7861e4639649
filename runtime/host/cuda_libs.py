"""Where a thin CUDA engine finds cuBLAS and cudart at run time.

A thin cuda13 executable carries ``libggml-cuda`` but not the 594 MB of
cuBLAS 13 (DESIGN.md §8): every DX executable on a machine shares one copy.
This module finds that copy, in this order, and hands its directory to the
engine child alone through ``LD_LIBRARY_PATH``:

1. ``$DX_CUDA_RUNTIME`` (a directory, or a pack directory holding ``lib/``):
   an explicit choice wins;
2. the DX runtime pack that ``install.sh`` installs once per machine:
   ``${XDG_DATA_HOME:-~/.local/share}/dx/runtime/cuda13-<version>/lib`` (a
   user install), then ``/opt/dx/runtime/cuda13-<version>/lib`` (root);
   the highest version first;
3. the ``nvidia-cublas`` / ``nvidia-cuda-runtime`` pip wheels:
   ``<site-packages>/nvidia/cu13/lib`` in this Python's path, the active
   virtualenv or conda env, the user's and the system's site-packages;
4. a system CUDA 13: ``/usr/local/cuda-13*/lib64``, ``/usr/local/cuda/lib64``,
   then whatever ``ldconfig -p`` knows.

A directory is accepted only when it holds all of ``libcudart.so.13``,
``libcublas.so.13`` and ``libcublasLt.so.13`` as ELF shared objects for
this machine whose SONAME carries major 13: a CUDA 12 directory, a partial
copy or a wrong-architecture file is refused, and each refusal is logged
with its reason. When nothing is usable, or there is no NVIDIA driver, the
engine still starts: ggml fails to load ``libggml-cuda`` (a missing
dependency), skips it and runs on its CPU variants; dx says so in one line
naming what to install.

Stdlib only and no work at import: the ``dx`` runtime imports this only when
it starts a CUDA engine.
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import re
import struct
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dx import config
from dx.host.hardware import nvidia_driver  # the one NVIDIA driver probe

CUDA_MAJOR = 13
#: The libraries libggml-cuda links against (its DT_NEEDED), by the SONAME the loader asks for.
REQUIRED = (f"libcudart.so.{CUDA_MAJOR}", f"libcublas.so.{CUDA_MAJOR}", f"libcublasLt.so.{CUDA_MAJOR}")
#: install.sh installs the runtime pack under this name inside the shared runtime folder.
PACK_PREFIX = f"cuda{CUDA_MAJOR}-"
INSTALL_HINT = (f"install the CUDA {CUDA_MAJOR} runtime once: DX's install.sh (it adds the cuda{CUDA_MAJOR} "
                f"runtime pack), or `pip install nvidia-cublas nvidia-cuda-runtime`")
_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # EM_X86_64, EM_AARCH64


@dataclass(frozen=True)
class Candidate:
    """One directory looked at, where it came from, and the verdict."""

    source: str            # env | pack | pip | system | ldconfig
    path: Path
    accepted: bool
    reason: str            # why refused, or what was found


@dataclass(frozen=True)
class CudaSearch:
    """The whole search: every candidate in order, the chosen directory, the driver."""

    candidates: tuple[Candidate, ...]
    chosen: Path | None
    driver: str | None     # the NVIDIA kernel driver version, None when there is none
    driver_note: str       # how the driver was (not) found

    @property
    def usable(self) -> bool:
        return self.chosen is not None and self.driver is not None

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Additions to the engine child's environment: the chosen directory first on LD_LIBRARY_PATH."""
        if self.chosen is None:
            return {}
        old = base.get("LD_LIBRARY_PATH", "")
        return {"LD_LIBRARY_PATH": str(self.chosen) + (os.pathsep + old if old else "")}

    def log_lines(self) -> list[str]:
        """What was searched and why each place was taken or refused (engine log, ``dx doctor``)."""
        lines = [f"dx: cuda: thin engine; looking for {', '.join(REQUIRED)}",
                 f"dx: cuda: NVIDIA driver: {self.driver or 'none'} ({self.driver_note})"]
        for c in self.candidates:
            verdict = "accepted" if c.accepted else "refused"
            lines.append(f"dx: cuda: [{c.source}] {c.path}: {verdict} — {c.reason}")
        if not self.candidates:
            lines.append("dx: cuda: no candidate directory exists")
        lines.append(f"dx: cuda: using {self.chosen}" if self.chosen else "dx: cuda: no usable CUDA 13 runtime")
        return lines

    def notice(self) -> str | None:
        """The one line dx prints at start when the GPU cannot be used, naming what to install; else None."""
        if self.driver is None and self.chosen is None:
            return (f"dx: no NVIDIA driver ({self.driver_note}) and no CUDA {CUDA_MAJOR} runtime; the engine runs on "
                    f"the CPU — for the GPU: an NVIDIA driver >= 580, then {INSTALL_HINT}")
        if self.driver is None:
            return (f"dx: no NVIDIA driver ({self.driver_note}); the engine runs on the CPU — "
                    "install an NVIDIA driver >= 580 for the GPU")
        if self.chosen is None:
            return f"dx: no CUDA {CUDA_MAJOR} runtime (cuBLAS, cudart) found; the engine runs on the CPU — {INSTALL_HINT}"
        return None


def is_thin_cuda_engine(binary: Path) -> bool:
    """A CUDA engine whose ``lib/`` lacks cuBLAS: it needs this search (a fat one carries its own)."""
    bin_dir = Path(binary).parent
    if not any(bin_dir.glob("libggml-cuda.so*")):
        return False
    lib = bin_dir.parent / "lib"
    return not any((lib / name).exists() for name in REQUIRED)


# --------------------------------------------------------------------------- checking one directory
def elf_soname(path: Path) -> tuple[int | None, str | None]:
    """(e_machine, DT_SONAME) of a 64-bit little-endian ELF shared object; (None, None) when it is not one.

    Reads only the headers and the dynamic section (libcublasLt is 540 MB; this reads a few KB).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None, None
            e_type, e_machine = struct.unpack_from("<HH", head, 16)
            if e_type != 3:  # ET_DYN
                return e_machine, None
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            if phentsize != 56 or not 0 < phnum < 512:
                return e_machine, None
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            loads, dynamic = [], None
            for i in range(phnum):
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * 56)
                if p_type == 1:
                    loads.append((p_vaddr, p_offset, p_filesz))
                elif p_type == 2:
                    dynamic = (p_offset, p_filesz)
            if dynamic is None or dynamic[1] > 1 << 20:
                return e_machine, None
            f.seek(dynamic[0])
            dyn = f.read(dynamic[1])
            strtab = soname_at = None
            for i in range(len(dyn) // 16):
                tag, val = struct.unpack_from("<qQ", dyn, i * 16)
                if tag == 0:
                    break
                if tag == 5:
                    strtab = val
                elif tag == 14:
                    soname_at = val
            if strtab is None or soname_at is None:
                return e_machine, None
            for vaddr, offset, size in loads:  # DT_STRTAB is an address: map it to a file offset
                if vaddr <= strtab < vaddr + size:
                    f.seek(offset + (strtab - vaddr) + soname_at)
                    raw = f.read(256).split(b"\0", 1)[0]
                    return e_machine, raw.decode("ascii", "replace")
    except OSError:
        return None, None
    return e_machine, None


def check_dir(path: Path, machine: str | None = None) -> str | None:
    """None when ``path`` holds all of REQUIRED (right major, right machine); else why not, in words."""
    machine = machine or _machine()
    if not path.is_dir():
        return "not a directory"
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        others = sorted({p.name for stem in ("libcublas.so.", "libcudart.so.", "libcublasLt.so.")
                         for p in path.glob(stem + "*") if re.fullmatch(r"lib\w+\.so\.\d+", p.name)})
        wrong = [n for n in others if not n.endswith(f".so.{CUDA_MAJOR}")]
        if wrong:
            return f"wrong CUDA major: has {', '.join(wrong)}, needs {', '.join(missing)}"
        return f"lacks {', '.join(missing)}"
    want_machine = _ELF_MACHINE.get(machine)
    for name in REQUIRED:
        e_machine, soname = elf_soname(path / name)
        if e_machine is None:
            return f"{name} is not an ELF shared object"
        if want_machine is not None and e_machine != want_machine:
            return f"{name} is built for another machine (ELF e_machine {e_machine}, this is {machine})"
        if soname != name:
            return f"{name} has SONAME {soname or 'none'} (wrong CUDA major or not cuBLAS/cudart)"
    return None


# --------------------------------------------------------------------------- where to look
def _version_key(path: Path) -> tuple:
    """Sort key for ``cuda13-13.0.2`` style names: numeric parts compared as numbers."""
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+_]", path.name[len(PACK_PREFIX):]) if p)


def pack_roots(env: Mapping[str, str], root: Path = Path("/")) -> list[Path]:
    """The shared runtime folders install.sh uses, user's first: see ci/install.sh.j2 (runtime_dir)."""
    home = env.get("HOME")
    data = env.get("XDG_DATA_HOME") or (str(Path(home) / ".local" / "share") if home else None)
    roots = [Path(data) / "dx" / "runtime"] if data else []
    return [*roots, root / "opt" / "dx" / "runtime"]


def _pack_candidates(env: Mapping[str, str], root: Path) -> list[tuple[str, Path]]:
    out = []
    for folder in pack_roots(env, root):
        packs = sorted(folder.glob(PACK_PREFIX + "*"), key=_version_key, reverse=True) if folder.is_dir() else []
        out += [("pack", p / "lib") for p in packs if not p.name.startswith(".")]
    return out


def _site_dirs(env: Mapping[str, str], root: Path, sys_path: list[str]) -> list[Path]:
    """site-packages folders where pip puts the nvidia wheels, most specific first."""
    dirs: list[Path] = [Path(p) for p in sys_path if p.endswith(("site-packages", "dist-packages"))]
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if env.get(var):
            dirs += sorted(Path(p) for p in glob.glob(f"{env[var]}/lib/python3*/site-packages"))
    if env.get("HOME"):
        dirs += sorted(Path(p) for p in glob.glob(f"{env['HOME']}/.local/lib/python3*/site-packages"))
    for pattern in ("usr/local/lib/python3*/dist-packages", "usr/local/lib/python3*/site-packages",
                    "usr/lib/python3/dist-packages", "usr/lib/python3*/site-packages"):
        dirs += sorted(Path(p) for p in glob.glob(str(root / pattern)))
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]  # type: ignore[func-returns-value]


def _system_candidates(root: Path) -> list[tuple[str, Path]]:
    majors = sorted(glob.glob(str(root / f"usr/local/cuda-{CUDA_MAJOR}*")), reverse=True)
    return [("system", Path(p) / "lib64") for p in majors] + [("system", root / "usr/local/cuda/lib64")]


def _ldconfig_candidates() -> list[tuple[str, Path]]:
    """Folders ``ldconfig -p`` lists for libcublas.so.13 (only on the real root: it reads /etc/ld.so.cache)."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        try:
            out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
    found = re.findall(rf"^\s*libcublas\.so\.{CUDA_MAJOR} .*=> (\S+)$", out, re.M)
    return [("ldconfig", Path(p).parent) for p in dict.fromkeys(found)]


def candidates(env: Mapping[str, str], root: Path = Path("/"), sys_path: list[str] | None = None,
               use_ldconfig: bool | None = None) -> list[tuple[str, Path]]:
    """Every directory to look at, in search order (only those that exist, each once)."""
    out: list[tuple[str, Path]] = []
    override = env.get(config.CUDA_RUNTIME_ENV)
    if override:
        p = Path(override).expanduser()
        out.append(("env", p / "lib" if (p / "lib").is_dir() else p))
    out += _pack_candidates(env, root)
    out += [("pip", d / "nvidia" / f"cu{CUDA_MAJOR}" / "lib")
            for d in _site_dirs(env, root, sys.path if sys_path is None else sys_path)]
    out += _system_candidates(root)
    if use_ldconfig if use_ldconfig is not None else root == Path("/"):
        out += _ldconfig_candidates()
    seen: set[Path] = set()
    kept = []
    for source, path in out:
        key = Path(os.path.realpath(path))
        if key in seen or not (path.exists() or source == "env"):
            continue
        seen.add(key)
        kept.append((source, path))
    return kept


# --------------------------------------------------------------------------- the driver
# --------------------------------------------------------------------------- the search
def search(env: Mapping[str, str] | None = None, root: Path = Path("/"), sys_path: list[str] | None = None,
           use_ldconfig: bool | None = None, machine: str | None = None) -> CudaSearch:
    """Look everywhere in order; the first directory that passes ``check_dir`` is chosen."""
    env = os.environ if env is None else env
    seen: list[Candidate] = []
    chosen = None
    for source, path in candidates(env, root, sys_path, use_ldconfig):
        if chosen is not None:
            break
        why = check_dir(path, machine)
        if why is None:
            chosen = path
            seen.append(Candidate(source, path, True, "has " + ", ".join(REQUIRED)))
        else:
            seen.append(Candidate(source, path, False, why))
    driver, note = nvidia_driver(root)
    return CudaSearch(tuple(seen), chosen, driver, note)


@functools.lru_cache(maxsize=4)
def search_for_engine(binary: Path) -> CudaSearch | None:
    """The search for a thin CUDA engine (once per process); None for any other engine."""
    return search() if is_thin_cuda_engine(binary) else None


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass
class EngineCuda:
    """What the supervisor needs for one engine start: env additions and lines for its log."""

    env: dict[str, str] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    notice: str | None = None


def for_engine(binary: Path, base_env: Mapping[str, str]) -> EngineCuda:
    """Env additions + log lines for starting ``binary``; empty for an engine that is not thin CUDA."""
    found = search_for_engine(Path(binary))
    if found is None:
        return EngineCuda()
    return EngineCuda(found.env(base_env), found.log_lines(), found.notice())
