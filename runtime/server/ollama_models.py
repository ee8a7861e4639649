"""Ollama's model management on DX: /api/version, /api/tags, /api/ps, /api/show, /api/pull, /api/copy, /api/delete.

What DX can serve (the model it was started with, its store, Ollama's own store read-only) and what is
loaded, in Ollama's shapes. The inference routes are ``dx.server.ollama``; the route table is
``dx.server.routes``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from dx import __version__
from dx.errors import BadRequest, ModelNotFoundError
from dx.models.capabilities import capabilities_for
from dx.models.defaults import for_source
from dx.models.details import details_for, details_or_empty
from dx.models.source import ModelSource
from dx.server.ollama import read_json, start_ndjson
from dx.server.ollama_wire import (
    fim_template,
    iso,
    model_name,
    require_object,
    show_modelfile,
    show_parameters,
)
from dx.server.wire import HTTPError
from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.models.details import ModelDetails
    from dx.server.request import Handler as Request


def version(req: Request) -> None:
    req.send_json(200, {"version": __version__})


def tags(req: Request) -> None:
    models = []
    default = req.app.resolver.default
    if default is not None:
        d = details_or_empty(default.path, default.offset, default.length)
        models.append(_tag_entry(default.display_name, default.size(), default.sha256 or "", _mtime(default), d,
                                 capabilities_for(default).names()))
    with contextlib.suppress(DXError, OSError):
        for e in req.app.resolver.store.list():
            if default is not None and e.name == default.display_name:
                continue
            caps = capabilities_for(ModelSource(path=e.path, name=e.name, sha256=e.sha256)).names()
            models.append(_tag_entry(e.name, e.size, e.sha256, e.modified, details_or_empty(e.path), caps))
    for m in models:
        m["modified_at"] = iso(m["modified_at"])
    req.send_json(200, {"models": models})


def _tag_entry(
    name: str, size: int, sha: str, modified: float, details: ModelDetails, capabilities: list[str],
) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": modified, "size": size, "digest": sha,
            "details": details.ollama(), "capabilities": capabilities}


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
            "capabilities": capabilities_for(lm.source).names(),
        })
        if lm.engine is not None and lm.purpose == "generate":
            from dx.swarm.head import engine_placement

            placement = engine_placement(lm.engine.log_path)  # dx serve --workers: which worker holds which layers
            if placement:
                models[-1]["dx_workers"] = placement
    req.send_json(200, {"models": models})


def show(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    verbose = doc.get("verbose", False)
    if not isinstance(verbose, bool):
        raise BadRequest("verbose must be true or false")
    source = req.app.resolver(name)
    info, template, license_text = _model_info(source, verbose)
    caps = capabilities_for(source)
    if caps.fim is not None:  # a Go template with Ollama's FIM section: what Continue reads to offer completion
        template = fim_template(caps.fim.prefix, caps.fim.suffix, caps.fim.middle)
    defaults = for_source(source)
    shown = name or source.display_name
    answer: dict[str, Any] = {
        "license": license_text,
        "modelfile": show_modelfile(shown, template, defaults.params, defaults.system),
        "parameters": show_parameters(defaults.params),
        "template": template,
        "details": details_for(source.path, source.offset, source.length).ollama(),
        "model_info": info,
        "capabilities": caps.names(),
        "modified_at": _iso_mtime(source),
    }
    if defaults.system:
        answer["system"] = defaults.system
    req.send_json(200, answer)


# Tokenizer tables: Ollama shows them as null unless ``verbose``.
_BIG_ARRAY = 64


def _model_info(source: ModelSource, verbose: bool) -> tuple[dict[str, Any], str, str]:
    """(Ollama's ``model_info``, the GGUF's chat template, its licence) from the GGUF header."""
    from dxverify.gguf import ArrayValue, read_gguf

    with read_gguf(source.path, offset=source.offset, length=source.length) as gguf:
        info: dict[str, Any] = {}
        for key, kv in gguf.kv.items():
            if key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template."):
                continue
            if isinstance(kv.value, ArrayValue) and kv.value.count > _BIG_ARRAY and not verbose:
                info[key] = None
                continue
            value = gguf.get(key)
            if isinstance(value, (bytes, bytearray)):
                continue
            info[key] = value
        info.setdefault("general.parameter_count", gguf.summary().parameters)
        template = gguf.get("tokenizer.chat_template") or ""
        license_text = gguf.get("general.license") or ""
    return dict(sorted(info.items())), str(template), str(license_text)


def pull(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)

    stream = doc.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    store = req.app.resolver.store
    if not stream:
        from dx.models.pull import pull_by_name  # lazy: urllib.request loads on the first pull

        pull_by_name(store, name)
        req.send_json(200, {"status": "success"})
        return
    emit = start_ndjson(req)
    out = req.wfile

    def progress(status: str, completed: int | None, total: int | None) -> None:
        if status == "success":
            return
        line: dict[str, Any] = {"status": status}
        if total:
            line.update(total=total, completed=completed or 0)
        emit(line)

    try:
        from dx.models.pull import pull_by_name  # lazy: urllib.request loads on the first pull

        pull_by_name(store, name, progress)  # hf:, Ollama's registry, or already here (success)
        emit({"status": "success"})
    except DXError as exc:
        emit({"error": str(exc)})
    out.write(b"0\r\n\r\n")


def delete(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    source = None
    with contextlib.suppress(ModelNotFoundError):
        source = req.app.resolver(name)
    if source is not None and name in req.app.resolver.default_names():
        raise HTTPError(409, f"{name!r} is the model this server was started with; stop the server to delete "
                             "it (`dx rm`)", kind="conflict_error")
    req.app.resolver.store.delete(name)  # 404 / 403 (Ollama's own models) from the store
    if source is not None and not source.path.exists():  # the blob went with its last name
        req.app.manager.unload_source(source)
    req.send_json(200, {})


def copy(req: Request) -> None:
    doc = require_object(read_json(req))
    src, dst = doc.get("source"), doc.get("destination")
    if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
        raise BadRequest("source and destination must be model names")
    req.app.resolver.store.copy(src, dst)
    req.send_json(200, {})


def _mtime(source: ModelSource) -> float:
    try:
        return source.path.stat().st_mtime
    except OSError:
        return 0.0


def _iso_mtime(source: ModelSource) -> str:
    return iso(_mtime(source))
