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
from dx.models.adapters import adapter_digests
from dx.models.capabilities import capabilities_for
from dx.models.defaults import for_source
from dx.models.details import details_for, details_or_empty
from dx.models.source import ModelSource
from dx.names import parse_name
from dx.server.ollama import read_json, start_ndjson
from dx.server.ollama_wire import (
    fim_template,
    iso,
    model_name,
    require_object,
    show_modelfile,
    show_parameters,
)
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
        with contextlib.suppress(DXError, OSError):  # its bytes gone: not listed (a request for it says why)
            d = details_or_empty(default.path, default.offset, default.length)
            models.append(_tag_entry(default.display_name, default.size(), default.sha256 or "", _mtime(default),
                                     d, capabilities_for(default).names()))
    entries: list[Any] = []
    with contextlib.suppress(DXError, OSError):
        entries = list(req.app.resolver.store.list())
    for e in entries:
        if default is not None and e.name == default.display_name:
            continue
        with contextlib.suppress(DXError, OSError):  # one broken entry does not hide the others
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
        if lm.speculation is not None and lm.purpose == "generate":
            models[-1]["dx_speculation"] = lm.speculation  # --spec auto's decision and its numbers, or forced
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
    record = _created_record(req, shown, source)
    if record is not None and isinstance(record.get("template"), str):
        template = record["template"]  # the Modelfile's Go TEMPLATE, recorded (DX renders with the GGUF's Jinja)
    if record is not None and record.get("license"):
        license_text = "\n".join(str(x) for x in record["license"])
    answer: dict[str, Any] = {
        "license": license_text,
        "modelfile": _created_modelfile(shown, record) if record is not None else
        show_modelfile(shown, template, defaults.params, defaults.system, adapter_digests(source), defaults.messages),
        "parameters": show_parameters(defaults.params),
        "template": template,
        "details": details_for(source.path, source.offset, source.length).ollama(),
        "model_info": info,
        "capabilities": caps.names(),
        "modified_at": _iso_mtime(source),
    }
    if defaults.system:
        answer["system"] = defaults.system
    if defaults.messages:
        answer["messages"] = [dict(m) for m in defaults.messages]
    req.send_json(200, answer)


def _created_record(req: Request, name: str, source: ModelSource) -> dict[str, Any] | None:
    """The ``modelfile`` record of a model made by ``dx create`` / ``/api/create`` (``dx.models.create``), or
    of the model inside an executable minted with ``dxbuild --modelfile`` (the same shape)."""
    from dx.models.embedded import modelfile_for_embedded

    try:
        entry = req.app.resolver.store.own(name)
    except (DXError, OSError):
        entry = None
    if entry is not None and entry.modelfile is not None and (not source.sha256 or entry.sha256 == source.sha256):
        return entry.modelfile
    if source.offset:  # the model inside a minted executable: a `dxbuild --modelfile` record in its trailer
        with contextlib.suppress(DXError, OSError):
            return modelfile_for_embedded(source)
    return None


def _created_modelfile(name: str, record: dict[str, Any]) -> str:
    """Ollama's ``modelfile`` text for a created model: the Modelfile it was made from (never a server path)."""
    from dx.models.create import render_record

    head = ['# Modelfile generated by "dx show"', "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {name}", ""]
    return "\n".join(head) + "\n" + render_record(record)


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
    insecure = doc.get("insecure") or False  # plain HTTP to the name's registry, as Ollama's
    if not isinstance(insecure, bool):
        raise BadRequest("insecure must be true or false")
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
            pull_by_name(resolver.store, name, progress, insecure=insecure)  # hf:, Ollama's registry, or already here
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
