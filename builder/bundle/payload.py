"""Read the file list of a Nuitka onefile (``--onefile-as-archive``) without running it.

The size report needs to know how many bytes of an executable are the engine,
the backend libraries and the Python runtime. In archive mode Nuitka stores
each file compressed on its own, with its sizes in a small header, so the
split is exact: no estimate, no unpacking. Layout (Nuitka 4.3, POSIX)::

    "KA" + ("Y" compressed | "X" stored)
    repeat: name UTF-8 NUL, flags u8 (1 exec, 2 symlink),
            symlink: target NUL | file: size u64, crc32 u32, [compressed size u32 + data]
    terminator: a lone NUL

The payload lives inside the ELF (a data section), so we find it by its magic
and accept the first candidate that parses cleanly to its terminator.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from dxverify.errors import MalformedInputError

MAGIC = b"KAY"
_MAX_NAME = 4096
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class PayloadEntry:
    name: str
    size: int          # unpacked bytes
    stored: int        # bytes it takes inside the executable (compressed)


@dataclass(frozen=True)
class Payload:
    start: int
    end: int
    entries: tuple[PayloadEntry, ...]

    @property
    def stored_total(self) -> int:
        return sum(e.stored for e in self.entries)


def _parse(m: mmap.mmap | bytes, pos: int, limit: int) -> Payload | None:
    start = pos
    pos += len(MAGIC)
    entries: list[PayloadEntry] = []
    while True:
        nul = m.find(b"\0", pos, min(limit, pos + _MAX_NAME))
        if nul < 0:
            return None
        if nul == pos:  # the terminator
            return Payload(start, nul + 1, tuple(entries)) if entries else None
        try:
            name = bytes(m[pos:nul]).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name.startswith("/") or ".." in name.split("/"):
            return None
        pos = nul + 1
        if pos + 1 > limit:
            return None
        flags = m[pos]
        pos += 1
        if flags & 2:
            nul = m.find(b"\0", pos, min(limit, pos + _MAX_NAME))
            if nul < 0:
                return None
            entries.append(PayloadEntry(name, 0, 0))
            pos = nul + 1
            continue
        if flags & ~3 or pos + 16 > limit:
            return None
        size, _crc, stored = struct.unpack_from("<QII", m, pos)
        pos += 16
        if stored == 0 or pos + stored > limit or m[pos:pos + 4] != _ZSTD_MAGIC:
            return None
        entries.append(PayloadEntry(name, size, stored))
        pos += stored


def read_payload(path: Path, limit: int | None = None) -> Payload:
    """The onefile payload in the first ``limit`` bytes of ``path`` (the runtime part of a minted file)."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 — closed by the with below
    except OSError as e:
        raise MalformedInputError(f"cannot read {path}: {e.strerror}") from e
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        end = min(limit or len(m), len(m))
        pos = m.find(MAGIC, 0, end)
        while pos >= 0:
            found = _parse(m, pos, end)
            if found is not None:
                return found
            pos = m.find(MAGIC, pos + 1, end)
    raise MalformedInputError(
        f"{path} holds no Nuitka onefile archive payload",
        hint="the size report reads bundles built with --onefile-as-archive and compression",
    )
