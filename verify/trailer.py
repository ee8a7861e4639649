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

Format version 2 (DESIGN.md §9) carries more than one GGUF — the target ("model")
and a draft for speculative decoding ("draft"). Each sits on its own 64 KiB
boundary, one after another, each mapped in place by its own ``FILE#offset=N``::

    [ runtime ][ pad ][ model GGUF ][ pad ][ draft GGUF ][ entry table ][ metadata JSON ][ trailer ]

The trailer keeps its size and magic; in version 2 its offset/length fields give
the entry table's place (``ENTRY_SIZE`` bytes per entry, at most ``MAX_ENTRIES``),
the CRC-32 covers table + metadata, and the SHA-256 is the "model" entry's. An
entry, little-endian::

    u64  offset   (multiple of ALIGNMENT; the first is the runtime's aligned end, each next
                   one the previous entry's aligned end, the table right after the last)
    u64  length   (> 0)
    32B  SHA-256
    16B  role, ASCII, NUL-padded ("model" exactly once, first; "draft"; "projector"; "adapter";
                   no role twice)

A "projector" entry is a multimodal (CLIP) projector GGUF for the model (``dxbuild
--mmproj``); an "adapter" entry a LoRA adapter GGUF for it (``dxbuild --adapter``,
a Modelfile's ``ADAPTER``). The engine's projector and adapter loaders read whole
files only, so the runtime extracts each once to a verified cache file
(``dx.models.embedded``). Entries follow in the order model, draft, projector, adapter.

The metadata records each other entry under its role (``metadata["draft"]``,
``metadata["projector"]``, ``metadata["adapter"]``: model, source, sha256, length), and the reader checks that record against the table. A
single model is still written as version 1, byte for byte as before, so existing
executables, golden files and readers see no change.
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
from dxverify.hashing import sha256_file

MAGIC = b"DXMODEL1"
FORMAT_VERSION = 1
FORMAT_VERSION_ENTRIES = 2
SUPPORTED_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_ENTRIES)
ALIGNMENT = 64 * 1024
MAX_METADATA = 1 << 20
_STRUCT = struct.Struct("<IIQQQ32s8s")
TRAILER_SIZE = _STRUCT.size
# Fields every metadata block carries; the runtime shows them and checks them.
REQUIRED_METADATA = ("model", "source", "sha256", "tier", "dx_version", "llama_cpp_commit")
_CHUNK = 8 * 1024 * 1024
_ENTRY = struct.Struct("<QQ32s16s")
ENTRY_SIZE = _ENTRY.size
MAX_ENTRIES = 16
PRIMARY_ROLE = "model"
# "projector": a multimodal (CLIP) projector the engine loads with --mmproj for the model.
# "adapter": a LoRA adapter the engine applies to the model with --lora.
ROLES = (PRIMARY_ROLE, "draft", "projector", "adapter")


@dataclass(frozen=True)
class Entry:
    """One GGUF inside the executable: where it lies, its SHA-256 and what it is for."""

    role: str
    offset: int
    length: int
    sha256: str
    path: Path = Path()

    @property
    def engine_path(self) -> str:
        """The model argument for the patched engine: load in place at ``offset``."""
        return f"{self.path}#offset={self.offset}"


@dataclass(frozen=True)
class EmbeddedModel:
    """Where the model lies inside ``path``, and what the trailer says about it."""

    path: Path
    offset: int
    length: int
    sha256: str
    metadata: dict[str, Any]
    file_size: int
    # Every embedded GGUF, the primary model first; a version-1 file has just that one.
    entries: tuple[Entry, ...] = ()
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.entries:
            object.__setattr__(self, "entries", (Entry(PRIMARY_ROLE, self.offset, self.length, self.sha256,
                                                       self.path),))

    @property
    def engine_path(self) -> str:
        """The model argument for the patched engine: load in place at ``offset``."""
        return f"{self.path}#offset={self.offset}"

    def entry(self, role: str) -> Entry | None:
        """The entry with ``role`` ("model", "draft"), or None."""
        return next((e for e in self.entries if e.role == role), None)

    @property
    def draft(self) -> Entry | None:
        return self.entry("draft")

    @property
    def projector(self) -> Entry | None:
        return self.entry("projector")

    @property
    def adapter(self) -> Entry | None:
        return self.entry("adapter")

    @property
    def payload_end(self) -> int:
        """Where the last GGUF ends (the entry table, or the v1 metadata, starts here)."""
        last = self.entries[-1]
        return last.offset + last.length


def aligned_offset(runtime_size: int) -> int:
    """First ALIGNMENT boundary at or after ``runtime_size``."""
    return -(-runtime_size // ALIGNMENT) * ALIGNMENT


def pack_trailer(offset: int, length: int, metadata_bytes: bytes, sha256_hex: str) -> bytes:
    digest = bytes.fromhex(sha256_hex)
    if len(digest) != 32:
        raise ValueError("sha256 must be 64 hex digits")
    crc = zlib.crc32(metadata_bytes) & 0xFFFFFFFF
    return _STRUCT.pack(FORMAT_VERSION, crc, offset, length, len(metadata_bytes), digest, MAGIC)


def pack_entries(entries: list[Entry] | tuple[Entry, ...]) -> bytes:
    out = bytearray()
    for e in entries:
        role = e.role.encode("ascii")
        digest = bytes.fromhex(e.sha256)
        if not 0 < len(role) <= 16 or len(digest) != 32:
            raise ValueError(f"bad entry {e}")
        out += _ENTRY.pack(e.offset, e.length, digest, role)
    return bytes(out)


def find_entries(path: Path | str) -> tuple[Entry, ...]:
    """Every GGUF embedded in ``path`` (primary model first); () for a file without a trailer."""
    found = find_trailer(path)
    return found.entries if found is not None else ()


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
    if version not in SUPPORTED_VERSIONS:
        raise MalformedInputError(
            f"{where}: format version {version} is not supported (this dx reads"
            f" {' and '.join(map(str, SUPPORTED_VERSIONS))})",
            hint="use the dx version that minted it",
        )
    if meta_len > MAX_METADATA:
        raise MalformedInputError(f"{where}: metadata length {meta_len} exceeds {MAX_METADATA}")
    if version == FORMAT_VERSION_ENTRIES:
        return _read_v2(f, path, where, size, crc, offset, length, meta_len, digest.hex())
    if offset == 0 or offset % ALIGNMENT:
        raise MalformedInputError(f"{where}: model offset {offset} is not a positive multiple of {ALIGNMENT}")
    _check_end(where, f"offset {offset} + model {length}", offset + length, meta_len, size)
    f.seek(offset + length)
    meta_bytes = f.read(meta_len)
    if (zlib.crc32(meta_bytes) & 0xFFFFFFFF) != crc:
        raise MalformedInputError(f"{where}: metadata at byte {offset + length} fails its CRC-32")
    metadata = _metadata(meta_bytes, where, offset + length, digest.hex())
    return EmbeddedModel(path=path, offset=offset, length=length, sha256=digest.hex(),
                         metadata=metadata, file_size=size)


def _check_end(where: str, layout: str, meta_at: int, meta_len: int, size: int) -> None:
    """MalformedInputError unless what the trailer describes (``layout``, then metadata, then the trailer) ends the file."""
    expected_end = meta_at + meta_len + TRAILER_SIZE
    if expected_end != size:
        raise MalformedInputError(
            f"{where}: {layout} + metadata {meta_len} + trailer {TRAILER_SIZE}"
            f" = {expected_end} bytes, but the file has {size}",
            hint="the file was truncated or appended to; download it again",
        )


def _metadata(meta_bytes: bytes, where: str, at: int, sha_hex: str) -> dict[str, Any]:
    try:
        metadata = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedInputError(f"{where}: metadata at byte {at} is not JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise MalformedInputError(f"{where}: metadata is not a JSON object")
    missing = [k for k in REQUIRED_METADATA if not isinstance(metadata.get(k), str)]
    if missing:
        raise MalformedInputError(f"{where}: metadata lacks {', '.join(missing)}")
    if metadata["sha256"] != sha_hex:
        raise IntegrityError(
            f"{where}: metadata SHA-256 {metadata['sha256']} differs from the trailer's {sha_hex}",
            hint="the executable was altered; download it again",
        )
    return metadata


def _read_v2(f: BinaryIO, path: Path, where: str, size: int, crc: int, table_at: int, table_len: int,
             meta_len: int, sha_hex: str) -> EmbeddedModel:
    """A version-2 trailer: the entry table, each entry checked against the file and the others."""
    if table_len == 0 or table_len % ENTRY_SIZE or table_len // ENTRY_SIZE > MAX_ENTRIES:
        raise MalformedInputError(f"{where}: entry table length {table_len} is not 1 to {MAX_ENTRIES} entries"
                                  f" of {ENTRY_SIZE} bytes")
    _check_end(where, f"entry table at {table_at} + {table_len}", table_at + table_len, meta_len, size)
    f.seek(table_at)
    table = f.read(table_len)
    meta_bytes = f.read(meta_len)
    if (zlib.crc32(table + meta_bytes) & 0xFFFFFFFF) != crc:
        raise MalformedInputError(f"{where}: entry table + metadata at byte {table_at} fail their CRC-32")
    entries: list[Entry] = []
    for i in range(table_len // ENTRY_SIZE):
        e_off, e_len, e_digest, raw_role = _ENTRY.unpack_from(table, i * ENTRY_SIZE)
        at = f"{where}: entry {i} (byte {table_at + i * ENTRY_SIZE})"
        role_bytes = raw_role.rstrip(b"\0")
        if not role_bytes or b"\0" in role_bytes or not all(0x21 <= c < 0x7F for c in role_bytes):
            raise MalformedInputError(f"{at}: role {raw_role!r} is not a NUL-padded ASCII name")
        role = role_bytes.decode("ascii")
        if role not in ROLES:
            raise MalformedInputError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}",
                                      hint="use the dx version that minted it")
        if any(e.role == role for e in entries):
            raise MalformedInputError(f"{at}: role {role!r} appears twice")
        if (i == 0) != (role == PRIMARY_ROLE):
            raise MalformedInputError(f"{at}: the first entry must be the {PRIMARY_ROLE!r}, and only the first")
        if e_off == 0 or e_off % ALIGNMENT:
            raise MalformedInputError(f"{at}: {role} offset {e_off} is not a positive multiple of {ALIGNMENT}")
        if e_len == 0:
            raise MalformedInputError(f"{at}: {role} length is 0")
        if e_off + e_len > table_at:
            raise MalformedInputError(f"{at}: {role} [{e_off}, {e_off + e_len}) runs past the entry table at"
                                      f" {table_at}", hint="the file was truncated or forged; download it again")
        if entries:
            prev_end = entries[-1].offset + entries[-1].length
            if e_off < prev_end:
                raise MalformedInputError(f"{at}: {role} at {e_off} overlaps the {entries[-1].role}, which ends"
                                          f" at {prev_end}")
            if e_off != aligned_offset(prev_end):
                raise MalformedInputError(f"{at}: {role} at {e_off} does not follow the {entries[-1].role}"
                                          f" (expected {aligned_offset(prev_end)})")
        entries.append(Entry(role, e_off, e_len, e_digest.hex(), path))
    last_end = entries[-1].offset + entries[-1].length
    if last_end != table_at:
        raise MalformedInputError(f"{where}: entry table at {table_at} does not follow the last entry"
                                  f" (it ends at {last_end})")
    model = entries[0]
    if model.sha256 != sha_hex:
        raise IntegrityError(f"{where}: the trailer's SHA-256 {sha_hex} differs from the model entry's"
                             f" {model.sha256}", hint="the executable was altered; download it again")
    metadata = _metadata(meta_bytes, where, table_at + table_len, sha_hex)
    for e in entries[1:]:
        rec = metadata.get(e.role)
        if not isinstance(rec, dict) or rec.get("sha256") != e.sha256:
            got = rec.get("sha256") if isinstance(rec, dict) else None
            raise IntegrityError(f"{where}: metadata {e.role!r} SHA-256 {got} differs from its entry's {e.sha256}",
                                 hint="the executable was altered; download it again")
    return EmbeddedModel(path=path, offset=model.offset, length=model.length, sha256=model.sha256,
                         metadata=metadata, file_size=size, entries=tuple(entries),
                         version=FORMAT_VERSION_ENTRIES)


def hash_region(path: Path | str, offset: int, length: int,
                progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of ``length`` bytes of ``path`` starting at ``offset`` (``dxverify.hashing.sha256_file``).

    ``progress(n)`` is told the bytes of each chunk as it is hashed.
    """
    if progress is None:
        return sha256_file(path, offset, length)
    said = 0

    def step(done: int, _total: int) -> None:
        nonlocal said
        progress(done - said)
        said = done

    return sha256_file(path, offset, length, step)


def check_entry_hash(entry: Entry, progress: Callable[[int], None] | None = None) -> None:
    """Hash one embedded GGUF and compare it with its entry; IntegrityError naming the entry on mismatch."""
    got = hash_region(entry.path, entry.offset, entry.length, progress)
    if got != entry.sha256:
        raise IntegrityError(
            f"{entry.path}: embedded {entry.role} entry ({entry.length} bytes at offset {entry.offset}) has"
            f" SHA-256 {got}, the trailer says {entry.sha256}",
            hint=f"the {entry.role} inside this executable was altered; refusing to use it — download it again",
        )


def check_model_hash(model: EmbeddedModel, progress: Callable[[int], None] | None = None) -> None:
    """Hash the embedded (primary) model and compare it with the trailer; IntegrityError on mismatch."""
    check_entry_hash(model.entries[0], progress)


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
    check_padding(model.path, size, model.offset)
    for prev, e in zip(model.entries, model.entries[1:], strict=False):
        check_padding(model.path, prev.offset + prev.length, e.offset)


def check_padding(path: Path, start: int, end: int) -> None:
    """The bytes in [start, end) are all zero (padding up to an entry's 64 KiB boundary)."""
    with open(path, "rb") as f:
        f.seek(start)
        if f.read(end - start).strip(b"\0"):
            raise IntegrityError(f"{path}: padding between byte {start} and {end} is not zero",
                                 hint="the executable was altered; download it again")


def write_executable(runtime: Path | str, model: Path | str, dest: BinaryIO,
                     metadata: dict[str, Any], expected_sha256: str | None = None,
                     progress: Callable[[int], None] | None = None,
                     file_hasher: Any = None, draft: Path | str | None = None,
                     draft_metadata: dict[str, Any] | None = None,
                     draft_expected_sha256: str | None = None, projector: Path | str | None = None,
                     projector_metadata: dict[str, Any] | None = None,
                     projector_expected_sha256: str | None = None, adapter: Path | str | None = None,
                     adapter_metadata: dict[str, Any] | None = None,
                     adapter_expected_sha256: str | None = None) -> EmbeddedModel:
    """Write runtime + padding + model [+ padding + draft] + metadata + trailer to the open file ``dest``.

    Each GGUF is hashed while it is copied (one read), and a mismatch with its
    expected SHA-256 raises IntegrityError before the trailer is written, so a
    model that changed after verification never gets sealed. The caller owns
    ``dest`` (a temporary file it renames into place on success). Without a
    draft, projector or adapter the file is format version 1, with one version 2
    (``draft_metadata`` is recorded under ``metadata["draft"]``, ``projector_metadata``
    under ``metadata["projector"]``, ``adapter_metadata`` under ``metadata["adapter"]``;
    the projector follows the draft, the adapter the projector).

    ``file_hasher`` (a hashlib object), when given, is fed every byte written, so
    the whole executable's SHA-256 comes out of the same single pass; it runs in
    a second thread, next to the model's hasher (hashlib releases the GIL).
    """
    dest.seek(0)
    dest.truncate()
    parts = [(PRIMARY_ROLE, model, expected_sha256)]
    if draft is not None:
        parts.append(("draft", draft, draft_expected_sha256))
    if projector is not None:
        parts.append(("projector", projector, projector_expected_sha256))
    if adapter is not None:
        parts.append(("adapter", adapter, adapter_expected_sha256))
    entries: list[Entry] = []
    with _Feeder(dest, file_hasher) as out:
        rh = hashlib.sha256()
        with open(runtime, "rb") as src:
            runtime_size = _copy(src, out, rh, None)
        pos = runtime_size
        for role, src_path, expected in parts:
            offset = aligned_offset(pos)
            out.write(b"\0" * (offset - pos))
            h = hashlib.sha256()
            with open(src_path, "rb", buffering=0) as src:
                length = _copy(src, out, h, progress)
            check_expected(role, src_path, h.hexdigest(), expected)
            entries.append(Entry(role, offset, length, h.hexdigest()))
            pos = offset + length
        metadata = {**metadata, "runtime_size": runtime_size, "runtime_sha256": rh.hexdigest()}
        tail = seal(entries, metadata, {"draft": draft_metadata or {}, "projector": projector_metadata or {},
                                        "adapter": adapter_metadata or {}})
        out.write(tail)
    dest.flush()
    name = Path(dest.name) if isinstance(getattr(dest, "name", None), str) else Path()
    return sealed_model(name, entries, tail)


def sealed_model(path: Path, entries: list[Entry], tail: bytes) -> EmbeddedModel:
    """The EmbeddedModel a reader will find in a file ending with ``tail`` (what seal returned)."""
    version, _, _, _, meta_len, _, _ = _STRUCT.unpack(tail[-TRAILER_SIZE:])
    meta = json.loads(tail[len(tail) - TRAILER_SIZE - meta_len: len(tail) - TRAILER_SIZE])
    placed = tuple(Entry(e.role, e.offset, e.length, e.sha256, path) for e in entries)
    m = placed[0]
    return EmbeddedModel(path=path, offset=m.offset, length=m.length, sha256=m.sha256, metadata=meta,
                         file_size=placed[-1].offset + placed[-1].length + len(tail), entries=placed,
                         version=version)


def check_expected(role: str, path: Path | str, sha_hex: str, expected: str | None) -> None:
    """IntegrityError when a GGUF just copied did not hash to its pin (nothing gets sealed)."""
    if expected is not None and sha_hex != expected.lower():
        what = "model" if role == PRIMARY_ROLE else f"{role} model"
        raise IntegrityError(
            f"{what} {path} has SHA-256 {sha_hex}, expected {expected}",
            hint="the file is corrupt or was replaced; nothing was written",
        )


def seal(entries: list[Entry], metadata: dict[str, Any], records: dict[str, dict[str, Any]] | None = None) -> bytes:
    """What follows the last GGUF: [entry table +] metadata JSON + trailer.

    One "model" entry: version 1, byte for byte what older DX wrote. More: version
    2, each further entry recorded in the metadata under its role (``records[role]``
    plus its sha256 and length), which the reader checks against the table.
    """
    if not entries or entries[0].role != PRIMARY_ROLE:
        raise ValueError("the first entry must be the model")
    model = entries[0]
    meta = dict(metadata)
    meta["sha256"] = model.sha256
    meta.setdefault("length", model.length)
    for e in entries[1:]:
        meta[e.role] = {**((records or {}).get(e.role) or {}), "sha256": e.sha256, "length": e.length}
    missing = [k for k in REQUIRED_METADATA if not isinstance(meta.get(k), str)]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(meta_bytes) > MAX_METADATA:
        raise ValueError("metadata too large")
    if len(entries) == 1:
        return meta_bytes + pack_trailer(model.offset, model.length, meta_bytes, model.sha256)
    if len(entries) > MAX_ENTRIES:
        raise ValueError("too many entries")
    table = pack_entries(entries)
    table_at = entries[-1].offset + entries[-1].length
    crc = zlib.crc32(table + meta_bytes) & 0xFFFFFFFF
    return table + meta_bytes + _STRUCT.pack(FORMAT_VERSION_ENTRIES, crc, table_at, len(table), len(meta_bytes),
                                             bytes.fromhex(model.sha256), MAGIC)


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
