"""The model store: content-addressed GGUF blobs and name:tag manifests under DX_HOME.

Layout (``$DX_HOME``, default ``~/.dx``; the server's API key lives there too)::
    models/blobs/sha256-<hex>        the GGUF bytes, named by their SHA-256
    models/manifests/<quoted name:tag>.json
                                     name:tag -> blob digest + what we read from the GGUF; an
                                     ``in_file`` record (path, offset, length) instead names bytes
                                     where they are (a copy of the model inside a minted executable)
    models/tmp/                      imports, uploads and downloads in progress (same filesystem)
    models/downloads/                huggingface_hub's cache while a pull runs

A created model (``dx create``, ``/api/create``: ``dx.models.create``) is a manifest
like any other, naming its base model's blob (no copy) and carrying a ``modelfile``
record (system, messages, parameters, template, license, adapter and draft
digests, its Modelfile); a blob uploaded by ``POST /api/blobs`` (``receive_blob``)
is a blob without a name until a created model names it.

Everything is written to ``tmp/`` and renamed into place, so a crash leaves no
half blob and no half manifest. Models that Ollama keeps under
``~/.ollama/models`` are listed and served read-only (``dx.models.ollama_dir``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from dx.config import dx_home
from dx.errors import ModelNotFoundError, ReadOnlyModelError
from dx.models.check import ModelFacts, read_facts, sha256_of, verify_model
from dx.models.entry import ModelEntry
from dx.models.ollama_dir import default_ollama_dir, discover
from dx.names import ModelName, parse_name
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError

if TYPE_CHECKING:
    pass

MANIFEST_SCHEMA = 1
STALE_AFTER = 24 * 3600.0  # a partial file this old belongs to no running import
_HEX = frozenset("0123456789abcdef")

# progress(status, completed_bytes, total_bytes); the server streams it as /api/pull lines.
ProgressCallback = Callable[[str, "int | None", "int | None"], None]




@dataclass(frozen=True)
class ShownModel:
    """What ``dx show`` shows: the entry plus the GGUF's metadata, read now.

    (Ollama's ``details`` object, family / parameter size / quantisation, is
    ``dx.models.details.ModelDetails``.)
    """

    entry: ModelEntry
    facts: ModelFacts

    @property
    def metadata(self) -> dict[str, Any]:
        return self.facts.metadata

    @property
    def chat_template(self) -> str | None:
        t = self.facts.metadata.get("tokenizer.chat_template")
        return str(t) if t is not None else None


class ModelStore:
    """The store rooted at ``root`` (DX_HOME); Ollama's models from ``ollama_dir`` read-only.

    ``ollama_dir=None`` means the default (``$OLLAMA_MODELS`` or ``~/.ollama/models``);
    pass ``False`` to ignore Ollama entirely.
    """

    def __init__(self, root: Path | None = None, ollama_dir: Path | bool | None = None) -> None:
        self.root = Path(root) if root is not None else dx_home()
        self.models = self.root / "models"
        self.blobs = self.models / "blobs"
        self.manifests = self.models / "manifests"
        self.tmp = self.models / "tmp"
        self.downloads = self.models / "downloads"
        if ollama_dir is None or ollama_dir is True:
            self.ollama_dir: Path | None = default_ollama_dir()
        elif ollama_dir is False:
            self.ollama_dir = None
        else:
            self.ollama_dir = Path(ollama_dir)

    # ---- reading -------------------------------------------------------------

    def list(self) -> list[ModelEntry]:
        """Every model: DX's own first, then Ollama's whose names DX does not shadow."""
        own = self._own_entries()
        seen = {e.name for e in own}
        others = [e for e in self._ollama_entries() if e.name not in seen]
        return sorted(own, key=lambda e: e.name) + sorted(others, key=lambda e: e.name)

    def get(self, name: str) -> ModelEntry:
        """The entry for ``name[:tag]``; ModelNotFoundError when there is none."""
        mn = parse_name(name)
        path = self._manifest_path(mn)
        if path.is_file():
            return self._load_manifest(path)
        for e in self._ollama_entries():
            if e.name == str(mn):
                return e
        raise ModelNotFoundError(  # no path: this line reaches API clients (`dx list` says where the store is)
            f"no model named {str(mn)!r} in the store",
            hint="`dx list` shows the models; `dx pull NAME` fetches one",
        )

    def show(self, name: str) -> ShownModel:
        """The entry with the GGUF's metadata read (and structure-checked) now."""
        entry = self.get(name)
        return ShownModel(entry, read_facts(entry.path, entry.offset, entry.length))

    def own(self, name: str) -> ModelEntry | None:
        """DX's own manifest for ``name`` (never Ollama's), None when there is none: one file read."""
        path = self._manifest_path(parse_name(name))
        return self._load_manifest(path) if path.is_file() else None

    def blob_path(self, digest: str) -> Path | None:
        """The blob ``sha256:<hex>`` (or ``sha256-<hex>``) in DX's store, None when it is not there."""
        blob = self.blobs / f"sha256-{_check_hex(digest.replace('sha256-', 'sha256:', 1))}"
        return blob if blob.is_file() else None

    def find_by_source(self, source: str) -> ModelEntry | None:
        for e in self._own_entries():
            if e.source == source:
                return e
        return None

    # ---- resolving what the user typed ---------------------------------------

    def verify_path(self, path: Path, *, expected_sha256: str | None = None) -> str:
        """Structure now, SHA-256 once (cached under DX_HOME); returns the SHA-256."""
        return verify_model(path, expected_sha256=expected_sha256, cache_dir=self.root / "cache")

    # ---- writing -------------------------------------------------------------

    def import_file(
        self,
        path: Path,
        name: str,
        *,
        sha256: str | None = None,
        source: str | None = None,
        link: bool = False,
        registry: dict[str, Any] | None = None,
        modelfile: dict[str, Any] | None = None,
    ) -> ModelEntry:
        """Copy (or, with ``link``, hard-link: a download on the store's filesystem) a GGUF into the store.

        The bytes are hashed while copied, checked against ``sha256`` when given,
        structure-checked, and only then renamed into ``blobs/`` and named by a
        manifest. On any failure nothing is left in the store.
        """
        mn = parse_name(name)
        src = Path(path).expanduser()
        if not src.is_file():
            raise ModelNotFoundError(f"no GGUF file at {src}", hint="check the path")
        if sha256 is not None:
            sha256 = _check_hex(sha256)
        self._ensure_dirs()
        self.sweep_stale()
        tmp_fd, tmp_name = tempfile.mkstemp(prefix="import-", suffix=".partial", dir=self.tmp)
        tmp = Path(tmp_name)
        try:
            if link:
                # Our own name for the same inode: no copy, and whoever else holds the source
                # (a concurrent pull of the same file) keeps theirs.
                os.close(tmp_fd)
                tmp.unlink()
                try:
                    os.link(src, tmp)
                except FileNotFoundError:
                    raise
                except OSError:  # a filesystem without hard links
                    tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    _copy_hashing(src, tmp_fd)

                digest = sha256_of(tmp)
            else:
                digest = _copy_hashing(src, tmp_fd)
            if sha256 is not None and digest != sha256:
                what = source if source and not source.startswith("file:") else str(src)
                raise IntegrityError(
                    f"{what} has SHA-256 {digest}, expected {sha256}",
                    hint="the download is corrupt or the checksum is wrong; nothing was stored",
                )
            try:
                facts = read_facts(tmp)
            except MalformedInputError as e:  # name the user's file, not our temporary copy
                with_path = getattr(e, "with_path", None)
                raise (with_path(source or str(src)) if with_path else e) from None
            os.chmod(tmp, 0o644)
            with self._lock():
                blob = self._adopt_blob(tmp, digest)
                entry = self._write_manifest(
                    mn, digest, blob.stat().st_size, source or f"file:{src.resolve()}", facts, registry,
                    modelfile=modelfile,
                )
            self._remember_verified(blob, digest)
            return entry
        finally:
            tmp.unlink(missing_ok=True)

    def receive_blob(self, chunks: Iterator[bytes], sha256: str, length: int) -> Path:
        """Take an upload (``POST /api/blobs``): stream ``chunks`` to ``tmp/`` while hashing, then check
        the digest and the GGUF structure, and only then rename it into ``blobs/``.

        Nothing is held in memory and nothing half-written stays: a short body, a
        wrong digest, a damaged GGUF or a full disk remove the partial file and
        raise (IntegrityError for the digest, MalformedInputError for the GGUF,
        OSError for the disk; ``BlobTooLargeError`` before any byte when ``length``
        is more than the free space).
        """
        sha256 = _check_hex(sha256)
        self._ensure_dirs()
        free = free_bytes(self.tmp)
        if length > free:
            raise BlobTooLargeError(f"the blob is {length} bytes and the store has {free} bytes free",
                                    hint="free disk space under DX_HOME, then upload again")
        self.sweep_stale()
        fd, tmp_name = tempfile.mkstemp(prefix="upload-", suffix=".partial", dir=self.tmp)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if got != length:
                raise IntegrityError(f"the upload ended after {got} of {length} bytes", hint="upload it again")
            digest = h.hexdigest()
            if digest != sha256:
                raise IntegrityError(f'digest mismatch, expected "sha256:{sha256}", got "sha256:{digest}"')
            read_facts(tmp)  # the strict GGUF reader, as an import: a damaged file never enters the store
            os.chmod(tmp, 0o644)
            with self._lock():
                blob = self._adopt_blob(tmp, digest)
            self._remember_verified(blob, digest)
            return blob
        finally:
            tmp.unlink(missing_ok=True)

    def name_modelfile(
        self, name: str, base: ModelEntry, source: str, record: dict[str, Any],
    ) -> ModelEntry:
        """Name a created model: ``base``'s bytes (no copy) with its Modelfile ``record`` (``dx.models.create``).

        ``base`` is a store entry (its blob) or one read in place (``base.length`` set:
        a slice of another file, verified again at every use).
        """
        mn = parse_name(name)
        self._ensure_dirs()
        in_file = None
        if base.in_place:
            in_file = {"path": str(Path(base.path).resolve()), "offset": base.offset, "length": base.length}
        elif not (self.blobs / f"sha256-{base.sha256}").is_file():
            raise ModelNotFoundError(f"no blob sha256:{base.sha256} in the store")
        with self._lock():
            return self._write_manifest(mn, base.sha256, base.length or base.size, source, base.facts,
                                        in_file=in_file, modelfile=record)

    def name_blob(self, name: str, sha256: str, source: str, registry: dict[str, Any] | None = None,
                  modelfile: dict[str, Any] | None = None) -> ModelEntry:
        """Give a blob already in the store (verified when it entered) a name from another source (a pull
        whose adapter or messages layers make a ``modelfile`` record too: ``dx.models.pull``)."""
        mn = parse_name(name)
        sha256 = _check_hex(sha256)
        blob = self.blobs / f"sha256-{sha256}"
        if not blob.is_file():
            raise ModelNotFoundError(f"no blob sha256:{sha256} in the store")
        facts = read_facts(blob)
        with self._lock():
            return self._write_manifest(mn, sha256, blob.stat().st_size, source, facts, registry,
                                        modelfile=modelfile)

    def delete(self, name: str) -> ModelEntry:
        """Remove ``name``'s manifest, and its blob when no other name uses it."""
        mn = parse_name(name)
        path = self._manifest_path(mn)
        if not path.is_file():
            entry = self.get(name)  # raises ModelNotFoundError, or finds an Ollama model
            raise ReadOnlyModelError(
                f"{entry.name} belongs to Ollama's own store; dx does not delete it",
                hint=f"use `ollama rm {entry.name}`",
            )
        with self._lock():
            entry = self._load_manifest(path)
            path.unlink()
            others = self._own_entries()
            if not entry.in_place and not any(
                (e.sha256 == entry.sha256 and not e.in_place) or entry.digest in _blobs_named_by(e) for e in others
            ):
                (self.blobs / f"sha256-{entry.sha256}").unlink(missing_ok=True)
        return entry

    def copy(self, src: str, dst: str) -> ModelEntry:
        """Give a model a second name; the blob is shared (Ollama's models are copied in).

        A model kept in place (``name_in_place``) stays in place: the copy refers to the same bytes.
        """
        entry = self.get(src)
        dst_name = parse_name(dst)
        if entry.modelfile is not None:  # a created model: the copy keeps its Modelfile record
            return self.name_modelfile(str(dst_name), entry, entry.source, entry.modelfile)
        if entry.in_place:
            return self.name_in_place(str(dst_name), entry.path, entry.offset, entry.length or entry.size,
                                      entry.sha256, source=entry.source)
        if entry.read_only:
            return self.import_file(entry.path, str(dst_name), sha256=entry.sha256, source=f"copy:{entry.name}")
        with self._lock():
            return self._write_manifest(dst_name, entry.sha256, entry.size, entry.source, entry.facts,
                                        entry.registry)

    def name_in_place(
        self, name: str, path: Path, offset: int, length: int, sha256: str, *, source: str,
    ) -> ModelEntry:
        """Name ``length`` bytes at ``offset`` of ``path`` without copying them (an ``in_file`` manifest).

        What ``/api/copy`` makes of the model inside a minted executable (or a GGUF a
        server was started with): a new name for the same bytes, read where they are.
        The bytes are verified now (structure, and the SHA-256 they were recorded
        with) and again before every use (``dx.models.catalog``), so if the file
        moves or changes the name resolves to an error, never to other bytes.
        """
        mn = parse_name(name)
        sha256 = _check_hex(sha256)
        path = Path(path).resolve()
        verify_model(path, offset=offset, length=length, expected_sha256=sha256, cache_dir=self.root / "cache")
        facts = read_facts(path, offset, length)
        self._ensure_dirs()
        with self._lock():
            return self._write_manifest(mn, sha256, length, source, facts,
                                        in_file={"path": str(path), "offset": offset, "length": length})

    # ---- internals -----------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (self.blobs, self.manifests, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer at a time (dx pull next to a running server)."""
        self._ensure_dirs()
        with open(self.models / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _manifest_path(self, mn: ModelName) -> Path:
        return self.manifests / (quote(str(mn), safe="") + ".json")

    def _adopt_blob(self, tmp: Path, digest: str) -> Path:
        """Rename the verified bytes into place. Always replace: an engine that has the old
        blob mapped keeps its inode, and a damaged blob of the same name heals."""
        blob = self.blobs / f"sha256-{digest}"
        os.replace(tmp, blob)
        return blob

    def sweep_stale(self, max_age: float = STALE_AFTER) -> int:
        """Remove leftovers of imports and downloads killed mid-way (SIGKILL, power loss)."""
        cutoff = time.time() - max_age
        removed = 0
        candidates = list(self.tmp.glob("*.partial")) if self.tmp.is_dir() else []
        if self.downloads.is_dir():
            candidates += list(self.downloads.rglob("*.incomplete"))
        for p in candidates:
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed

    def _write_manifest(
        self, mn: ModelName, digest: str, size: int, source: str, facts: ModelFacts,
        registry: dict[str, Any] | None = None, in_file: dict[str, Any] | None = None,
        modelfile: dict[str, Any] | None = None,
    ) -> ModelEntry:
        doc = {
            "schemaVersion": MANIFEST_SCHEMA,
            "name": mn.name,
            "tag": mn.tag,
            "digest": f"sha256:{digest}",
            "size": size,
            "source": source,
            "created": time.time(),
            "facts": facts.to_json(),
        }
        if registry:
            doc["registry"] = registry
        if in_file:
            doc["in_file"] = in_file  # the bytes stay where they are: path, offset, length (no blob)
        if modelfile:
            doc["modelfile"] = modelfile  # dx create / /api/create: system, messages, params... (dx.models.create)
        path = self._manifest_path(mn)
        fd, tmp_name = tempfile.mkstemp(prefix="manifest-", suffix=".partial", dir=self.tmp)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return self._load_manifest(path)

    def _load_manifest(self, path: Path) -> ModelEntry:
        try:
            doc = json.loads(path.read_text())
            digest = str(doc["digest"])
            if not digest.startswith("sha256:"):
                raise ValueError("digest is not sha256")
            sha = _check_hex(digest[7:])
            facts_doc = doc.get("facts") or {}
            facts = ModelFacts(**{k: v for k, v in facts_doc.items() if k in ModelFacts.__dataclass_fields__})
            in_file = doc.get("in_file")
            blob, offset, length = self.blobs / f"sha256-{sha}", 0, None
            if in_file is not None:
                blob, offset, length = Path(str(in_file["path"])), int(in_file["offset"]), int(in_file["length"])
                if not blob.is_absolute() or offset < 0 or length <= 0:
                    raise ValueError("in_file is not an absolute path, offset and length")
            return ModelEntry(
                name=f"{doc['name']}:{doc['tag']}",
                sha256=sha,
                size=int(doc["size"]),
                modified=float(doc.get("created", path.stat().st_mtime)),
                path=blob,
                source=str(doc.get("source", "")),
                facts=facts,
                registry=doc["registry"] if isinstance(doc.get("registry"), dict) else None,
                offset=offset,
                length=length,
                modelfile=doc["modelfile"] if isinstance(doc.get("modelfile"), dict) else None,
            )
        except (OSError, ValueError, KeyError, TypeError, ConfigurationError) as e:
            # No path in the line: it can reach an API client (`dx list` shows where the store is).
            raise MalformedInputError(
                f"broken manifest for {unquote(path.stem)!r}: {e}",
                hint="delete the manifest file and pull the model again (`dx list` shows the store)",
            ) from None

    def _own_entries(self) -> list[ModelEntry]:
        if not self.manifests.is_dir():
            return []
        out = []
        for p in self.manifests.glob("*.json"):
            with contextlib.suppress(MalformedInputError):
                out.append(self._load_manifest(p))
        return out

    def _ollama_entries(self) -> list[ModelEntry]:
        if self.ollama_dir is None:
            return []
        return discover(self.ollama_dir)

    def _remember_verified(self, blob: Path, digest: str) -> None:
        """The import just hashed the bytes: tell the verified cache so the first start is quick."""
        with contextlib.suppress(Exception):
            from dxverify import verified_cache

            verified_cache.remember(self.root / "cache", blob, digest)


class BlobTooLargeError(ConfigurationError):
    """An upload bigger than the store's free disk space: refused before a byte is written (507)."""

    http_status = 507
    error_type = "server_error"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of ``path`` for an unprivileged writer."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _blobs_named_by(entry: ModelEntry) -> set[str]:
    """The adapter and draft blobs a created model's record names (they stay while it does)."""
    rec = entry.modelfile or {}
    named = [d for d in rec.get("adapters") or [] if isinstance(d, str)]
    if isinstance(rec.get("draft"), str):
        named.append(rec["draft"])
    return set(named)


def _check_hex(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("sha256:"):
        v = v[7:]
    if len(v) != 64 or not set(v) <= _HEX:
        raise ConfigurationError(f"{value!r} is not a SHA-256 (64 hex digits)")
    return v


def _copy_hashing(src: Path, out_fd: int) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, os.fdopen(out_fd, "wb") as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()
