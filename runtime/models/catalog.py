"""The catalog: which model names this server can serve, and where each one's bytes are.

``ModelResolver`` turns the name a client sent into a verified ``ModelSource``:
the served default model first, then the store. It is the one place the server
asks "can I serve this name?"; the engine layer leases what it answers.
"""

from __future__ import annotations

import threading

from dx.errors import ModelNotFound, ModelNotFoundError
from dx.models.source import ModelSource
from dx.models.store import Store
from dx.names import default_aliases, is_hf, looks_like_path, parse_name
from dxverify.errors import ConfigurationError


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
                raise ModelNotFound("model is required (this server has no default model)")
            return self.default
        if name in self.default_names():
            return self.default  # type: ignore[return-value]
        if is_hf(name) or looks_like_path(name):
            raise ModelNotFound(f"model {name!r} not found: the API takes model names; `dx pull` fetches files")
        try:
            parse_name(name)
            entry = self.store.get(name)
        except (ModelNotFoundError, ConfigurationError):
            raise ModelNotFound(f"model {name!r} not found, try pulling it first") from None
        return ModelSource(path=entry.path, name=entry.name, sha256=entry.sha256)
