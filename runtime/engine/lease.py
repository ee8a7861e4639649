"""From an API model name to a leased engine: what the Ollama and OpenAI handlers share.

``engine_for`` leases that model's engine for one request; ``open_engine``
leases and sends, retrying once when the engine died between requests. The
errors here are answered by the transport in each API's own shape.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.config import dx_home
from dx.engine.keep_alive import parse_keep_alive
from dx.engine.relay import engine_request
from dx.errors import (
    BadRequest,
    EngineError,
    EngineUnavailable,
    EngineUnreachable,
    ModelNotFoundError,
    client_text,
)
from dxverify.errors import DXError

if TYPE_CHECKING:
    import http.client
    import socket

    from dx.engine.manager import EngineManager
    from dx.engine.process import Engine


# dx.engine.process's words for an engine that died while loading, here by a signal (a negative status)
_KILLED_LOADING = re.compile(r"^engine exited with status -\d+ while loading ")


@dataclass(frozen=True)
class EngineLoad:
    """A request's load-time options (Ollama's ``num_ctx``, ``num_thread``, ...): how its engine is started.

    ``ctx``: the context per slot, None = whatever is loaded; ``args``: extra llama-server flags,
    None = whatever the loaded engine was started with (a request without them never reloads).
    """

    ctx: int | None = None
    args: tuple[str, ...] | None = None


@contextlib.contextmanager
def engine_for(  # type: ignore[no-untyped-def]
    manager: EngineManager, model: str, keep_alive: object = None, num_ctx: int | EngineLoad | None = None,
    purpose: str = "generate",
):
    """Lease the engine for ``model``; yields (engine, seconds spent loading it).

    ``num_ctx``: a context size, or an ``EngineLoad`` (context + engine flags); a running engine
    started otherwise is restarted for it when idle, as Ollama reloads its runner.
    """

    if keep_alive is not None:
        try:
            parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    load_args = None
    if isinstance(num_ctx, EngineLoad):
        num_ctx, load_args = num_ctx.ctx, num_ctx.args
    t0 = time.monotonic()
    try:
        lease = manager.lease(model, keep_alive, num_ctx=num_ctx, purpose=purpose, load_args=load_args)
        engine = lease.__enter__()
    except ModelNotFoundError as exc:
        hint = _client_text(manager, model, exc.hint) if exc.hint else None
        raise ModelNotFoundError(_client_text(manager, model, exc.message), hint=hint) from None
    except DXError as exc:
        # The full line (the engine's log tail, the log's path) goes to the server's stderr; the
        # client gets the reason with the model's name where the file was, and no server path.
        shown = repr(model) if model else "(the served model)"
        print(f"dx: cannot load model {shown}: {exc}", file=sys.stderr, flush=True)
        if _KILLED_LOADING.search(exc.message):
            # killed from outside while it loaded (an operator, the OOM killer, the soak's SIGKILL): not the
            # model's fault, and the next request starts it again, so a 503 + Retry-After as for a restart
            raise EngineError(503, f"the engine for {shown} was stopped while loading; retry the request") \
                from None
        raise EngineError(500, f"cannot load model {shown}: {_client_text(manager, model, exc.message)}") \
            from None
    try:
        yield engine, time.monotonic() - t0
    except BaseException:
        if not lease.__exit__(*sys.exc_info()):
            raise
    else:
        lease.__exit__(None, None, None)


def _client_text(manager: EngineManager, model: str, text: str) -> str:
    """``text`` without server paths: the model's file becomes its name (``dx.errors.client_text``)."""
    names: dict[str, str] = {}
    with contextlib.suppress(Exception):
        source = manager.resolve(model)
        names = {str(source.path): source.display_name, str(Path(source.path).resolve()): source.display_name}
    return client_text(text, names, roots=(str(dx_home()), str(Path.home())))


def open_engine(
    manager: EngineManager, model: str, keep_alive: object, num_ctx: int | EngineLoad | None, method: str, path: str,
    body: bytes | None,
    purpose: str = "generate", client: socket.socket | None = None,
) -> tuple[Any, Engine, float, http.client.HTTPConnection, http.client.HTTPResponse]:
    """Lease + send: (lease, engine, load seconds, connection, response); exit the lease when done.

    A refused connection (the engine died between requests) is retried once on a
    fresh engine; a request the engine already had when it died is answered 503,
    never run twice. ``client``: the requester's socket; if it hangs up while the
    engine works, the engine stops and ``dx.engine.relay.ClientGone`` is raised.
    """

    for attempt in (1, 2):
        cm = engine_for(manager, model, keep_alive, num_ctx, purpose)
        engine, load = cm.__enter__()
        try:
            conn, resp = engine_request(engine, method, path, body, client=client)
            return cm, engine, load, conn, resp
        except EngineUnreachable as exc:
            cm.__exit__(None, None, None)
            if attempt == 2 or not _dead_or_dying(engine):
                raise EngineError(503, f"{exc}; retry the request") from None
        except EngineUnavailable as exc:
            cm.__exit__(None, None, None)
            raise EngineError(503, f"{exc}; retry the request") from None
        except BaseException:  # the client went away (ClientGone), or anything else: the lease ends here
            cm.__exit__(None, None, None)
            raise
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
