"""The catalog: which model names this server can serve, and where each one's bytes are.

``ModelResolver`` turns the name a client sent into a verified ``ModelSource``:
the served default model first, then the store. It is the one place the server
asks "can I serve this name?"; the engine layer leases what it answers.

``Store`` is DX's on-disk store (``dx.models.store.ModelStore``) plus the two
things that may fetch: ``resolve`` (a name, a GGUF path or an ``hf:`` spec to a
verified ModelSource, pulling what is missing as ``ollama run`` does) and ``pull``.
The store itself never downloads; ``dx.models.pull`` does, called from here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from dx.errors import ModelConflictError, ModelNotFoundError
from dx.models.check import verify_model
from dx.models.entry import ModelEntry
from dx.models.source import ModelSource, verify_source
from dx.models.store import ModelStore, ProgressCallback
from dx.names import default_aliases, is_hf, looks_like_path, parse_hf, parse_name
from dxverify.errors import ConfigurationError, DXError, IntegrityError
from dxverify.hashing import expected_sha256_for


def _pull() -> ModuleType:
    """``dx.models.pull``, imported when something is first fetched: the registry clients it brings
    (urllib.request, http.cookies) stay out of ``dx serve``'s start, as they always were."""
    import dx.models.pull

    return dx.models.pull


def source_of(entry: ModelEntry) -> ModelSource:
    """Where a store entry's bytes are: its blob, or (in place) a slice of another file."""
    return ModelSource(path=entry.path, offset=entry.offset, length=entry.length, name=entry.name,
                       sha256=entry.sha256)


_CHECKED: set[tuple[object, ...]] = set()  # (path, size, mtime, inode, offset, length, sha256) already verified


def check_in_place(source: ModelSource, cache_dir: Path) -> None:
    """A model named in place (a copy of the one inside a minted executable) is still those bytes.

    Checked at every resolve, not only when an engine starts: ``/api/show`` reads
    the header too, and must not describe other bytes. The SHA-256 is hashed once
    and remembered by (path, size, mtime, inode, offset, length), so the same file
    costs a stat; a moved file is a 404 and a changed one an IntegrityError, both
    naming the model, not the file.
    """
    path = Path(source.path)
    try:
        st = path.stat()
    except OSError:
        st = None
    seen = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, source.offset, source.length,
            source.sha256) if st is not None else None
    if seen is not None and seen in _CHECKED:
        return  # this very file version was checked: a stat, not a header parse, per request
    if st is None or not path.is_file():
        raise ModelNotFoundError(
            f"model {source.name!r} names bytes inside another file that is no longer there "
            "(the executable it was copied from moved or was deleted)",
            hint=f"delete {source.name} and copy the model again",
        )
    try:
        verify_model(path, offset=source.offset, length=source.length, expected_sha256=source.sha256,
                     cache_dir=cache_dir)
    except DXError:
        raise IntegrityError(
            f"model {source.name!r} no longer matches the SHA-256 it was copied with: the file it is read from "
            "changed (the executable was replaced or altered)",
            hint=f"delete {source.name} and copy the model again",
        ) from None
    if len(_CHECKED) > 256:
        _CHECKED.clear()
    _CHECKED.add(seen)


class ModelResolver:
    """API model name -> ModelSource: the served default model first, then the store.

    Only names are accepted from the network: a path or an ``hf:`` spec in a
    request is refused, so a client cannot make the server open arbitrary files
    or start downloads through a chat request.
    """

    def __init__(self, default: ModelSource | None, store: Store | None = None) -> None:
        self.default = default
        self._store = store
        self._store_lock = threading.Lock()

    @property
    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self._store = Store()
            return self._store

    def default_names(self) -> frozenset[str]:
        """The names the default model answers to; the CLI asks the same rule (``dx.models.embedded.resolve``)."""
        return default_aliases(self.default.display_name) if self.default is not None else frozenset()

    def __call__(self, name: str) -> ModelSource:
        if not name:
            if self.default is None:
                raise ModelNotFoundError("model is required (this server has no default model)")
            return self.default
        if name in self.default_names():
            return self.default  # type: ignore[return-value]
        if is_hf(name) or looks_like_path(name):
            raise ModelNotFoundError(f"model {name!r} not found: the API takes model names; `dx pull` fetches files")
        try:
            parse_name(name)
            entry = self.store.get(name)
        except (ModelNotFoundError, ConfigurationError):
            raise ModelNotFoundError(f"model {name!r} not found, try pulling it first") from None
        source = source_of(entry)
        if entry.in_place:
            check_in_place(source, self.store.root / "cache")
        return source

    def copy(self, src: str, dst: str) -> ModelEntry:
        """``/api/copy``: ``dst`` becomes a new name for ``src``'s bytes, whichever model ``src`` is.

        The served default model is not in the store: a store model gets a second
        manifest for its blob, the model inside a minted executable (or a GGUF the
        server was started with) an ``in_file`` manifest that reads it in place.
        Names are Ollama's (``smollm2`` is ``smollm2:latest``).
        """
        dst_name = str(parse_name(dst))
        if dst in self.default_names() or dst_name in self.default_names():
            raise ModelConflictError(f"{dst!r} is the model this server was started with; copy to another name")
        parse_name(src)
        if self.default is None or src not in self.default_names():
            try:
                entry = self.store.get(src)
            except ModelNotFoundError:
                raise ModelNotFoundError(f"model {src!r} not found") from None  # Ollama's words
            if entry.in_place:  # still the bytes it named, or a clear error naming the model
                check_in_place(source_of(entry), self.store.root / "cache")
            return self.store.copy(entry.name, dst_name)
        source = self.default
        try:  # a store model served by name: its blob, with its registry record and defaults
            entry = self.store.get(source.name)
            if entry.path == Path(source.path) and not entry.in_place:
                return self.store.copy(entry.name, dst_name)
        except (ModelNotFoundError, ConfigurationError):
            pass
        sha = source.sha256 or verify_source(source)
        return self.store.name_in_place(dst_name, Path(source.path), source.offset, source.size(), sha,
                                        source=f"copy:{source.display_name}")


class Store(ModelStore):
    """The store as the CLI and the server use it: resolving and pulling on top of what is on disk."""

    def resolve(
        self,
        spec: str,
        *,
        pull: bool = True,
        verify: bool = True,
        progress: ProgressCallback | None = None,
    ) -> ModelSource:
        """Turn a store name, a GGUF path or ``hf:OWNER/REPO/FILE.gguf`` into a verified ModelSource.

        ``hf:`` files already pulled are served from the store without the
        network; others are pulled first when ``pull`` is true. With ``verify``
        (the default) the structure is checked now and the full SHA-256 once.
        """
        spec = spec.strip()
        if is_hf(spec):
            hf = parse_hf(spec)
            entry = self.find_by_source(str(hf))
            if entry is None:
                if not pull:
                    raise ModelNotFoundError(f"{spec} has not been pulled", hint=f"run `dx pull {spec}`")
                entry = self.pull(spec, progress=progress)
            return self._source_for(entry, verify, ModelSource)
        if looks_like_path(spec) or (os.sep in spec and Path(spec).exists()):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"no GGUF file at {path}", hint="check the path")
            path = path.resolve()
            # A blob named sha256-<hex>, or a SHA256SUMS beside the file, says what the bytes must hash to.
            sha = self.verify_path(path, expected_sha256=expected_sha256_for(path)) if verify else ""
            return ModelSource(path=path, name=path.name, sha256=sha or None)
        try:
            entry = self.get(spec)
        except ModelNotFoundError as missing:
            if not pull:
                raise
            entry = _pull().pull_missing(self, spec, missing, progress)  # Ollama's registry, as `ollama run` does
        return self._source_for(entry, verify, ModelSource)

    def _source_for(self, entry: ModelEntry, verify: bool, source_cls: Any) -> ModelSource:
        if entry.in_place:
            source = source_of(entry)
            check_in_place(source, self.root / "cache")
            return source
        if verify:
            self.verify_path(entry.path, expected_sha256=entry.sha256)
        return source_cls(path=entry.path, name=entry.name, sha256=entry.sha256)

    def pull(
        self,
        spec: str,
        *,
        name: str | None = None,
        sha256: str | None = None,
        progress: ProgressCallback | None = None,
        insecure: bool = False,
    ) -> ModelEntry:
        """Fetch ``hf:OWNER/REPO/FILE.gguf`` (huggingface_hub) or import a local GGUF path.

        A registry name comes from Ollama's registry (``insecure``: plain HTTP to its host)."""
        if is_hf(spec):
            return _pull().pull_hf(self, parse_hf(spec), name=name, sha256=sha256, progress=progress)
        if looks_like_path(spec) or Path(spec).is_file():
            path = Path(spec).expanduser()
            if name is None:
                stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
                name = stem.lower()
            entry = self.import_file(path, name, sha256=sha256)
            if progress:
                progress("success", entry.size, entry.size)
            return entry
        # An existing store name: nothing to fetch, unless it came from (or is) an Ollama registry model.
        try:
            entry = self.get(spec)
        except ModelNotFoundError:
            entry = None
        if entry is None or entry.read_only or entry.source.startswith("registry:"):
            return _pull().pull_registry(self, spec, name=name, progress=progress, insecure=insecure)
        if progress:
            progress("success", entry.size, entry.size)
        return entry
