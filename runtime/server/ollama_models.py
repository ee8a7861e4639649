"""Ollama's model management on DX: /api/version, /api/tags, /api/ps, /api/show, /api/pull, /api/copy, /api/delete.

What DX can serve (the model it was started with, its store, Ollama's own store read-only) and what is
loaded, in Ollama's shapes. The inference routes are ``dx.server.ollama``; the route table is
``dx.server.routes``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx import __version__
from dx.config import dx_home
from dx.errors import BadRequest, ModelConflictError, ModelNotFoundError, client_text
from dx.models.check import read_facts
from dx.models.details import details_for, details_or_empty
from dx.models.source import ModelSource
from dx.names import parse_name
from dx.server.ollama import read_json, start_ndjson
from dx.server.ollama_wire import iso, model_name, require_object
from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.models.details import ModelDetails
    from dx.server.request import Handler as Request


# The Ollama release whose API DX serves, for clients that gate features on /api/version (VS Code Copilot
# wants >= 0.6.4, Open WebUI compares versions). v0.14.0 (January 2026) is the first with Anthropic's
# /v1/messages, and its api/types.go has every request field DX honours or refuses in Ollama's words: tools
# with nested properties, tool-call ids and indexes (0.12.6-0.13.5), think as a level (0.11.1), logprobs/
# top_logprobs (0.12.11), truncate/shift (0.12.6). Later releases add what DX does not serve (image generation
# fields in 0.14.3, think "max" in 0.22.0). Raise it only together with the fields a newer release adds.
OLLAMA_API_VERSION = "0.14.0"


def version(req: Request) -> None:
    """Ollama's ``{"version"}`` is the API DX speaks; DX's own version rides beside it (field and header)."""
    req.send_json(200, {"version": OLLAMA_API_VERSION, "dx_version": __version__}, {"X-DX-Version": __version__})


def tags(req: Request) -> None:
    models = []
    default = req.app.resolver.default
    if default is not None:
        d = details_or_empty(default.path, default.offset, default.length)
        models.append(_tag_entry(default.display_name, default.size(), default.sha256 or "", _mtime(default), d))
    with contextlib.suppress(DXError, OSError):
        for e in req.app.resolver.store.list():
            if default is not None and e.name == default.display_name:
                continue
            models.append(_tag_entry(e.name, e.size, e.sha256, e.modified, details_or_empty(e.path)))
    for m in models:
        m["modified_at"] = iso(m["modified_at"])
    req.send_json(200, {"models": models})


def _tag_entry(name: str, size: int, sha: str, modified: float, details: ModelDetails) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": modified, "size": size, "digest": sha,
            "details": details.ollama()}


def ps(req: Request) -> None:
    models: list[dict[str, Any]] = []
    for lm in sorted(req.app.manager.loaded(), key=lambda m: m.purpose != "generate"):
        if any(m["name"] == lm.name for m in models):
            continue  # its generation and embedding engines are one model to Ollama clients
        size = lm.source.size()
        details = details_or_empty(lm.source.path, lm.source.offset, lm.source.length)
        models.append({
            "name": lm.name, "model": lm.name, "size": size, "digest": lm.source.sha256 or "",
            "details": details.ollama(),
            "expires_at": iso(lm.expires_at) if lm.expires_at is not None else "2318-01-01T00:00:00Z",
            "size_vram": 0, "context_length": lm.ctx,
        })
        if lm.engine is not None and lm.purpose == "generate":
            from dx.swarm.head import engine_placement

            placement = engine_placement(lm.engine.log_path)  # dx serve --workers: which worker holds which layers
            if placement:
                models[-1]["dx_workers"] = placement
    req.send_json(200, {"models": models})


def show(req: Request) -> None:
    doc = read_json(req)
    name = model_name(doc)
    source = req.app.resolver(name)
    facts = read_facts(source.path, source.offset, source.length)
    meta = {k: v for k, v in facts.metadata.items() if not isinstance(v, (bytes, bytearray))}
    template = meta.get("tokenizer.chat_template", "")
    capabilities = ["completion", "embedding"]
    if isinstance(template, str) and "tools" in template:
        capabilities.append("tools")
    req.send_json(200, {
        "license": str(meta.get("general.license", "")),
        "modelfile": f"# dx: {source.display_name}\nFROM {source.path}\n",
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": details_for(source.path, source.offset, source.length).ollama(),
        "model_info": {k: v for k, v in meta.items() if k != "tokenizer.chat_template"},
        "capabilities": capabilities,
        "modified_at": _iso_mtime(source),
    })


def pull(req: Request) -> None:
    """``/api/pull``: a model DX already has is a success without the network; a failed pull is 400/404/502.

    The NDJSON stream starts with the first progress line, so a failure before it
    (a bad name, a registry that cannot be reached or lacks the model) is an HTTP
    error in Ollama's shape; once the stream has begun, a failure is an
    ``{"error": …}`` line, as Ollama sends it.
    """
    doc = require_object(read_json(req))
    name = model_name(doc)
    stream = doc.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    if not name.startswith("hf:"):
        parse_name(name)  # 400 for what is not a model name
    emit: Callable[[dict[str, Any]], None] | None = None

    def progress(status: str, completed: int | None, total: int | None) -> None:
        nonlocal emit
        if status == "success" or not stream:
            return
        if emit is None:
            emit = start_ndjson(req)
        line: dict[str, Any] = {"status": status}
        if total:
            line.update(total=total, completed=completed or 0)
        emit(line)

    from dx.models.pull import pull_by_name, say_present  # lazy: urllib.request loads on the first pull

    try:
        resolver = req.app.resolver
        if name in resolver.default_names():  # the model this server runs: here by definition
            source = resolver.default
            say_present(source.sha256 or "", source.size(), progress)
        else:
            pull_by_name(resolver.store, name, progress)  # hf:, Ollama's registry, or already here
    except DXError as exc:
        if emit is None:
            raise  # nothing sent yet: the transport answers with the error's own status
        emit({"error": client_text(str(exc), roots=_roots())})
        req.wfile.write(b"0\r\n\r\n")
        return
    if emit is None:
        req.send_json(200, {"status": "success"})
        return
    emit({"status": "success"})
    req.wfile.write(b"0\r\n\r\n")


def delete(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    source = None
    with contextlib.suppress(DXError):
        source = req.app.resolver(name)
    if name in req.app.resolver.default_names():
        raise ModelConflictError(f"{name!r} is the model this server was started with; stop the server to "
                                 "delete it (`dx rm`)")
    try:
        req.app.resolver.store.delete(name)  # 403 for Ollama's own models, from the store
    except ModelNotFoundError:
        raise ModelNotFoundError(f"model '{name}' not found") from None  # Ollama's words
    if source is not None and not source.path.exists():  # the blob went with its last name
        req.app.manager.unload_source(source)
    req.send_json(200, {})


def copy(req: Request) -> None:
    """``/api/copy``: a new name for the same bytes, the model a minted executable carries included."""
    doc = require_object(read_json(req))
    src, dst = doc.get("source"), doc.get("destination")
    if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
        raise BadRequest("source and destination must be model names")
    req.app.resolver.copy(src, dst)
    req.send_json(200, {})


def _roots() -> list[str]:
    """Folders whose paths never reach a client (DX_HOME, HOME)."""
    return [str(dx_home()), str(Path.home())]


def _mtime(source: ModelSource) -> float:
    try:
        return source.path.stat().st_mtime
    except OSError:
        return 0.0


def _iso_mtime(source: ModelSource) -> str:
    return iso(_mtime(source))
