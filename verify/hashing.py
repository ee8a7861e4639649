"""Streamed SHA-256 of a file (or a region of one), and where an expected hash comes from.

Why not ``hashlib.file_digest``: models are embedded inside executables, so we
hash a region (offset, length), and long hashes want a progress callback. One
reusable buffer filled with ``readinto`` keeps memory constant; hashlib releases
the GIL on large updates, so a server thread keeps answering while we hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from dxverify.errors import ConfigurationError, MalformedInputError

# Large enough that per-call overhead vanishes, small enough to stay in L2/L3 friendly territory.
CHUNK_SIZE = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BLOB_NAME = re.compile(r"sha256[-:]([0-9a-fA-F]{64})")


def normalize_sha256(value: str, *, source: str = "--sha256") -> str:
    """Lower-case hex, or a ConfigurationError naming where the bad value came from."""
    v = value.strip().lower()
    if v.startswith("sha256:") or v.startswith("sha256-"):
        v = v[7:]
    if not _HEX64.fullmatch(v):
        raise ConfigurationError(f"{source}: {value!r} is not a SHA-256 (64 hex digits)")
    return v


def sha256_file(
    path: str | os.PathLike[str],
    offset: int = 0,
    length: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Hex SHA-256 of ``length`` bytes of ``path`` starting at ``offset`` (to the end when None).

    ``progress(done, total)`` is called after every chunk. Raises MalformedInputError
    when the file is not a regular file or is shorter than the region.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise MalformedInputError(f"{p}: cannot read: {e.strerror or e}") from None
    # Checked before open(): opening a FIFO would block forever.
    if stat.S_ISDIR(st.st_mode):
        raise MalformedInputError(f"{p}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise MalformedInputError(f"{p}: is not a regular file")
    total = st.st_size - offset if length is None else length
    if offset < 0 or total < 0 or offset + total > st.st_size:
        raise MalformedInputError(
            f"{p}: region [{offset}, {offset + max(total, 0)}) is outside the {st.st_size}-byte file"
        )
    try:
        fh = open(p, "rb", buffering=0)  # noqa: SIM115 - the with below owns it; open errors need their own message
    except OSError as e:
        raise MalformedInputError(f"{p}: cannot read: {e.strerror or e}") from None
    with fh:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), offset, total, os.POSIX_FADV_SEQUENTIAL)
        fh.seek(offset)
        h = hashlib.sha256()
        buf = bytearray(min(CHUNK_SIZE, max(total, 1)))
        view = memoryview(buf)
        done = 0
        while done < total:
            want = min(len(buf), total - done)
            n = fh.readinto(view[:want])
            if not n:
                raise MalformedInputError(f"{p}: file shrank while hashing ({done} of {total} bytes read)")
            h.update(view[:n])
            done += n
            if progress is not None:
                progress(done, total)
        return h.hexdigest()


def expected_sha256_for(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 a file is supposed to have, if its name or a SHA256SUMS beside it says so.

    Ollama stores blobs as ``sha256-<hex>``; releases ship a ``SHA256SUMS`` in
    ``sha256sum`` format. A name that appears in SHA256SUMS with a malformed hash is
    an error (the list is corrupt), not "unknown".
    """
    p = Path(path)
    m = _BLOB_NAME.fullmatch(p.name)
    if m:
        return m.group(1).lower()
    sums = p.parent / "SHA256SUMS"
    if not sums.is_file():  # also keeps a FIFO named SHA256SUMS from blocking us
        return None
    try:
        text = sums.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            continue
        digest, name = parts
        name = name[1:] if name.startswith(("*", " ")) else name
        if name.strip() == p.name:
            return normalize_sha256(digest, source=f"{sums}:{lineno}")
    return None
