"""``SHA256SUMS``: write and read the release's checksum list.

The format is exactly what ``sha256sum -c`` reads (``<hex>  <name>``, two
spaces, bare file names), so users and ``install.sh`` check downloads with the
standard tool. Names are sorted so the same files always give the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

from dxbuild.atomic import write_text_atomic
from dxverify.errors import IntegrityError, MalformedInputError
from dxverify.hashing import sha256_file

SUMS_NAME = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *]([^/\\\x00\n]+)$")


def format_sums(entries: dict[str, str]) -> str:
    """``{file name: sha256 hex}`` → SHA256SUMS text, sorted by name."""
    for n in entries:
        if "/" in n or "\n" in n or not n:
            raise ValueError(f"not a bare file name: {n!r}")
    return "".join(f"{entries[n]}  {n}\n" for n in sorted(entries))


def parse_sums(path: Path) -> dict[str, str]:
    """Read a SHA256SUMS file strictly; a bad line is an IntegrityError naming its number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MalformedInputError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise IntegrityError(f"{path} is not UTF-8 text (byte {e.start})") from e
    out: dict[str, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            raise IntegrityError(
                f"{path}:{no}: not a checksum line (expected '<64 hex>  <file>'): {line[:80]!r}"
            )
        digest, fname = m.groups()
        if fname in out:
            raise IntegrityError(f"{path}:{no}: {fname} is listed twice")
        out[fname] = digest
    if not out:
        raise IntegrityError(f"{path} lists no files")
    return out


def write_sums(directory: Path, files: list[Path], known: dict[str, str] | None = None) -> Path:
    """Hash ``files`` (all inside ``directory``) and write SHA256SUMS atomically.

    ``known`` holds digests this very run computed while writing those files (the
    mint hashes its output as it writes it); every other file is hashed here.
    """
    directory = Path(directory)
    known = known or {}
    entries = {}
    for f in files:
        f = Path(f)
        if f.resolve().parent != directory.resolve():
            raise ValueError(f"{f} is not directly inside {directory}")
        entries[f.name] = known.get(f.name) or sha256_file(f)
    dest = directory / SUMS_NAME
    write_text_atomic(dest, format_sums(entries))
    return dest
