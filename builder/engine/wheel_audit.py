"""An auditwheel-style check of an engine wheel: no host library leaks in.

Every ELF file in the wheel is read (its dynamic section and version needs,
parsed here with ``struct``: no readelf or pyelftools at build time), and each
library it needs must be

- inside the wheel, reachable through the file's own ``$ORIGIN`` RUNPATH,
- on the manylinux allowlist (glibc's libraries, libstdc++, libgcc_s, the loader), or
- allowed for the tier (``dxbuild.engine.wheel.allowed_outside``: the declared vendor
  wheels' libraries, the GPU driver's).

An absolute RUNPATH is a problem too (it points into the build machine). The
platform tag is the manylinux one the needed symbol versions allow
(``GLIBC_2.N``, and libstdc++'s ``GLIBCXX_``/``CXXABI_``/``GCC_`` through
auditwheel's policy table; never below 2_17), as auditwheel names it;
``auditwheel show`` checks the same wheels in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from dxverify.errors import MalformedInputError

#: PEP 600 / auditwheel's libraries every manylinux system has
MANYLINUX_ALLOWLIST = frozenset({
    "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
    "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})
#: the newest libstdc++/libgcc symbol versions each manylinux glibc level guarantees
#: (auditwheel's manylinux-policy.json, x86_64 and aarch64 alike but for GCC_, where the higher is kept)
_POLICY: tuple[tuple[tuple[int, int], dict[str, str]], ...] = (
    ((2, 17), {"GLIBCXX": "3.4.19", "CXXABI": "1.3.7", "GCC": "4.7.0"}),
    ((2, 24), {"GLIBCXX": "3.4.22", "CXXABI": "1.3.10", "GCC": "4.8.0"}),
    ((2, 27), {"GLIBCXX": "3.4.24", "CXXABI": "1.3.11", "GCC": "7.0.0"}),
    ((2, 31), {"GLIBCXX": "3.4.28", "CXXABI": "1.3.12", "GCC": "7.0.0"}),
    ((2, 34), {"GLIBCXX": "3.4.29", "CXXABI": "1.3.13", "GCC": "7.0.0"}),
    ((2, 35), {"GLIBCXX": "3.4.30", "CXXABI": "1.3.13", "GCC": "12.0.0"}),
    ((2, 39), {"GLIBCXX": "3.4.33", "CXXABI": "1.3.15", "GCC": "14.0.0"}),
)
_MACHINES = {62: "x86_64", 183: "aarch64"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".") if x.isdigit())


def glibc_level(version: str) -> tuple[int, int] | None:
    """The manylinux glibc level a needed symbol version (``GLIBC_2.34``, ``GLIBCXX_3.4.30``) asks for."""
    family, _, number = version.partition("_")
    if family == "GLIBC":
        v = _version(number)
        return (v[0], v[1]) if len(v) >= 2 else None
    if family not in ("GLIBCXX", "CXXABI", "GCC"):
        return None
    for level, newest in _POLICY:
        if _version(number) <= _version(newest[family]):
            return level
    return (99, 0)   # newer than any policy DX knows: no manylinux tag fits
_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 14, 15, 29
_SHT_DYNAMIC, _SHT_VERNEED = 6, 0x6FFFFFFE


@dataclass(frozen=True)
class ElfDeps:
    """What the dynamic loader reads from one ELF file."""

    machine: str
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None
    versions: tuple[str, ...]       # symbol versions needed, e.g. GLIBC_2.34, GLIBCXX_3.4.30


def read_elf_deps(data: bytes, name: str = "ELF file") -> ElfDeps:
    """Parse ``data`` (a 64-bit ELF) for its NEEDED, RUNPATH/RPATH, SONAME and version needs."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise MalformedInputError(f"{name}: not an ELF file")
    if data[4] != 2:
        raise MalformedInputError(f"{name}: 32-bit ELF; engine wheels are 64-bit only")
    end = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(end + "H", data, 18)
    shoff, = struct.unpack_from(end + "Q", data, 40)
    shentsize, shnum = struct.unpack_from(end + "HH", data, 58)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if off + 64 > len(data):
            raise MalformedInputError(f"{name}: section table past the end of the file")
        _n, typ, _f, _a, offset, size, link, info, _al, _es = struct.unpack_from(end + "IIQQQQIIQQ", data, off)
        sections.append((typ, offset, size, link, info))

    def string(table: int, at: int) -> str:
        _t, off, size, _l, _i = sections[table]
        stop = data.find(b"\0", off + at, off + size)
        return data[off + at: stop if stop >= 0 else off + size].decode("utf-8", "replace")

    needed: list[str] = []
    runpath: list[str] = []
    soname = None
    versions: list[str] = []
    for typ, offset, size, link, info in sections:
        if typ == _SHT_DYNAMIC:
            for pos in range(offset, offset + size - 15, 16):
                tag, val = struct.unpack_from(end + "qQ", data, pos)
                if tag == 0:
                    break
                if tag == _DT_NEEDED:
                    needed.append(string(link, val))
                elif tag in (_DT_RPATH, _DT_RUNPATH):
                    runpath += [p for p in string(link, val).split(":") if p]
                elif tag == _DT_SONAME:
                    soname = string(link, val)
        elif typ == _SHT_VERNEED:
            pos = offset
            for _ in range(info):
                _v, cnt, _file, aux, nxt = struct.unpack_from(end + "HHIII", data, pos)
                apos = pos + aux
                for _ in range(cnt):
                    _h, _fl, _o, vname, anext = struct.unpack_from(end + "IHHII", data, apos)
                    versions.append(string(link, vname))
                    apos += anext
                if not nxt:
                    break
                pos += nxt
    return ElfDeps(_MACHINES.get(machine, f"machine-{machine}"), tuple(needed), tuple(runpath), soname,
                   tuple(sorted(set(versions))))


@dataclass
class WheelAudit:
    wheel: Path
    elf_files: int = 0
    problems: list[str] = field(default_factory=list)
    glibc: tuple[int, int] = (2, 17)
    arch: str = ""

    @property
    def platform_tag(self) -> str:
        return f"manylinux_{self.glibc[0]}_{self.glibc[1]}_{self.arch}"


def audit_wheel(wheel: Path, allowed: frozenset[str] = frozenset()) -> WheelAudit:
    """Check every ELF in ``wheel``; ``allowed``: libraries the tier may need from outside (declared, driver)."""
    result = WheelAudit(wheel)
    with zipfile.ZipFile(wheel) as zf:
        members = [i.filename for i in zf.infolist() if not i.is_dir()]
        inside = set(members)
        for member in members:
            with zf.open(member) as f:
                if f.read(4) != b"\x7fELF":
                    continue
            deps = read_elf_deps(zf.read(member), member)
            result.elf_files += 1
            if result.arch and deps.machine != result.arch:
                result.problems.append(f"{member}: {deps.machine} in a {result.arch} wheel")
            result.arch = result.arch or deps.machine
            here = posixpath.dirname(member)
            dirs = []
            for entry in deps.runpath:
                if entry.startswith("$ORIGIN"):
                    dirs.append(posixpath.normpath(posixpath.join(here, entry[len("$ORIGIN"):].lstrip("/"))))
                else:
                    result.problems.append(f"{member}: RUNPATH {entry} points into the build machine")
            for lib in deps.needed:
                if lib in MANYLINUX_ALLOWLIST or lib in allowed:
                    continue
                if any(posixpath.join(d, lib) in inside for d in dirs):
                    continue
                where = " (it is in the wheel, but not on this file's RUNPATH)" if any(
                    m.endswith("/" + lib) for m in inside) else ""
                result.problems.append(f"{member} needs {lib}: not in the wheel, not on the manylinux "
                                       f"allowlist, not declared{where}")
            for v in deps.versions:
                level = glibc_level(v)
                if level:
                    result.glibc = max(result.glibc, level)
    if result.elf_files == 0:
        result.problems.append("no ELF files in the wheel")
    return result


def retag(wheel: Path, platform_tag: str) -> Path:
    """``wheel`` renamed and re-tagged for ``platform_tag`` (its WHEEL file and RECORD rewritten, as auditwheel does)."""
    name, version, py, abi, _plat = wheel.name[: -len(".whl")].split("-")
    new = wheel.with_name(f"{name}-{version}-{py}-{abi}-{platform_tag}.whl")
    if new == wheel:
        return wheel
    info_dir = f"{name}-{version}.dist-info"
    fd, tmp_name = tempfile.mkstemp(suffix=".whl", dir=wheel.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp_name, "w", zipfile.ZIP_DEFLATED) as dst:
            wheel_text = src.read(f"{info_dir}/WHEEL").decode()
            wheel_text = re.sub(r"(?m)^Tag: .*$", f"Tag: {py}-{abi}-{platform_tag}", wheel_text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(wheel_text.encode()).digest()).rstrip(b"=").decode()
            for item in src.infolist():
                if item.filename == f"{info_dir}/WHEEL":
                    dst.writestr(item, wheel_text)
                elif item.filename == f"{info_dir}/RECORD":
                    record = re.sub(rf"(?m)^{re.escape(info_dir)}/WHEEL,[^\n]*$",
                                    f"{info_dir}/WHEEL,sha256={digest},{len(wheel_text.encode())}",
                                    src.read(item).decode())
                    dst.writestr(item, record)
                else:
                    dst.writestr(item, src.read(item))
        shutil.copymode(wheel, tmp_name)   # mkstemp made it 0600
        os.replace(tmp_name, new)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    wheel.unlink()
    return new
