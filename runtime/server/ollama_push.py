"""``POST /api/push``: a store model into an OCI registry, in Ollama's request and status-line shapes.

Request ``{"model", "insecure", "stream"}`` (``name`` also read for ``model``, as Ollama does); the
model's own name is where it goes (``[host/]namespace/model:tag``: `/api/copy` names it first), as
Ollama's push. The NDJSON stream is Ollama's: ``retrieving manifest``, ``pushing <digest>`` with
``digest``/``total``/``completed``, ``pushing manifest``, ``success`` (with the manifest's ``digest``).

The stream only begins once the registry has answered, so what fails before it is an HTTP error in
Ollama's shape: a bad body or name 400, a model the store does not have 404, a registry that cannot
be reached or refuses 502. A failure after that is an ``{"error": …}`` line, as Ollama sends it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.config import dx_home
from dx.errors import client_text
from dx.server.ollama import read_json, start_ndjson
from dx.server.ollama_wire import flag, model_name, require_object
from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request

_BEFORE_REGISTRY = ("retrieving manifest", "note:")  # lines held back until the registry has answered


def push(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    stream, insecure = flag(doc, "stream", True), flag(doc, "insecure", False)
    from dx.models.push import destination, push_model  # lazy: http.client loads on the first push

    destination(name, insecure=insecure)  # 400 before anything else for what is not a registry name
    emit: Callable[[dict[str, Any]], None] | None = None
    held: list[dict[str, Any]] = []
    last: dict[str, Any] = {"status": "success"}

    def progress(line: dict[str, Any]) -> None:
        nonlocal emit, last
        last = line
        if not stream:
            return
        if emit is None:
            if line["status"].startswith(_BEFORE_REGISTRY):
                held.append(line)
                return
            emit = start_ndjson(req)
            for h in held:
                emit(h)
        emit(line)

    try:
        push_model(req.app.resolver.store, name, insecure=insecure, progress=progress)
    except DXError as exc:
        if emit is None:
            raise  # nothing sent yet: the transport answers with the error's own status (400/404/502)
        emit({"error": client_text(str(exc), roots=[str(dx_home()), str(Path.home())])})
        req.wfile.write(b"0\r\n\r\n")
        return
    if emit is None:
        req.send_json(200, last)
        return
    req.wfile.write(b"0\r\n\r\n")
