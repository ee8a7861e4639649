"""From an API model name to a leased engine: what the Ollama and OpenAI handlers share.

``ModelResolver`` turns the name a client sent into a verified ``ModelSource``;
``engine_for`` leases that model's engine for one request; ``open_engine``
leases and sends, retrying once when the engine died between requests. The
errors here are answered by the transport in each API's own shape.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from dx.engine.manager import ModelSource
from dx.server.ollama_wire import BadRequest
from dxverify.errors import ConfigurationError, DXError

if TYPE_CHECKING:
    import http.client

    from dx.engine.manager import Engine


class ModelNotFound(LookupError):
    """No model by that name (404 in either API)."""


class EngineError(Exception):
    """The engine could not answer (503 while it restarts, 500 when a model cannot load)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelResolver:
    """API model name -> ModelSource: the served default model first, then the store.

    Only names are accepted from the network: a path or an ``hf:`` spec in a
    request is refused, so a client cannot make the server open arbitrary files
    or start downloads through a chat request.
    """

    def __init__(self, default: ModelSource | None, store: Any = None) -> None:
        self.default = default
        self._store = store
        self._store_lock = threading.Lock()

    @property
    def store(self) -> Any:
        with self._store_lock:
            if self._store is None:
                from dx.models.store import Store

                self._store = Store()
            return self._store

    def default_names(self) -> frozenset[str]:
        """The names the default model answers to; the CLI asks the same rule (``dx.models.embedded.resolve``)."""
        from dx.names import default_aliases

        return default_aliases(self.default.display_name) if self.default is not None else frozenset()

    def __call__(self, name: str) -> ModelSource:
        if not name:
            if self.default is None:
                raise ModelNotFound("model is required (this server has no default model)")
            return self.default
        if name in self.default_names():
            return self.default  # type: ignore[return-value]
        from dx.models.store import ModelNotFoundError
        from dx.names import is_hf, looks_like_path, parse_name

        if is_hf(name) or looks_like_path(name):
            raise ModelNotFound(f"model {name!r} not found: the API takes model names; `dx pull` fetches files")
        try:
            parse_name(name)
            entry = self.store.get(name)
        except (ModelNotFoundError, ConfigurationError):
            raise ModelNotFound(f"model {name!r} not found, try pulling it first") from None
        return ModelSource(path=entry.path, name=entry.name, sha256=entry.sha256)


@contextlib.contextmanager
def engine_for(  # type: ignore[no-untyped-def]
    app: Any, model: str, keep_alive: object = None, num_ctx: int | None = None, purpose: str = "generate"
):
    """Lease the engine for ``model``; yields (engine, seconds spent loading it)."""
    from dx.engine.manager import parse_keep_alive

    if keep_alive is not None:
        try:
            parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    t0 = time.monotonic()
    try:
        lease = app.manager.lease(model, keep_alive, num_ctx=num_ctx, purpose=purpose)
        engine = lease.__enter__()
    except ModelNotFound:
        raise
    except DXError as exc:
        if type(exc).__name__ == "ModelNotFoundError":
            raise ModelNotFound(str(exc)) from None
        raise EngineError(500, f"cannot load model: {exc}") from None
    try:
        yield engine, time.monotonic() - t0
    except BaseException:
        if not lease.__exit__(*sys.exc_info()):
            raise
    else:
        lease.__exit__(None, None, None)


def open_engine(
    app: Any, model: str, keep_alive: object, num_ctx: int | None, method: str, path: str, body: bytes | None,
    purpose: str = "generate",
) -> tuple[Any, Engine, float, http.client.HTTPConnection, http.client.HTTPResponse]:
    """Lease + send: (lease, engine, load seconds, connection, response); exit the lease when done.

    A refused connection (the engine died between requests) is retried once on a
    fresh engine; a request the engine already had when it died is answered 503,
    never run twice.
    """
    from dx.engine.relay import EngineUnavailable, EngineUnreachable, engine_request

    for attempt in (1, 2):
        cm = engine_for(app, model, keep_alive, num_ctx, purpose)
        engine, load = cm.__enter__()
        try:
            conn, resp = engine_request(engine, method, path, body)
            return cm, engine, load, conn, resp
        except EngineUnreachable as exc:
            cm.__exit__(None, None, None)
            if attempt == 2 or not _dead_or_dying(engine):
                raise EngineError(503, f"{exc}; retry the request") from None
        except EngineUnavailable as exc:
            cm.__exit__(None, None, None)
            raise EngineError(503, f"{exc}; retry the request") from None
    raise AssertionError("unreachable")


def _dead_or_dying(engine: Engine, grace: float = 2.0) -> bool:
    """Its port refused us: has the engine died, or is it dying? A killed process closes its sockets
    a moment before it can be reaped, so a refusal with the process still there is given ``grace``
    seconds to turn into an exit (then the lease restarts it) instead of a 503 for a request that
    never reached any engine."""
    try:
        engine.process.wait(grace)
    except subprocess.TimeoutExpired:
        return False
    return True
