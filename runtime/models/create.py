"""Create a model from a Modelfile or an ``/api/create`` request: a new name for existing bytes, with a record.

The new model is a manifest in DX's store (``ModelStore.name_modelfile``) that
names its base model's blob (or reads it in place: a model inside a minted
executable, one of Ollama's blobs) — the weights are never copied — and carries
a ``modelfile`` record, the one thing other code reads of a created model:

    {"from": "smollm2:135m",          what FROM said
     "base": "sha256:<hex>",          the base model's bytes
     "system": str | None, "template": str | None, "license": [str], "requires": str | None,
     "messages": [{"role", "content"}], "params": {name: value},   (Modelfile parameters, typed)
     "adapters": ["sha256:<hex>"],    LoRA GGUF blobs of the store (llama-server --lora)
     "draft": "sha256:<hex>" | None,  a draft GGUF blob of the store, checked with dxverify.spec_pair
     "text": str}                     the Modelfile, rendered (``dx show --modelfile``)

A created model inherits its base's record (or Ollama params/system layers) and
overrides it: parameters merge, SYSTEM/TEMPLATE/MESSAGE/DRAFT replace,
LICENSE and ADAPTER add. ``dx.models.defaults`` turns the record into the
engine's flags and the chats' prefix. Every refusal is a ``ModelfileError`` (400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dx.models.check import read_facts
from dx.models.defaults import ModelDefaults
from dx.models.entry import ModelEntry
from dx.models.modelfile import VERSION, Modelfile, ModelfileError, check_parameters
from dx.models.store import ModelStore
from dx.names import parse_name
from dxverify.errors import DXError

TEMPLATE_NOTE = ("note: DX keeps using the GGUF's own Jinja chat template; the Go TEMPLATE is recorded and shown "
                 "(dx show --modelfile, /api/show), not used")
Say = Callable[[str], None]


@dataclass
class CreateSpec:
    """What to create, whichever way it was asked (a parsed Modelfile or Ollama's create request)."""

    name: str
    from_: str = ""
    system: str | None = None
    template: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)  # sha256:<hex> blobs of the store
    draft: str | None = None                           # sha256:<hex> blob of the store
    requires: str | None = None
    # adapter digest -> where it was asked for ("Modelfile line 4: ADAPTER ./tuned.gguf"); its errors start so
    adapter_labels: dict[str, str] = field(default_factory=dict)


def spec_from_modelfile(name: str, mf: Modelfile, from_: str, adapters: list[str], draft: str | None) -> CreateSpec:
    """``dx create``: the parsed Modelfile, with FROM/ADAPTER/DRAFT already turned into store digests
    (``adapters`` in the order of ``mf.adapters``, whose lines name their errors)."""
    lines = zip(adapters, mf.adapters, mf.adapter_lines, strict=False)  # a Modelfile made in code has no lines
    labels = {d: f"Modelfile line {n}: ADAPTER {a}" for d, a, n in lines}
    return CreateSpec(name=name, from_=from_, system=mf.system, template=mf.template, license=list(mf.license),
                      messages=[dict(m) for m in mf.messages], params=dict(mf.parameters), adapters=adapters,
                      draft=draft, requires=mf.requires, adapter_labels=labels)


def _text(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ModelfileError(f"{key} must be a string")
    return v


def _digests(doc: dict[str, Any], key: str) -> list[str]:
    """``{file name: digest}`` (Ollama's files/adapters/draft_files) -> the digests, checked."""
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, dict):
        raise ModelfileError(f"{key} must be an object of file name -> sha256 digest")
    out = []
    for fname, digest in v.items():
        if not fname or fname.startswith("/") or ".." in fname.split("/") or "\\" in fname:
            raise ModelfileError("file path must be relative")  # Ollama's words
        if not isinstance(digest, str) or not _is_digest(digest):
            raise ModelfileError("invalid digest format")  # Ollama's words
        out.append("sha256:" + digest[7:].lower())
    return out


def _is_digest(d: str) -> bool:
    hexpart = d[7:]
    return d[:7] in ("sha256:", "sha256-") and len(hexpart) == 64 and all(c in "0123456789abcdefABCDEF"
                                                                           for c in hexpart)


def spec_from_api(doc: dict[str, Any]) -> tuple[CreateSpec, list[str]]:
    """Ollama's ``/api/create`` body -> (spec, the ``files`` digests); 400s in Ollama's words where it has them."""
    name = doc.get("model") or doc.get("name")
    if not isinstance(name, str) or not name:
        raise ModelfileError("model is required")
    parse_name(name)  # 400 for what is not a model name
    if doc.get("quantize") not in (None, ""):
        raise ModelfileError("quantize is not supported by DX: create from a GGUF that is already quantized")
    if doc.get("modelfile") is not None:
        raise ModelfileError("the modelfile field was removed from Ollama's API; send from, system, parameters… "
                             "(the ollama clients do this)")
    from_ = _text(doc, "from") or ""
    files = _digests(doc, "files")
    if not from_ and not files:
        raise ModelfileError("neither 'from' or 'files' was specified")  # Ollama's words
    lic = doc.get("license")
    licenses = [lic] if isinstance(lic, str) else lic if lic is not None else []
    if not isinstance(licenses, list) or not all(isinstance(x, str) for x in licenses):
        raise ModelfileError("license must be a string or a list of strings")
    raw_messages = doc.get("messages") or []
    if not isinstance(raw_messages, list):
        raise ModelfileError("messages must be a list of {role, content}")
    messages = []
    for m in raw_messages:
        if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
            raise ModelfileError("messages must be a list of {role, content}")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ModelfileError('message role must be one of "system", "user", or "assistant"')
        messages.append({"role": m["role"], "content": m.get("content") or ""})
    drafts = _digests(doc, "draft_files")
    if len(drafts) > 1:
        raise ModelfileError("draft_files has more than one file; DX speculates with one draft GGUF")
    requires = _text(doc, "requires")
    if requires and not VERSION.fullmatch(requires):
        raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")  # Ollama's words
    spec = CreateSpec(
        name=name, from_=from_, system=_text(doc, "system"), template=_text(doc, "template"), license=licenses,
        messages=messages, params=check_parameters(doc.get("parameters")), adapters=_digests(doc, "adapters"),
        draft=drafts[0] if drafts else None, requires=requires,
    )
    return spec, files


def blob_entry(store: ModelStore, digest: str, what: str) -> ModelEntry:
    """A blob of the store (an upload) as a base model: ModelfileError when it is not there."""
    path = store.blob_path(digest)
    if path is None:
        raise ModelfileError(f'{what}: blob "{digest}" not found; upload it first (POST /api/blobs/{digest})')
    try:
        facts = read_facts(path)
    except DXError:
        raise ModelfileError("supplied file was not in GGUF format") from None  # Ollama's words
    st = path.stat()
    return ModelEntry(name=digest, sha256=digest[7:], size=st.st_size, modified=st.st_mtime, path=path,
                      source=f"blob:{digest}", facts=facts)


def as_base(entry: ModelEntry) -> ModelEntry:
    """A store entry as something a created model can name: Ollama's read-only blob is read in place."""
    if entry.read_only and not entry.in_place:
        return replace(entry, length=entry.size)
    return entry


def create(
    store: ModelStore, spec: CreateSpec, base: ModelEntry, inherited: ModelDefaults, say: Say,
    *, base_record: dict[str, Any] | None = None, base_template: str | None = None,
) -> ModelEntry:
    """Check the adapters and the draft against ``base``, then write the created model's manifest.

    ``inherited`` are the base's own defaults (an Ollama params/system layer, or
    a created base's record, ``base_record``, whose messages, adapters, draft and
    licence carry over; an Ollama base's adapter layers carry over too). ``say`` gets Ollama's status lines.
    """
    rec = base_record or {}
    say(f"using existing layer sha256:{base.sha256}")
    adapters = list(rec.get("adapters") or [])
    if base_record is None and base.read_only:  # an Ollama model's adapter layers carry over, as in Ollama
        from dx.models.adapters import ollama_adapters

        adapters = ollama_adapters(Path(base.path), base.name)
    for digest in spec.adapters:
        _check_adapter(store, digest, base, spec.adapter_labels.get(digest) or f"ADAPTER {digest}")
        say(f"using existing layer {digest}")
        if digest not in adapters:
            adapters.append(digest)
    draft = spec.draft or rec.get("draft")
    if spec.draft:
        _check_draft(store, spec.draft, base)
        say(f"using existing layer {spec.draft}")
    template = spec.template if spec.template is not None else rec.get("template") or base_template
    if spec.template is not None:
        say(TEMPLATE_NOTE)
    params = {**inherited.params, **spec.params}
    record: dict[str, Any] = {
        "from": spec.from_ or f"sha256:{base.sha256}",
        "base": f"sha256:{base.sha256}",
        "system": spec.system if spec.system is not None else inherited.system,
        "template": template,
        "license": [*(rec.get("license") or []), *spec.license],
        "messages": spec.messages or [dict(m) for m in inherited.messages],
        "params": params,
        "adapters": adapters,
        "draft": draft,
        "requires": (spec.requires or rec.get("requires") or "").removeprefix("v") or None,
    }
    record["text"] = render_record(record)
    say("writing manifest")
    return store.name_modelfile(spec.name, base, f"create:{record['from']}", record)


def render_record(record: dict[str, Any], from_: str | None = None) -> str:
    """The Modelfile a record says (FROM ``from_``, default the record's own ``from``)."""
    mf = Modelfile(
        from_=from_ or str(record.get("from") or record.get("base")), template=record.get("template"),
        system=record.get("system"), parameters=dict(record.get("params") or {}),
        adapters=list(record.get("adapters") or []), draft=record.get("draft"),
        license=list(record.get("license") or []), messages=list(record.get("messages") or []),
        requires=record.get("requires"),
    )
    return mf.render()


def _check_adapter(store: ModelStore, digest: str, base: ModelEntry, label: str) -> None:
    """The blob is a LoRA adapter the engine can load for ``base`` (``dxverify.adapter``, llama-adapter.cpp's
    checks, the same the runtime makes at every start); the error starts with ``label``, never a store path."""
    from dxverify.adapter import check_adapter

    path = store.blob_path(digest)
    if path is None:
        raise ModelfileError(f'{label}: blob "{digest}" not found; upload it first (POST /api/blobs/{digest})')
    try:
        check_adapter(path, label=label, model=base.path, model_offset=base.offset, model_length=base.length)
    except DXError as e:
        words = e.message.replace(str(path), digest).replace(str(base.path), "the FROM model")
        hint = e.hint or ""
        if "not an adapter" in words or "not a LoRA adapter" in words:
            hint = "convert the adapter with llama.cpp's convert_lora_to_gguf.py"
        raise ModelfileError(words[:300], hint=hint or None) from None


def _check_draft(store: ModelStore, digest: str, base: ModelEntry) -> None:
    from dxverify.spec_pair import check_pair

    path = store.blob_path(digest)
    if path is None:
        raise ModelfileError(f'DRAFT: blob "{digest}" not found; upload it first (POST /api/blobs/{digest})')
    try:
        check_pair(base.path, path, target_offset=base.offset, target_length=base.length)
    except DXError as e:
        raise ModelfileError(f"DRAFT {digest}: {str(e).replace(str(path), digest)[:300]}") from None


def base_defaults(entry: ModelEntry, store: ModelStore) -> tuple[ModelDefaults, dict[str, Any] | None, str | None]:
    """(the base's defaults, its created record, its recorded Go template) for a store entry."""
    from dx.models.defaults import for_source, from_modelfile, from_registry

    if entry.modelfile:
        return from_modelfile(entry.modelfile, store.blobs), entry.modelfile, entry.modelfile.get("template")
    if entry.registry:
        t = entry.registry.get("template")
        return from_registry(entry.registry), None, t if isinstance(t, str) else None
    if entry.read_only:
        from dx.models.source import ModelSource

        return for_source(ModelSource(path=Path(entry.path), name=entry.name, sha256=entry.sha256)), None, None
    return ModelDefaults(), None, None
