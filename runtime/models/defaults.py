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

The defaults are found from the ModelSource alone (the server and the CLI make
those in several places): a blob of DX's store is looked up by the manifest of
the same name whose blob it is; a blob of Ollama's store by Ollama's manifest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ModelDefaults:
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

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
        return args


NONE = ModelDefaults()


def from_registry(doc: dict[str, Any] | None) -> ModelDefaults:
    """From the ``registry`` record of a DX manifest."""
    if not doc:
        return NONE
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    system = doc.get("system") if isinstance(doc.get("system"), str) else None
    return ModelDefaults(dict(params), system)


def for_source(source: ModelSource) -> ModelDefaults:
    """The defaults of the model ``source`` points at; NONE when it has none (or cannot be told)."""
    with contextlib.suppress(Exception):  # defaults are a nicety: never a reason not to start
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
    """A minted executable: the trailer's metadata may carry ``defaults`` (params, system)."""
    from dxverify.trailer import find_trailer

    em = find_trailer(path)
    doc = em.metadata.get("defaults") if em is not None else None
    return from_registry(doc if isinstance(doc, dict) else None)


def _dx_store(blob: Path, name: str) -> ModelDefaults | None:
    store = Store(blob.parent.parent.parent, ollama_dir=False)
    entry = store.get(name)
    return from_registry(entry.registry) if entry.path == blob else None


def _ollama_store(blob: Path, name: str) -> ModelDefaults:
    """An Ollama model served in place: its params and system layers, read-only."""

    from dx.registry.ollama import read_info  # lazy: urllib.request loads on the first pull

    found = manifest_of_blob(blob, name)
    if found is None:
        return NONE
    manifest, models_dir, rname = found
    info = read_info(rname, manifest, lambda ly: read_layer(models_dir, rname, ly))
    return ModelDefaults(dict(info.params), info.system)


def describe(defaults: ModelDefaults) -> str:
    """One line for logs and `dx show`."""
    return json.dumps({"params": defaults.params, "system": defaults.system}, sort_keys=True)[:400]
