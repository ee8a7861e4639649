"""The embedded-model trailer: how a minted executable carries its GGUF.

Layout of a minted executable (DESIGN.md §3)::

    [ Nuitka onefile runtime ][ zero padding to 64 KiB ][ GGUF, unchanged ]
    [ metadata JSON (UTF-8) ][ trailer, TRAILER_SIZE bytes ]

The trailer sits at the very end so a program can find it by reading the last
few bytes of its own file. The GGUF starts on a 64 KiB boundary so the engine
can mmap it in place (``llama-server -m 'FILE#offset=N'``): no extraction, no
second copy. Every field is checked against the file before it is used — a
truncated, padded or forged file gets one clear error, never a wrong offset.

Trailer, little-endian, ``TRAILER_SIZE`` = 72 bytes::

    u32  format version (1)
    u32  CRC-32 of the metadata JSON bytes
    u64  model offset      (multiple of ALIGNMENT, > 0)
    u64  model length
    u64  metadata length   (<= MAX_METADATA)
    32B  model SHA-256
    8B   magic b"DXMODEL1"
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dxverify.errors import IntegrityError, MalformedInputError

MAGIC = b"DXMODEL1"
FORMAT_VERSION = 1
ALIGNMENT = 64 * 1024
MAX_METADATA = 1 << 20
_STRUCT = struct.Struct("<IIQQQ32s8s")
TRAILER_SIZE = _STRUCT.size
# Fields every metadata block carries; the runtime shows them and checks them.
REQUIRED_METADATA = ("model", "source", "sha256", "tier", "dx_version", "llama_cpp_commit")
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class EmbeddedModel:
    """Where the model lies inside ``path``, and what the trailer says about it."""

    path: Path
    offset: int
    length: int
    sha256: str
    metadata: dict[str, Any]
    file_size: int

    @property
    def engine_path(self) -> str:
        """The model argument for the patched engine: load in place at ``offset``."""
        return f"{self.path}#offset={self.offset}"


def aligned_offset(runtime_size: int) -> int:
    """First ALIGNMENT boundary at or after ``runtime_size``."""
    return -(-runtime_size // ALIGNMENT) * ALIGNMENT


def pack_trailer(offset: int, length: int, metadata_bytes: bytes, sha256_hex: str) -> bytes:
    digest = bytes.fromhex(sha256_hex)
    if len(digest) != 32:
        raise ValueError("sha256 must be 64 hex digits")
    crc = zlib.crc32(metadata_bytes) & 0xFFFFFFFF
    return _STRUCT.pack(FORMAT_VERSION, crc, offset, length, len(metadata_bytes), digest, MAGIC)


def find_trailer(path: Path | str) -> EmbeddedModel | None:
    """The embedded model of ``path``, or None when the file carries no trailer.

    A file that ends with the magic but whose trailer does not add up raises
    MalformedInputError naming the field: it was meant to carry a model and is
    damaged (truncated, appended to, or forged).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, path)
    except OSError as e:
        raise MalformedInputError(
            f"cannot read {path}: {e.strerror or e}", hint="check the path and its permissions"
        ) from e


def read_trailer(path: Path | str) -> EmbeddedModel:
    """Like find_trailer, but a file without a trailer is an error too."""
    found = find_trailer(path)
    if found is None:
        raise MalformedInputError(
            f"{path}: no embedded model (no DX trailer in the last {TRAILER_SIZE} bytes)",
            hint="this is not a DX executable with a model, or it was truncated",
        )
    return found


def _read(f: BinaryIO, path: Path) -> EmbeddedModel | None:
    size = os.fstat(f.fileno()).st_size
    if size < TRAILER_SIZE:
        return None
    f.seek(size - TRAILER_SIZE)
    raw = f.read(TRAILER_SIZE)
    if len(raw) != TRAILER_SIZE or raw[-8:] != MAGIC:
        return None
    version, crc, offset, length, meta_len, digest, _ = _STRUCT.unpack(raw)
    where = f"{path}: embedded-model trailer at byte {size - TRAILER_SIZE}"
    if version != FORMAT_VERSION:
        raise MalformedInputError(
            f"{where}: format version {version} is not supported (this dx reads {FORMAT_VERSION})",
            hint="use the dx version that minted it",
        )
    if meta_len > MAX_METADATA:
        raise MalformedInputError(f"{where}: metadata length {meta_len} exceeds {MAX_METADATA}")
    if offset == 0 or offset % ALIGNMENT:
        raise MalformedInputError(f"{where}: model offset {offset} is not a positive multiple of {ALIGNMENT}")
    expected_end = offset + length + meta_len + TRAILER_SIZE
    if expected_end != size:
        raise MalformedInputError(
            f"{where}: offset {offset} + model {length} + metadata {meta_len} + trailer {TRAILER_SIZE}"
            f" = {expected_end} bytes, but the file has {size}",
            hint="the file was truncated or appended to; download it again",
        )
    f.seek(offset + length)
    meta_bytes = f.read(meta_len)
    if (zlib.crc32(meta_bytes) & 0xFFFFFFFF) != crc:
        raise MalformedInputError(f"{where}: metadata at byte {offset + length} fails its CRC-32")
    try:
        metadata = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedInputError(f"{where}: metadata at byte {offset + length} is not JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise MalformedInputError(f"{where}: metadata is not a JSON object")
    missing = [k for k in REQUIRED_METADATA if not isinstance(metadata.get(k), str)]
    if missing:
        raise MalformedInputError(f"{where}: metadata lacks {', '.join(missing)}")
    sha_hex = digest.hex()
    if metadata["sha256"] != sha_hex:
        raise IntegrityError(
            f"{where}: metadata SHA-256 {metadata['sha256']} differs from the trailer's {sha_hex}",
            hint="the executable was altered; download it again",
        )
    return EmbeddedModel(path=path, offset=offset, length=length, sha256=sha_hex,
                         metadata=metadata, file_size=size)


def hash_region(path: Path | str, offset: int, length: int,
                progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of ``length`` bytes of ``path`` starting at ``offset``."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        left = length
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while left:
            n = f.readinto(view[: min(_CHUNK, left)])
            if not n:
                raise MalformedInputError(f"{path}: ended {left} bytes before the embedded model's end")
            h.update(view[:n])
            left -= n
            if progress:
                progress(n)
    return h.hexdigest()


def check_model_hash(model: EmbeddedModel, progress: Callable[[int], None] | None = None) -> None:
    """Hash the embedded model and compare it with the trailer; IntegrityError on mismatch."""
    got = hash_region(model.path, model.offset, model.length, progress)
    if got != model.sha256:
        raise IntegrityError(
            f"{model.path}: embedded model ({model.length} bytes at offset {model.offset}) has SHA-256 {got},"
            f" the trailer says {model.sha256}",
            hint="the model inside this executable was altered; refusing to use it — download it again",
        )


def check_runtime(model: EmbeddedModel) -> None:
    """Check the runtime part (before the model) against the metadata's size and SHA-256.

    Executables minted before these fields existed have nothing to check against
    and pass; zero padding up to the model offset is checked too.
    """
    size = model.metadata.get("runtime_size")
    digest = model.metadata.get("runtime_sha256")
    if not isinstance(size, int) or not isinstance(digest, str):
        return
    if not 0 < size <= model.offset or model.offset - size >= ALIGNMENT:
        raise MalformedInputError(f"{model.path}: metadata runtime_size {size} does not fit before the model"
                                  f" at offset {model.offset}")
    got = hash_region(model.path, 0, size)
    if got != digest:
        raise IntegrityError(
            f"{model.path}: the runtime (first {size} bytes) has SHA-256 {got}, the metadata says {digest}",
            hint="the executable was altered; download it again",
        )
    with open(model.path, "rb") as f:
        f.seek(size)
        if f.read(model.offset - size).strip(b"\0"):
            raise IntegrityError(f"{model.path}: padding between byte {size} and {model.offset} is not zero",
                                 hint="the executable was altered; download it again")


def write_executable(runtime: Path | str, model: Path | str, dest: BinaryIO,
                     metadata: dict[str, Any], expected_sha256: str | None = None,
                     progress: Callable[[int], None] | None = None,
                     file_hasher: Any = None) -> EmbeddedModel:
    """Write runtime + padding + model + metadata + trailer to the open file ``dest``.

    The model is hashed while it is copied (one read), and if ``expected_sha256``
    is given a mismatch raises IntegrityError before the trailer is written, so
    a model that changed after verification never gets sealed. The caller owns
    ``dest`` (a temporary file it renames into place on success).

    ``file_hasher`` (a hashlib object), when given, is fed every byte written, so
    the whole executable's SHA-256 comes out of the same single pass; it runs in
    a second thread, next to the model's hasher (hashlib releases the GIL).
    """
    dest.seek(0)
    dest.truncate()
    with _Feeder(dest, file_hasher) as out:
        rh = hashlib.sha256()
        with open(runtime, "rb") as src:
            runtime_size = _copy(src, out, rh, None)
        offset = aligned_offset(runtime_size)
        out.write(b"\0" * (offset - runtime_size))
        h = hashlib.sha256()
        with open(model, "rb", buffering=0) as src:
            length = _copy(src, out, h, progress)
        metadata = {**metadata, "runtime_size": runtime_size, "runtime_sha256": rh.hexdigest()}
        tail = _seal(model, h.hexdigest(), expected_sha256, metadata, offset, length)
        out.write(tail)
    dest.flush()
    meta = json.loads(tail[: -TRAILER_SIZE])
    total = offset + length + len(tail)
    name = Path(dest.name) if isinstance(getattr(dest, "name", None), str) else Path()
    return EmbeddedModel(path=name, offset=offset, length=length, sha256=meta["sha256"],
                         metadata=meta, file_size=total)


def _seal(model: Path | str, sha_hex: str, expected_sha256: str | None, metadata: dict[str, Any],
          offset: int, length: int) -> bytes:
    """Metadata JSON + trailer for a model that hashed to ``sha_hex``."""
    if expected_sha256 is not None and sha_hex != expected_sha256.lower():
        raise IntegrityError(
            f"model {model} has SHA-256 {sha_hex}, expected {expected_sha256}",
            hint="the file is corrupt or was replaced; nothing was written",
        )
    meta = dict(metadata)
    meta["sha256"] = sha_hex
    meta.setdefault("length", length)
    missing = [k for k in REQUIRED_METADATA if not isinstance(meta.get(k), str)]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(meta_bytes) > MAX_METADATA:
        raise ValueError("metadata too large")
    return meta_bytes + pack_trailer(offset, length, meta_bytes, sha_hex)


class _Feeder:
    """A writer that also feeds an optional hasher in a helper thread, in order."""

    def __init__(self, dest: BinaryIO, hasher: Any) -> None:
        self.dest = dest
        self.hasher = hasher
        self._pool: Any = None
        self._pending: Any = None

    def __enter__(self) -> _Feeder:
        if self.hasher is not None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dx-file-hash")
        return self

    def write(self, data: bytes | memoryview) -> None:
        """Start hashing ``data`` and write it; call sync() before reusing its buffer."""
        self.sync()
        if self._pool is not None:
            self._pending = self._pool.submit(self.hasher.update, data)
        self.dest.write(data)

    def sync(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def __exit__(self, *exc: object) -> None:
        self.sync()
        if self._pool is not None:
            self._pool.shutdown()


def _copy(src: BinaryIO, out: _Feeder, h: Any, progress: Callable[[int], None] | None) -> int:
    """Copy src to out; the model hash runs while out's hasher works on the same chunk."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = src.readinto(view)
        if not n:
            out.sync()
            return total
        chunk = view[:n]
        out.write(chunk)
        if h is not None:
            h.update(chunk)
        out.sync()
        total += n
        if progress:
            progress(n)
