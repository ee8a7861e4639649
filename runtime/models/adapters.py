"""The LoRA adapters a model is served with (llama-server ``--lora FILE``, one per adapter).

Where a model's adapters come from, found from the ModelSource alone (as its defaults
and projector are, ``dx.models.defaults`` / ``capabilities.projector_for``):

- a model of DX's store: the manifest's ``registry`` record may carry
  ``"adapters": ["sha256:<hex>", ...]`` (:data:`ADAPTERS_KEY`), digests of adapter GGUFs
  that are blobs of the same store (``models/blobs/sha256-<hex>``; Ollama's blobs are
  looked in next). ``dx create`` / ``/api/create`` write it for a Modelfile's
  ``ADAPTER`` (:func:`adapter_record` makes the value). Order is kept: the engine
  applies them in that order, each at scale 1.
- a model of Ollama's store (read-only): its manifest's ``application/vnd.ollama.image.adapter``
  layers, whose blobs Ollama keeps beside the model's.
- the model inside a minted executable: its "adapter" trailer entry (``dxbuild --adapter``),
  extracted once to a verified cache file (``dx.models.embedded.embedded_adapter``: the
  engine's adapter loader opens whole files by name).
- a GGUF served by path: none.

Unlike a projector (which only adds vision), an adapter changes every answer, so an adapter
that is named but missing, damaged or made for another model is never silently left out:
:func:`adapters_for` raises one line and the engine does not start. Every start checks each
adapter's header against the model (``dxverify.adapter.check_adapter``: milliseconds) and
its SHA-256 against its digest once (remembered in ``dxverify.verified_cache``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx import config
from dxverify.errors import IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.models.source import ModelSource

ADAPTERS_KEY = "adapters"  # in a DX manifest's ``registry`` record: ["sha256:<hex>", ...]
ADAPTER_LAYER = "application/vnd.ollama.image.adapter"
MAX_ADAPTERS = 8
_HEX = frozenset("0123456789abcdef")
_HINT = "pull or create the model again, with an adapter made for its base model"


def adapter_record(digests: Iterable[str]) -> list[str]:
    """The value of ``registry["adapters"]`` for these adapter digests (``sha256:<hex>`` or bare hex).

    Raises MalformedInputError naming the first one that is not a SHA-256 digest.
    """
    out = []
    for d in digests:
        hexd = _hex(d)
        if hexd is None:
            raise MalformedInputError(f"adapter digest {d!r} is not sha256:<64 hex digits>")
        out.append(f"sha256:{hexd}")
    if len(out) > MAX_ADAPTERS:
        raise MalformedInputError(f"{len(out)} adapters: at most {MAX_ADAPTERS} are supported")
    return out


def adapters_for(source: ModelSource) -> list[Path]:
    """The verified LoRA adapter files the engine applies to ``source``'s model (``--lora``), in order.

    [] for a model without adapters. Raises a DXError (one line: the model, the adapter's
    digest, what is wrong) when an adapter is named but missing, damaged or made for
    another model: the engine must not serve the model without it.
    """
    path = Path(source.path)
    if source.offset:
        from dx.models.embedded import adapter_for_embedded

        found = adapter_for_embedded(source)  # hashed while extracted; raises on a damaged entry
        if found is None:
            return []
        _check_fits(source, found, "the embedded adapter")
        return [found]
    if path.parent.name != "blobs":
        return []
    digests = _store_digests(path, source.name)
    from_ollama = digests is None
    if digests is None:
        digests = _ollama_store_digests(path, source.name)
    out = []
    for d in digests:
        blob = _find_blob(path, d, ollama_only=from_ollama)
        if blob is None:
            raise MalformedInputError(
                f"model {source.display_name!r}: its adapter sha256:{d} is not in the store",
                hint=_HINT)
        _check_blob(blob, d, source)
        out.append(blob)
    return out


def adapter_key(source: ModelSource) -> tuple[str, ...]:
    """What tells apart two names for one blob with different adapters (the engine manager's slot key).

    The digests the model names, unverified and cheap (one manifest or trailer read); ()
    without adapters. A record that cannot be read gives a key of its own, and the start
    then reports it (:func:`adapters_for`).
    """
    try:
        path = Path(source.path)
        if source.offset:
            from dxverify.trailer import find_trailer

            em = find_trailer(path)
            entry = em.adapter if em is not None and em.offset == source.offset else None
            digests = [entry.sha256] if entry is not None else []
        elif path.parent.name != "blobs":
            return ()
        else:
            digests = _store_digests(path, source.name)
            if digests is None:
                digests = _ollama_store_digests(path, source.name)
    except Exception:  # the start says what is wrong with it
        return ("--lora", "unreadable")
    return ("--lora", *digests) if digests else ()


def _hex(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip().lower().removeprefix("sha256:")
    return v if len(v) == 64 and set(v) <= _HEX else None


def _store_digests(blob: Path, name: str) -> list[str] | None:
    """The ``adapters`` of the DX manifest named ``name`` whose blob is ``blob``; None when no such manifest
    (then it may be a model of Ollama's store)."""
    from dx.errors import ModelNotFoundError
    from dx.models.catalog import Store

    if blob.parent.parent.name != "models" or not name:
        return None
    try:
        entry = Store(blob.parent.parent.parent, ollama_dir=False).get(name)
    except (ModelNotFoundError, MalformedInputError):
        return None
    if entry.path != blob or entry.read_only:
        return None
    if not entry.registry:
        return []
    listed = entry.registry.get(ADAPTERS_KEY)
    if listed is None:
        return []
    if not isinstance(listed, list) or len(listed) > MAX_ADAPTERS:
        raise MalformedInputError(f"model {name!r}: its manifest's adapters record is not a list of at most"
                                  f" {MAX_ADAPTERS} digests", hint=_HINT)
    out = []
    for item in listed:
        hexd = _hex(item.get("digest") if isinstance(item, dict) else item)
        if hexd is None:
            raise MalformedInputError(f"model {name!r}: its manifest names adapter {item!r}, not a sha256 digest",
                                      hint=_HINT)
        out.append(hexd)
    return out


def _ollama_store_digests(blob: Path, name: str) -> list[str]:
    from dx.models.ollama_dir import manifest_of_blob

    found = None
    with contextlib.suppress(Exception):  # not a blob of Ollama's store (or not this name's): no adapters
        found = manifest_of_blob(blob, name)
    if found is None:
        return []
    return [ly.sha256 for ly in found[0].of_kind("adapter")]


def _find_blob(model_blob: Path, hexd: str, *, ollama_only: bool) -> Path | None:
    from dx.models.ollama_dir import default_ollama_dir

    places = [model_blob.parent] if ollama_only else [model_blob.parent, default_ollama_dir() / "blobs"]
    for blobs in places:
        p = blobs / f"sha256-{hexd}"
        if p.is_file():
            return p
    return None


def _check_blob(blob: Path, hexd: str, source: ModelSource) -> None:
    """The adapter's header fits the model (every start) and its bytes hash to ``hexd`` (once, remembered)."""
    from dxverify import verified_cache
    from dxverify.hashing import sha256_file

    _check_fits(source, blob, f"adapter sha256:{hexd}")
    cache = config.dx_home() / "cache"
    if verified_cache.lookup(cache, blob) == hexd:
        return
    got = sha256_file(blob)
    if got != hexd:
        raise IntegrityError(f"model {source.display_name!r}: adapter blob sha256:{hexd} has SHA-256 {got}",
                             hint="the store's blob is damaged; " + _HINT)
    verified_cache.remember(cache, blob, hexd)


def _check_fits(source: ModelSource, adapter: Path, label: str) -> None:
    from dxverify.adapter import check_adapter

    check_adapter(adapter, label=f"model {source.display_name!r}: {label}", model=source.path,
                  model_offset=source.offset, model_length=source.length)
