"""A model's own defaults (Ollama's params and system layers) as the engine's defaults.

Ollama publishes each model with a params layer — sampling options and
``stop`` strings, ``num_ctx`` — that Ollama applies when a request does not say
otherwise. DX hands them to llama-server as its command-line defaults, which
the engine applies to every request (Ollama and OpenAI APIs alike) that does
not set them itself: ``-r STOP`` for each stop string (llama-server uses them
as the default ``stop``; a request's own ``stop`` replaces them, as in Ollama),
``--temp``, ``--top-k`` and the rest, and ``num_ctx`` becomes the context per
slot. Some published blobs need the stop strings: without Ollama's own
llama.cpp patches their end-of-turn token is not marked as such, and the
generation would not end.

A created model (``dx create``, ``/api/create``; ``dx.models.create``) carries its
Modelfile's record in its manifest: its parameters are these defaults too (the
load-time ones, ``num_thread``, ``num_batch``, ``num_gpu``, ``main_gpu``,
``use_mmap``/``use_mlock``, ``numa``, become the engine's flags), its ``SYSTEM``
and ``MESSAGE``s go before every chat and its ``DRAFT`` is the engine's draft model
(``draft_num_predict`` its most drafted tokens). Its ``ADAPTER``s are not read here:
every model's LoRA adapters take one path, ``dx.models.adapters.adapters_for``.

The defaults are found from the ModelSource alone (the server and the CLI make
those in several places): a blob of DX's store is looked up by the manifest of
the same name whose blob it is; a blob of Ollama's store by Ollama's manifest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.models.catalog import Store
from dx.models.ollama_dir import manifest_of_blob, read_layer

if TYPE_CHECKING:
    from dx.models.source import ModelSource

# Ollama option -> llama-server flag (values are numbers).
_FLAGS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "typical_p": "--typical",
    "repeat_penalty": "--repeat-penalty",
    "repeat_last_n": "--repeat-last-n",
    "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty",
    "seed": "--seed",
    "num_predict": "--n-predict",
    "num_keep": "--keep",
    "mirostat": "--mirostat",
    "mirostat_tau": "--mirostat-ent",
    "mirostat_eta": "--mirostat-lr",
}
_INTS = {"top_k", "repeat_last_n", "seed", "num_predict", "num_keep", "mirostat"}
MAX_STOPS = 16
# Load-time options of a created model -> llama-server flags (the value of Ollama's default: no flag).
_LOAD_FLAGS = {"num_thread": ("-t", 0), "num_batch": ("-b", None), "num_gpu": ("-ngl", -1), "main_gpu": ("-mg", None)}
# The pinned engine's speculation flags (dx.engine.speculative.ENGINE_FLAGS, which this layer cannot import).
_DRAFT_ARGS = ("--spec-type", "draft-simple", "--spec-draft-model")
_DRAFT_MAX = "--spec-draft-n-max"


@dataclass(frozen=True)
class ModelDefaults:
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: tuple[dict[str, str], ...] = ()   # a created model's MESSAGEs: before every chat's own
    draft: str | None = None                    # the draft GGUF's path (speculative decoding)

    @property
    def ctx(self) -> int | None:
        """``num_ctx`` of the params layer: the context per slot."""
        v = self.params.get("num_ctx")
        return v if isinstance(v, int) and not isinstance(v, bool) and 256 <= v <= 1 << 20 else None

    @property
    def stop(self) -> list[str]:
        v = self.params.get("stop")
        items: Iterable[object] = [v] if isinstance(v, str) else v if isinstance(v, list) else []
        return [s for s in items if isinstance(s, str) and s][:MAX_STOPS]

    def engine_args(self) -> list[str]:
        """llama-server flags for these defaults; options it has no flag for are left out."""
        args: list[str] = []
        for key, flag in _FLAGS.items():
            v = self.params.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            args += [flag, str(int(v)) if key in _INTS else repr(float(v))]
        for s in self.stop:
            args += ["-r", s]
        for key, (flag, engine_default) in _LOAD_FLAGS.items():
            v = self.params.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v != engine_default:
                args += [flag, str(v)] + (["-ub", str(v)] if key == "num_batch" else [])
        mmap, mlock = self.params.get("use_mmap", True) is not False, self.params.get("use_mlock") is True
        if not mmap or mlock:
            args += ["--load-mode", {(False, False): "none", (False, True): "mlock", (True, True): "mmap+mlock"}[
                (mmap, mlock)]]
        if self.params.get("numa") is True:
            args += ["--numa", "distribute"]
        return args

    def draft_args(self) -> list[str]:
        """The engine flags of the model's own DRAFT (``draft_num_predict`` its most drafted tokens, 0: none).

        Not part of :meth:`engine_args`: whether they are used is ``--spec``'s to decide
        (``dx.engine.speculative.engine_args_for``; by default ``--spec auto`` times them first)."""
        n_max = self.params.get("draft_num_predict")
        if not self.draft or n_max == 0:
            return []
        args = [*_DRAFT_ARGS, self.draft]
        if isinstance(n_max, int) and not isinstance(n_max, bool):
            args += [_DRAFT_MAX, str(n_max)]
        return args

    def prepend_to(self, messages: list[Any]) -> bool:
        """Put the model's SYSTEM (unless the chat has a system message) and its MESSAGEs before a chat's
        own ``messages``, in place, as Ollama does; after the chat's own leading system message, since
        chat templates want the system message first. True when anything was added."""
        prefix: list[dict[str, str]] = []
        has_system = any(isinstance(m, dict) and m.get("role") == "system" for m in messages)
        if self.system and not has_system:
            prefix.append({"role": "system", "content": self.system})
        prefix += [dict(m) for m in self.messages]
        if not prefix:
            return False
        own_system = bool(messages) and isinstance(messages[0], dict) and messages[0].get("role") == "system"
        at = 1 if own_system else 0
        messages[at:at] = prefix
        return True


NONE = ModelDefaults()


def from_registry(doc: dict[str, Any] | None) -> ModelDefaults:
    """From the ``registry`` record of a DX manifest."""
    if not doc:
        return NONE
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    system = doc.get("system") if isinstance(doc.get("system"), str) else None
    return ModelDefaults(dict(params), system)


def from_modelfile(record: dict[str, Any] | None, blobs: Path) -> ModelDefaults:
    """From a created model's ``modelfile`` record (``dx.models.create``); the draft's digest is a blob of
    the store at ``blobs``. Its ``adapters`` are not defaults: ``dx.models.adapters`` reads them."""
    if not record:
        return NONE
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    system = record.get("system") if isinstance(record.get("system"), str) else None
    messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in record.get("messages") or []
                     if isinstance(m, dict) and "role" in m and "content" in m)

    def blob(digest: object) -> str | None:
        return str(blobs / digest.replace("sha256:", "sha256-", 1)) if isinstance(digest, str) else None

    return ModelDefaults(dict(params), system, messages, blob(record.get("draft")))


def created_record(source: ModelSource) -> tuple[dict[str, Any], Path] | None:
    """(the ``modelfile`` record, the store's blobs folder) of the created model of DX's store named
    ``source.name`` for these very bytes, or None (``dx.models.adapters`` reads its adapters from it too)."""
    if not source.name:
        return None
    from dx.config import dx_home
    from dx.models.store import ModelStore

    store = ModelStore(dx_home(), ollama_dir=False)
    try:
        entry = store.own(source.name)
    except Exception:  # not a store name (a file's name), a broken manifest: not a created model
        return None
    if entry is None or entry.modelfile is None or (source.sha256 and entry.sha256 != source.sha256):
        return None
    return entry.modelfile, store.blobs


def _created(source: ModelSource) -> ModelDefaults | None:
    """A created model's defaults, or None (:func:`created_record`)."""
    found = created_record(source)
    return from_modelfile(*found) if found is not None else None


# Inside ``once_per_request``: the defaults found so far, by source. One request asks in several places (its
# handler for the SYSTEM/MESSAGEs, the engine lease for the slot key, the engine start for its flags).
_this_request: ContextVar[dict[tuple[Any, ...], ModelDefaults] | None] = ContextVar("dx_defaults", default=None)


@contextlib.contextmanager
def once_per_request() -> Iterator[None]:
    """Within it (one request's handling, on its thread) :func:`for_source` reads each model's manifests or
    trailer once; a later request reads them again, so a create, delete or pull in between is always seen."""
    token = _this_request.set({})
    try:
        yield
    finally:
        _this_request.reset(token)


def for_source(source: ModelSource) -> ModelDefaults:
    """The defaults of the model ``source`` points at; NONE when it has none (or cannot be told)."""
    seen = _this_request.get()
    if seen is None:
        return _read(source)
    key = (*source.key, source.length, source.name, source.sha256)
    if key not in seen:
        seen[key] = _read(source)
    return seen[key]


def _read(source: ModelSource) -> ModelDefaults:
    """:func:`for_source`, read from the store's manifests or the executable's trailer."""
    with contextlib.suppress(Exception):  # defaults are a nicety: never a reason not to start
        created = _created(source)  # first: a created model may name bytes in place (another file)
        if created is not None:
            return created
        path = Path(source.path)
        if source.offset:
            return _embedded(path)
        if path.parent.name == "blobs" and path.parent.parent.name == "models":
            got = _dx_store(path, source.name)
            if got is not None:
                return got
        if path.parent.name == "blobs":
            return _ollama_store(path, source.name)
    return NONE


def _embedded(path: Path) -> ModelDefaults:
    """A minted executable: the trailer's metadata may carry a Modelfile's record (``dxbuild --modelfile``: the
    created model's shape; its draft is the trailer's own entry, served as such) or ``defaults`` (params, system)."""
    from dxverify.trailer import find_trailer

    em = find_trailer(path)
    record = em.metadata.get("modelfile") if em is not None else None
    if isinstance(record, dict):
        return replace(from_modelfile(record, path.parent), draft=None)
    doc = em.metadata.get("defaults") if em is not None else None
    return from_registry(doc if isinstance(doc, dict) else None)


def _dx_store(blob: Path, name: str) -> ModelDefaults | None:
    store = Store(blob.parent.parent.parent, ollama_dir=False)
    entry = store.get(name)
    if entry.path != blob:
        return None
    return from_modelfile(entry.modelfile, store.blobs) if entry.modelfile else from_registry(entry.registry)


def _ollama_store(blob: Path, name: str) -> ModelDefaults:
    """An Ollama model served in place: its params and system layers, read-only."""

    from dx.registry.ollama import read_info  # lazy: urllib.request loads on the first pull

    found = manifest_of_blob(blob, name)
    if found is None:
        return NONE
    manifest, models_dir, rname = found
    info = read_info(rname, manifest, lambda ly: read_layer(models_dir, rname, ly))
    return ModelDefaults(dict(info.params), info.system, info.messages)


def describe(defaults: ModelDefaults) -> str:
    """One line for logs and `dx show`."""
    doc: dict[str, Any] = {"params": defaults.params, "system": defaults.system}
    if defaults.messages:
        doc["messages"] = len(defaults.messages)
    if defaults.draft:
        doc["draft"] = True
    return json.dumps(doc, sort_keys=True)[:400]
