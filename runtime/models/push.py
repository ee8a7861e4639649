"""``dx push NAME [host/]namespace/model:tag`` and ``/api/push``: a store model into an OCI registry.

What is pushed is the store record, whatever made it (an imported GGUF, a pulled
model, a model ``dx create`` made): its GGUF is the ``model`` layer, streamed from
the blob (or from where an in-place record keeps it). A created model's ``modelfile``
record goes up as Ollama's create lays a model out: each ADAPTER blob an ``adapter``
layer, the DRAFT a ``draft`` layer, then ``template``, ``system``, one ``license`` per
LICENSE, ``params`` and ``messages`` as JSON, REQUIRES in the config (an adapter or
draft blob that is gone is refused: the model would answer otherwise without it).
For a pulled model, what the record's ``registry`` part says becomes the small layers in Ollama's media types
(``template``, ``system``, ``license`` for each license, ``params`` as JSON,
``messages`` as JSON), in the order its recorded ``layers`` list gives when there
is one, with the exact bytes of the recorded layer when DX can reproduce them (so
a pulled model pushed back keeps its small layers' digests); a ``projector`` or
``adapter`` layer goes up when its blob is in the store. The config blob is
Docker's image config as Ollama writes it (format, family, type, file type and
the layers' digests), with nothing that changes between runs: pushing the same
model twice gives the same manifest digest.

Where blobs were seen is remembered in ``models/registry-blobs.json`` (registry,
repository, per digest; pulls and pushes both add to it), so a blob already in
another repository of the same registry is mounted there instead of sent again.
The pushed manifest's digest is returned, reported and remembered there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.errors import DownloadError, InvalidModelNameError, ModelConflictError, ModelNotFoundError
from dx.registry import oci_push as oci
from dx.registry import ollama as reg
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.models.entry import ModelEntry
    from dx.models.store import ModelStore as Store

# Ollama's progress objects: {"status", "digest"?, "total"?, "completed"?}
PushProgress = Callable[[dict[str, Any]], None]
SEEN_FILE = "registry-blobs.json"
_SMALL_ORDER = ("template", "system", "license", "params", "messages")


@dataclass(frozen=True)
class PushResult:
    """What was pushed where: the manifest's digest (pinned: ``name@digest``), and what each blob took."""

    name: reg.RegistryName
    digest: str
    layers: tuple[reg.Layer, ...]
    sent: int          # blobs uploaded
    mounted: int       # blobs mounted from another repository of the registry
    present: int       # blobs the repository already had

    @property
    def pinned(self) -> str:
        return f"{self.name.short}@{self.digest}"


def destination(text: str, *, insecure: bool = False) -> reg.RegistryName:
    """``[host/]namespace/model:tag`` as Ollama reads it; a bad one is the sender's mistake (400)."""
    try:
        name = reg.parse_registry_name(text)
    except ConfigurationError as e:
        raise InvalidModelNameError(e.message, hint=e.hint) from None
    return name.plain_http(insecure)


def push_model(store: Store, model: str, dest: str | None = None, *, insecure: bool = False,
               progress: PushProgress | None = None, chunk: int = oci.CHUNK) -> PushResult:
    """Push the store's ``model`` to ``dest`` (default: the model's own name, as Ollama pushes).

    Raises ModelNotFoundError (404) for a model the store does not have,
    InvalidModelNameError (400) for a destination that is not a registry name,
    DownloadError (502) when the registry cannot be reached or refuses.
    """
    say = progress or (lambda line: None)
    target = destination(dest or model, insecure=insecure)
    entry = store.get(model)  # ModelNotFoundError: 404
    if not entry.path.is_file():
        raise ModelNotFoundError(f"model {entry.name!r} is listed but its bytes are no longer there",
                                 hint=f"delete {entry.name} and import or pull it again")
    try:
        return _push(store, entry, target, say, chunk)
    except (IntegrityError, MalformedInputError) as e:  # the registry's bytes or answers, not DX's: 502
        raise DownloadError(e.message, hint=e.hint) from None


def _push(store: Store, entry: ModelEntry, target: reg.RegistryName, say: PushProgress,
          chunk: int) -> PushResult:
    say({"status": "retrieving manifest"})
    blobs, notes = _layers(store, entry)
    for note in notes:
        say({"status": f"note: {note}"})
    config = _config(entry, blobs)
    seen = SeenBlobs(store.models / SEEN_FILE)
    base = reg.base_url(target)
    counts = {"sent": 0, "mounted": 0, "present": 0}
    for blob in [*blobs, config]:
        how = _push_blob(target, blob, seen.where(base, blob.layer.digest, not_in=target.repository), say, chunk)
        counts[how] += 1
        seen.add(base, target.repository, [blob.layer.digest])
    say({"status": "pushing manifest"})
    raw = oci.manifest_bytes(config, blobs)
    digest = oci.put_manifest(target, raw)
    seen.pushed(base, str(target), digest)
    say({"status": "success", "digest": digest})
    return PushResult(target, digest, tuple(b.layer for b in blobs), **counts)


def _push_blob(name: reg.RegistryName, blob: oci.Blob, mount_from: str | None, say: PushProgress,
               chunk: int) -> str:
    layer = blob.layer
    status = f"pushing {layer.sha256[:12]}"

    def line(done: int) -> None:
        say({"status": status, "digest": layer.digest, "total": layer.size, "completed": done})

    if oci.blob_exists(name, layer):
        line(layer.size)
        return "present"
    line(0)
    location = oci.start_upload(name, layer, mount_from)
    if location is None:
        line(layer.size)
        return "mounted"
    oci.upload(name, blob, location, chunk=chunk, progress=oci.throttled(line))
    line(layer.size)
    return "sent"


# ---- what a store record becomes ------------------------------------------------------------


def _layers(store: Store, entry: ModelEntry) -> tuple[list[oci.Blob], list[str]]:
    """The layers of ``entry`` in push order, and a note for each recorded layer that cannot go up."""
    model = oci.Blob(reg.Layer(oci.media("model"), entry.sha256, entry.size), path=entry.path, offset=entry.offset)
    if entry.modelfile is not None and not entry.registry:
        return _created_layers(store, entry, model), []
    doc = entry.registry or {}
    recorded: list[reg.Layer] = []
    for d in doc.get("layers") or []:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            recorded.append(reg._layer(d))
    small = _small_layers(doc, recorded)
    notes: list[str] = []
    out: list[oci.Blob] = []
    if not recorded:
        return [model, *[b for kind in _SMALL_ORDER for b in small.pop(kind, [])]], notes
    for layer in recorded:
        if layer.kind == "model":
            if model not in out:
                out.append(model)
        elif layer.kind in _SMALL_ORDER:
            if small.get(layer.kind):
                out.append(small[layer.kind].pop(0))
        else:
            blob = store.blobs / f"sha256-{layer.sha256}"
            if blob.is_file():
                out.append(oci.Blob(layer, path=blob))
            else:
                notes.append(f"the {layer.kind} layer sha256:{layer.sha256[:12]} is not in the store "
                             "(DX pulls the model layer alone); pushed without it")
    if model not in out:
        out.insert(0, model)
    out += [b for kind in _SMALL_ORDER for b in small.pop(kind, [])]  # what the record says beyond its layers
    return out, notes


def _created_layers(store: Store, entry: ModelEntry, model: oci.Blob) -> list[oci.Blob]:
    """A created model's record as Ollama's create lays it out: the model, its adapters (and draft), then
    template, system, each licence, params and messages. A named adapter or draft blob that is gone is
    refused (the model would answer differently without it), never left out."""
    rec = entry.modelfile or {}
    out = [model]
    named = [("adapter", d) for d in rec.get("adapters") or []]
    if rec.get("draft"):
        named.append(("draft", rec["draft"]))
    for kind, digest in named:
        path = _blob_of(store, str(digest))
        if path is None:
            raise ModelConflictError(f"model {entry.name!r}: its {kind} blob {digest} is gone from the store",
                                     hint=f"create {entry.name} again with the {kind}, then push it")
        out.append(oci.Blob(reg.Layer(oci.media(kind), path.name[7:], path.stat().st_size), path=path))
    doc = {"template": rec.get("template"), "system": rec.get("system"), "licenses": rec.get("license") or [],
           "params": rec.get("params") or {}, "messages": rec.get("messages") or []}
    small = _small_layers(doc, [])
    return out + [b for kind in _SMALL_ORDER for b in small.pop(kind, [])]


def _blob_of(store: Store, digest: str) -> Path | None:
    """The blob ``sha256:<hex>`` in DX's store, else in Ollama's (a created model may name either)."""
    hexd = digest.lower().removeprefix("sha256:")
    if len(hexd) != 64 or not set(hexd) <= set("0123456789abcdef"):
        return None
    folders = [store.blobs] + ([store.ollama_dir / "blobs"] if store.ollama_dir else [])
    return next((p for p in (f / f"sha256-{hexd}" for f in folders) if p.is_file()), None)


def _small_layers(doc: dict[str, Any], recorded: list[reg.Layer]) -> dict[str, list[oci.Blob]]:
    """The record's template, system, licenses, params and messages as layer bytes; for each, the encoding
    whose digest a recorded layer has (Ollama's Go JSON, Python's) so a pulled model keeps its digests."""
    known = {ly.sha256 for ly in recorded}
    out: dict[str, list[oci.Blob]] = {}

    def add(kind: str, candidates: list[bytes]) -> None:
        blobs = [oci.Blob.of_bytes(oci.media(kind), c) for c in candidates]
        out.setdefault(kind, []).append(next((b for b in blobs if b.layer.sha256 in known), blobs[0]))

    for kind in ("template", "system"):
        if isinstance(doc.get(kind), str) and doc[kind]:
            add(kind, [doc[kind].encode()])
    licenses = doc.get("licenses", doc.get("license"))
    for text in [licenses] if isinstance(licenses, str) else licenses or []:
        if isinstance(text, str) and text:
            add("license", [text.encode()])
    for kind in ("params", "messages"):
        value = doc.get(kind)
        if kind == "messages" and isinstance(value, list):  # api.Message's field order (the store sorts keys)
            value = [{"role": m.get("role"), "content": m.get("content"), **m} if isinstance(m, dict) else m
                     for m in value]
        if value:
            add(kind, _json_encodings(value))
    return out


def _json_encodings(value: Any) -> list[bytes]:
    """JSON as DX writes it first (compact, sorted), then as Go's encoder does (HTML escapes, newline),
    then Python's default: whichever a recorded layer's digest matches is the one pushed."""
    compact = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    go = compact.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # Go keeps a struct's field order (Ollama's messages: role, then content) where it sorts a map's keys
    in_order = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    go_struct = in_order.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return [compact.encode(), (go + "\n").encode(), go.encode(), (go_struct + "\n").encode(),
            json.dumps(value).encode(), json.dumps(value, sort_keys=True).encode()]


def _config(entry: ModelEntry, blobs: list[oci.Blob]) -> oci.Blob:
    """Docker's image config as Ollama writes it, from the GGUF's facts; nothing time- or host-dependent."""
    family = entry.facts.family or ""
    doc = {"model_format": "gguf", "model_family": family, "model_families": [family] if family else None,
           "model_type": entry.facts.parameter_size or "", "file_type": entry.facts.quant or "",
           "rootfs": {"type": "layers", "diff_ids": [b.layer.digest for b in blobs]}}
    requires = (entry.modelfile or {}).get("requires")
    if isinstance(requires, str) and requires:
        doc["requires"] = requires  # REQUIRES, where Ollama's create keeps it
    return oci.Blob.of_bytes(oci.CONFIG_TYPE, json.dumps(doc, separators=(",", ":")).encode())


# ---- where blobs are --------------------------------------------------------------------------


class SeenBlobs:
    """``models/registry-blobs.json``: per registry, which repositories hold which blobs, and what was pushed.

    A hint, not a truth: a mount that the registry refuses becomes an upload. Written whole to a
    temporary file and renamed, so a crash leaves the old record or the new one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="registry-blobs-", suffix=".partial", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def where(self, registry: str, digest: str, *, not_in: str) -> str | None:
        """A repository of ``registry`` known to hold ``digest``, other than ``not_in``."""
        repos = self._load().get("blobs", {}).get(registry, {}).get(digest, [])
        return next((r for r in repos if r != not_in), None)

    def add(self, registry: str, repository: str, digests: list[str]) -> None:
        doc = self._load()
        by_digest = doc.setdefault("blobs", {}).setdefault(registry, {})
        for d in digests:
            repos = by_digest.setdefault(d, [])
            if repository not in repos:
                repos.append(repository)
        self._save(doc)

    def pushed(self, registry: str, name: str, digest: str) -> None:
        doc = self._load()
        doc.setdefault("pushed", {}).setdefault(registry, {})[name] = digest
        self._save(doc)


def remember_pull(store: Store, name: reg.RegistryName, manifest: reg.Manifest) -> None:
    """A pull saw these blobs in this repository: a later push to the same registry can mount them."""
    digests = [ly.digest for ly in manifest.layers] + ([manifest.config.digest] if manifest.config else [])
    with contextlib.suppress(OSError):
        SeenBlobs(store.models / SEEN_FILE).add(reg.base_url(name), name.repository, digests)
