"""The LoRA adapters a model is served with (llama-server ``--lora FILE``, one per adapter): THE one path.

Every way a model gets adapters ends here, found from the ModelSource alone (as its
defaults and projector are, ``dx.models.defaults`` / ``capabilities.projector_for``),
and ``dx.engine.process.lora_args`` turns :func:`adapters_for` into the flags:

- the model inside a minted executable: its "adapter" trailer entry (``dxbuild --adapter``),
  extracted once to a verified cache file (``dx.models.embedded.embedded_part``: the
  engine's adapter loader opens whole files by name). It belongs to those bytes, so a
  model created from the executable's own model keeps it, before its own adapters.
- a created model (``dx create`` / ``/api/create``, ``dx.models.create``): its manifest's
  ``modelfile`` record lists ``"adapters": ["sha256:<hex>", ...]`` (a Modelfile's
  ``ADAPTER``s, a created base's carried over), blobs of DX's store (Ollama's blobs are
  looked in next). Order is kept: the engine applies them in that order, each at scale 1.
- a model of Ollama's store (read-only): its manifest's ``application/vnd.ollama.image.adapter``
  layers, whose blobs Ollama keeps beside the model's.
- a model pulled from a registry with ``adapter`` layers (``dx.models.pull``: what ``dx push`` of a
  created model or Ollama's push sends): its adapter blobs enter the store checked, and its manifest
  gets a ``modelfile`` record naming them, read as a created model's.
- anything else (a GGUF served by path, a pulled model without adapter layers): none.

``ModelDefaults.engine_args()`` carries no ``--lora``: the engine manager's slot key
adds :func:`adapter_key` (the digests, cheap) once, and an engine of any purpose gets
the flags, as in Ollama, where one runner serves chats and embeddings alike.

Unlike a projector (which only adds vision), an adapter changes every answer, so an adapter
that is named but missing, damaged or made for another model is never silently left out:
:func:`adapters_for` raises one line (the model, the adapter's digest, never a store path:
the words reach API clients) and the engine does not start. Every start checks each
adapter's header against the model (``dxverify.adapter.check_adapter``: milliseconds) and
its SHA-256 against its digest once (remembered in ``dxverify.verified_cache``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from dx import config
from dxverify.errors import DXError, IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.models.source import ModelSource

ADAPTER_LAYER = "application/vnd.ollama.image.adapter"
MAX_ADAPTERS = 8
_HEX = frozenset("0123456789abcdef")
_HINT = "create the model again (dx create / POST /api/create) with an adapter made for its base model"


def adapters_for(source: ModelSource) -> list[Path]:
    """The verified LoRA adapter files the engine applies to ``source``'s model (``--lora``), in order.

    [] for a model without adapters. Raises a DXError (one line: the model, the adapter's
    digest, what is wrong) when an adapter is named but missing, damaged or made for
    another model: the engine must not serve the model without it.
    """
    out: list[Path] = []
    if source.offset:
        from dx.models.embedded import part_for_embedded

        found = part_for_embedded(source, "adapter")  # hashed while extracted; raises on a damaged entry
        if found is not None:
            _check_fits(source, found, "the embedded adapter")
            out.append(found)
    named = _named(source)
    if named is None:
        return out
    digests, places = named
    for d in digests:
        blob = next((p for p in (folder / f"sha256-{d}" for folder in places) if p.is_file()), None)
        if blob is None:
            raise MalformedInputError(
                f"model {source.display_name!r}: its adapter blob sha256:{d} is gone from the store", hint=_HINT)
        _check_blob(blob, d, source)
        out.append(blob)
    return out


def ollama_adapters(blob: Path, name: str) -> list[str]:
    """``sha256:<hex>`` of the adapter layers of the Ollama store model ``name`` (its model blob ``blob``).

    What a model created from it carries over into its record (as Ollama's create does); a
    created base's record carries its own, and an executable's entry stays with its bytes.
    """
    return [f"sha256:{d}" for d in _ollama_store_digests(blob, name)]


def adapter_key(source: ModelSource) -> tuple[str, ...]:
    """What tells apart two names for one blob with different adapters (the engine manager's slot key).

    The digests the model names, unverified and cheap (one manifest or trailer read); ()
    without adapters. A record that cannot be read gives a key of its own, and the start
    then reports it (:func:`adapters_for`).
    """
    try:
        digests: list[str] = []
        if source.offset:
            from dxverify.trailer import find_trailer

            em = find_trailer(Path(source.path))
            if em is not None and em.offset == source.offset and em.adapter is not None:
                digests.append(em.adapter.sha256)
        named = _named(source)
        if named is not None:
            digests += named[0]
    except Exception:  # the start says what is wrong with it
        return ("--lora", "unreadable")
    return ("--lora", *digests) if digests else ()


def adapter_digests(source: ModelSource) -> list[str]:
    """``sha256:<hex>`` of every adapter ``source``'s model is served with, in order, unverified (what
    ``dx show --modelfile`` / ``/api/show`` print as ADAPTER lines, whichever way the model got them:
    an executable's entry, a created or pulled model's record, an Ollama model's adapter layers)."""
    return [f"sha256:{d}" for d in adapter_key(source)[1:] if _hex(d)]


def _hex(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip().lower().removeprefix("sha256:")
    return v if len(v) == 64 and set(v) <= _HEX else None


def _named(source: ModelSource) -> tuple[list[str], list[Path]] | None:
    """(the adapter digests the model's manifest names, the blob folders to find them in), or None."""
    from dx.models.defaults import created_record
    from dx.models.ollama_dir import default_ollama_dir

    found = created_record(source)
    if found is not None:
        record, blobs = found
        return _record_digests(record.get("adapters"), source), [blobs, default_ollama_dir() / "blobs"]
    path = Path(source.path)
    if source.offset or path.parent.name != "blobs":
        return None
    if path.parent.parent.name == "models" and _is_dx_store_blob(path):
        return None  # a DX store model that was not created: its manifest decides alone (no Ollama lookup)
    digests = _ollama_store_digests(path, source.name)
    return (digests, [path.parent]) if digests else None


def _record_digests(listed: object, source: ModelSource) -> list[str]:
    if listed is None:
        return []
    if not isinstance(listed, list) or len(listed) > MAX_ADAPTERS:
        raise MalformedInputError(f"model {source.display_name!r}: its manifest's adapters record is not a list of"
                                  f" at most {MAX_ADAPTERS} digests", hint=_HINT)
    out = []
    for item in listed:
        hexd = _hex(item)
        if hexd is None:
            raise MalformedInputError(f"model {source.display_name!r}: its manifest names adapter {item!r},"
                                      " not a sha256 digest", hint=_HINT)
        out.append(hexd)
    return out


def _is_dx_store_blob(blob: Path) -> bool:
    """Is ``blob`` in DX's own store (``$DX_HOME/models/blobs``), not Ollama's?"""
    with contextlib.suppress(OSError):
        return blob.parent.resolve() == (config.dx_home() / "models" / "blobs").resolve()
    return False


def _ollama_store_digests(blob: Path, name: str) -> list[str]:
    from dx.models.ollama_dir import manifest_of_blob

    found = None
    with contextlib.suppress(Exception):  # not a blob of Ollama's store (or not this name's): no adapters
        found = manifest_of_blob(blob, name)
    if found is None:
        return []
    return [ly.sha256 for ly in found[0].of_kind("adapter")]


def _check_blob(blob: Path, hexd: str, source: ModelSource) -> None:
    """The adapter's header fits the model (every start) and its bytes hash to ``hexd`` (once, remembered)."""
    from dxverify import verified_cache
    from dxverify.hashing import sha256_file

    label = f"adapter blob sha256:{hexd}"
    cache = config.dx_home() / "cache"
    known = verified_cache.lookup(cache, blob) == hexd
    if not known:
        got = sha256_file(blob)
        if got != hexd:
            raise IntegrityError(f"model {source.display_name!r}: its {label} is damaged (SHA-256 {got})",
                                 hint="the store's blob changed; " + _HINT)
    _check_fits(source, blob, label)
    if not known:
        verified_cache.remember(cache, blob, hexd)


def _check_fits(source: ModelSource, adapter: Path, label: str) -> None:
    from dxverify.adapter import check_adapter

    try:
        check_adapter(adapter, label=f"model {source.display_name!r}: {label}", model=source.path,
                      model_offset=source.offset, model_length=source.length)
    except DXError as e:  # no file path in the words: they reach API clients
        if str(adapter) not in e.message:
            raise
        raise type(e)(e.message.replace(str(adapter), label), hint=e.hint) from None
