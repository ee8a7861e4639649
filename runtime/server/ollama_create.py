"""``POST /api/create``: Ollama's create in both its shapes, answered from DX's store without copying weights.

* ``{"model", "from": NAME, "system", "template", "parameters", "messages", "license", "adapters",
  "draft_files", "requires"}`` — a model shaped from one DX already serves (Open WebUI's model editor,
  ``ollama.create(from_=…)``, ``ollama create -f Modelfile`` which sends the parsed Modelfile this way);
* ``{"model", "files": {name: digest}, …}`` — from a GGUF uploaded first by ``POST /api/blobs/<digest>``
  (Open WebUI's upload, ``ollama create`` with ``FROM ./file.gguf``).

Everything is checked before the first status line (the base model, each blob, every parameter, the
adapter's and the draft's GGUF, the draft against the base with ``dxverify.spec_pair``), so a mistake is
an HTTP 400 naming it, never a 500 and never a half-made model; then Ollama's status lines stream as
NDJSON (``using existing layer sha256:…``, ``writing manifest``, ``success``), or with ``"stream": false``
one ``{"status": "success"}``. The work is ``dx.models.create``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from dx.errors import BadRequest, ModelConflictError, ModelNotFoundError
from dx.models.check import read_facts
from dx.models.create import TEMPLATE_NOTE, as_base, base_defaults, blob_entry, spec_from_api
from dx.models.create import create as create_model
from dx.models.defaults import for_source
from dx.models.entry import ModelEntry
from dx.models.modelfile import ModelfileError
from dx.models.source import verify_source
from dx.names import is_hf, looks_like_path, parse_name
from dx.server.ollama import read_json, start_ndjson
from dx.server.ollama_wire import require_object
from dxverify.errors import ConfigurationError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request


def create(req: Request) -> None:
    doc = require_object(read_json(req))
    stream = doc.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    spec, files = spec_from_api(doc)
    resolver = req.app.resolver
    defaults = resolver.default_names()
    if spec.name in defaults or str(parse_name(spec.name)) in defaults:
        raise ModelConflictError(f"{spec.name!r} is the model this server was started with; create another name")
    store = resolver.store
    lines: list[str] = []
    if spec.from_:
        base, inherited, record, template = _base_for(req, spec.from_)
    else:
        if len(files) != 1:
            raise ModelfileError(f"files has {len(files)} entries; DX creates a model from one GGUF file")
        lines.append("parsing GGUF")
        base = blob_entry(store, files[0], "files")
        inherited, record, template = base_defaults(base, store)
    entry = create_model(store, spec, base, inherited, lines.append, base_record=record, base_template=template)
    if TEMPLATE_NOTE in lines:
        print(f"dx: {entry.name}: {TEMPLATE_NOTE.removeprefix('note: ')}", file=sys.stderr, flush=True)
    lines.append("success")
    if not stream:
        req.send_json(200, {"status": "success"})
        return
    emit = start_ndjson(req)
    for line in lines:
        emit({"status": line})
    req.wfile.write(b"0\r\n\r\n")


def _base_for(req: Request, name: str) -> tuple[ModelEntry, Any, dict[str, Any] | None, str | None]:
    """``from``: a model this server serves (its default, the store, Ollama's store) or a blob digest."""
    resolver = req.app.resolver
    store = resolver.store
    own = _own(store, name)
    if own is not None:  # a model of DX's store (also when it is the one this server was started with)
        resolver(name)
        d, rec, t = base_defaults(own, store)
        return as_base(own), d, rec, t
    if name in resolver.default_names():
        source = resolver.default
        # the GGUF this server was started with, or the model inside this executable: named in place
        sha = source.sha256 or verify_source(source)
        base = ModelEntry(name=source.display_name, sha256=sha, size=source.size(), modified=0.0,
                          path=source.path, source="default", offset=source.offset,
                          length=source.length or source.size(),
                          facts=read_facts(source.path, source.offset, source.length))
        return base, for_source(source), None, None
    if name.startswith(("sha256:", "sha256-")):
        base = blob_entry(store, "sha256:" + name[7:].lower(), "from")
        d, rec, t = base_defaults(base, store)
        return base, d, rec, t
    if is_hf(name) or looks_like_path(name):
        raise ModelfileError(f"from {name[:80]!r}: the API takes a model name or a blob digest; upload a GGUF "
                             "with POST /api/blobs/<digest> and send it in files")
    try:
        resolver(name)  # verified as a chat would be (a model in place: its bytes are still those)
        entry = store.get(name)
    except (ModelNotFoundError, ConfigurationError):
        raise ModelfileError(f"model '{name[:80]}' not found; `dx list` (GET /api/tags) shows the models, "
                             "`dx pull` (POST /api/pull) fetches one") from None
    d, rec, t = base_defaults(entry, store)
    return as_base(entry), d, rec, t


def _own(store: Any, name: str) -> ModelEntry | None:
    try:
        return store.own(name)
    except (ConfigurationError, BadRequest):
        return None
