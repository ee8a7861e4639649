"""What a model can do, as Ollama's ``capabilities`` names it, told from the GGUF and what lies beside it.

``/api/show``, ``/api/tags`` and the request checks of ``/api/generate`` and ``/api/chat`` ask the same
question ("may this request use ``think``, ``suffix``, ``images``?"), so the answer is computed once per
(path, offset, length, size, mtime) and kept. The rules follow the engine that will run the request:

- ``completion``: every generative model; not an embedding-only one (Ollama's rule: a ``<arch>.pooling_type``
  key, or an encoder architecture such as ``bert``, whose ``<arch>.attention.causal`` is false).
- ``tools``: every completion model; DX hands tools to the engine's Jinja template, or to llama.cpp's
  generic tool-call format when the template has none.
- ``insert``: the engine's ``/infill`` needs the FIM prefix, suffix and middle tokens, from
  ``tokenizer.ggml.fim_*_token_id`` (or the deprecated ``prefix/suffix/middle_token_id``) or found in the
  vocabulary by text as llama.cpp's vocabulary loader does (``src/llama-vocab.cpp``).
- ``vision``: a multimodal projector the engine can load with ``--mmproj`` (``projector_for``).
- ``thinking``: the chat template reasons (``<think>``…``</think>``, ``enable_thinking``,
  ``reasoning_content``, harmony's channels), as Ollama and llama.cpp detect it.
- ``embedding``: every model (DX starts an embeddings engine with mean pooling for any GGUF).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.models.source import ModelSource

# The order Ollama lists them in.
ORDER = ("completion", "tools", "insert", "vision", "thinking", "embedding")

# Architectures llama.cpp runs as encoders only (no causal generation).
EMBEDDING_ARCHS = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert",
    "t5encoder", "eurobert",
})

# llama-vocab.cpp's auto-detection of FIM tokens by their text (the loader's own lists).
FIM_PRE = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
           "<|code_prefix|>", "<|prefix|>")
FIM_SUF = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
           "<|code_suffix|>", "<|suffix|>")
FIM_MID = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
           "<|code_middle|>", "<|middle|>")
_FIM_KEYS = {
    "pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
}

PROJECTOR_LAYER = "application/vnd.ollama.image.projector"

_CACHE: dict[tuple[Any, ...], ModelCapabilities] = {}
_LOCK = threading.Lock()
_MAX_CACHED = 256


@dataclass(frozen=True)
class FimTokens:
    """The text of the model's FIM tokens (for ``/api/show``'s template)."""

    prefix: str
    suffix: str
    middle: str


@dataclass(frozen=True)
class ModelCapabilities:
    completion: bool = True
    tools: bool = True
    insert: bool = False
    vision: bool = False
    thinking: bool = False
    embedding: bool = True
    fim: FimTokens | None = None
    projector: Path | None = None

    def names(self) -> list[str]:
        """Ollama's ``capabilities`` list."""
        return [name for name in ORDER if getattr(self, name)]


def capabilities_for(source: ModelSource) -> ModelCapabilities:
    """The capabilities of the model ``source`` points at (cached); a model that cannot be read has the
    capabilities every GGUF has (completion, tools, embedding) so a listing still lists it."""
    path = Path(source.path)
    try:
        st = os.stat(path)
        folder = os.stat(path.parent).st_mtime_ns  # a projector put beside the model changes the folder
    except OSError:
        return ModelCapabilities()
    key = (os.fspath(path), source.offset, source.length, st.st_size, st.st_mtime_ns, st.st_ino, source.name,
           folder)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    projector = projector_for(source)
    try:
        found = read_capabilities(path, source.offset, source.length, projector)
    except (DXError, OSError):
        return ModelCapabilities()
    with _LOCK:
        if len(_CACHE) >= _MAX_CACHED:
            _CACHE.clear()
        _CACHE[key] = found
    return found


def read_capabilities(
    path: Path, offset: int = 0, length: int | None = None, projector: Path | None = None,
) -> ModelCapabilities:
    """Read the GGUF header at ``path`` (the strict reader) and tell what it can do."""
    from dxverify.gguf import read_gguf

    with read_gguf(path, offset=offset, length=length) as gguf:
        arch = gguf.get("general.architecture") or ""
        template = gguf.get("tokenizer.chat_template") or ""
        completion = is_generative(arch, gguf.get(f"{arch}.pooling_type"), gguf.get(f"{arch}.attention.causal"))
        fim = fim_tokens(gguf)
    return ModelCapabilities(
        completion=completion,
        tools=completion,
        insert=completion and fim is not None,
        vision=completion and projector is not None,
        thinking=completion and template_thinks(template if isinstance(template, str) else ""),
        embedding=True,
        fim=fim,
        projector=projector,
    )


def is_generative(arch: str, pooling_type: object, causal: object) -> bool:
    """False for embedding-only models: Ollama's rule (a pooling type is set) and the encoder architectures."""
    if arch in EMBEDDING_ARCHS or causal is False:
        return False
    return pooling_type is None


def template_thinks(template: str) -> bool:
    """Does the chat template reason? Ollama's test (``<think>``/``</think>``, the Qwen/DeepSeek
    ``split('</think>')``) plus what llama.cpp's templates switch on (``enable_thinking``,
    ``reasoning_content``, harmony's analysis channel)."""
    if not template:
        return False
    if "<think>" in template and "</think>" in template:
        return True
    if "content.split('</think>')" in template or 'content.split("</think>")' in template:
        return True
    return any(mark in template for mark in ("enable_thinking", "reasoning_content", "<|channel|>analysis"))


def fim_tokens(gguf: Any) -> FimTokens | None:
    """The FIM prefix/suffix/middle tokens, by metadata id or by text in the vocabulary (llama.cpp's way)."""
    tokens_kv = gguf.kv.get("tokenizer.ggml.tokens")
    if tokens_kv is None:
        return None
    found: dict[str, str] = {}
    for role, keys in _FIM_KEYS.items():
        for key in keys:
            tid = gguf.get(key)
            if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < len(tokens_kv.value):
                found[role] = _token_text(tokens_kv.value, tid)
                break
    for role, names in (("pre", FIM_PRE), ("suf", FIM_SUF), ("mid", FIM_MID)):
        if role not in found:
            hit = _find_token(tokens_kv.value, names)
            if hit is not None:
                found[role] = hit
    if len(found) < 3:
        return None
    return FimTokens(found["pre"], found["suf"], found["mid"])


def _vocab_bytes(array: Any) -> bytes:
    return bytes(array._buf[array.start:array.end])


def _find_token(array: Any, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a whole entry of the vocabulary (length prefix + bytes)."""
    raw = _vocab_bytes(array)
    for name in names:
        enc = name.encode()
        if struct.pack("<Q", len(enc)) + enc in raw:
            return name
    return None


def _token_text(array: Any, tid: int) -> str:
    for i, text in enumerate(_iter(array)):
        if i == tid:
            return text
    return ""


def _iter(array: Any) -> Any:
    from dxverify.gguf import _iter_strings

    return _iter_strings(array._buf, array.start, array.count)


# ------------------------------------------------------------------ projectors
def projector_for(source: ModelSource) -> Path | None:
    """The multimodal projector the engine gets with ``--mmproj``, when there is one.

    - a GGUF served by path: an ``mmproj*.gguf`` beside it (the one that shares the model's stem first);
    - a model of Ollama's store: its manifest's projector layer, when the blob is there;
    - a model of DX's store pulled from Ollama's registry: the projector layer its record names, found in
      DX's blobs or Ollama's;
    - the model inside a minted executable: its "projector" trailer entry (``dxbuild --mmproj``), extracted
      once to a verified cache file (``dx.models.embedded.embedded_part``: the engine's projector loader
      reads whole files only).
    """
    path = Path(source.path)
    if source.offset:
        from dx.models.embedded import part_for_embedded

        with contextlib.suppress(Exception):  # a damaged entry refuses the start (verify_embedded_source)
            return part_for_embedded(source, "projector")
        return None
    if path.parent.name == "blobs":
        if path.parent.parent.name == "models":
            with contextlib.suppress(Exception):  # not a blob of DX's store: perhaps one of Ollama's
                got = _dx_store_projector(path, source.name)
                if got is not None:
                    return got
        with contextlib.suppress(Exception):  # a projector is found or not; never a reason not to serve
            return _ollama_store_projector(path, source.name)
        return None
    with contextlib.suppress(OSError):
        return _beside(path)
    return None


def _beside(path: Path) -> Path | None:
    if not path.name.lower().endswith(".gguf") or path.name.lower().startswith("mmproj"):
        return None
    found = sorted(p for p in path.parent.glob("*.gguf") if p.name.lower().startswith("mmproj") and p.is_file())
    if not found:
        return None
    stem = path.name[:-5].lower()
    for p in found:
        if stem.split("-")[0] and stem.split("-")[0] in p.name.lower():
            return p
    return found[0]


def _dx_store_projector(blob: Path, name: str) -> Path | None:
    from dx.models.catalog import Store
    from dx.models.ollama_dir import default_ollama_dir

    store = Store(blob.parent.parent.parent, ollama_dir=False)
    entry = store.get(name)
    if entry.path != blob or not entry.registry:
        return None
    for layer in entry.registry.get("layers") or []:
        if isinstance(layer, dict) and layer.get("mediaType") == PROJECTOR_LAYER:
            hexd = str(layer.get("digest", "")).partition(":")[2]
            for blobs in (blob.parent, default_ollama_dir() / "blobs"):
                p = blobs / f"sha256-{hexd}"
                if len(hexd) == 64 and p.is_file():
                    return p
    return None


def _ollama_store_projector(blob: Path, name: str) -> Path | None:
    from dx.models.ollama_dir import manifest_of_blob

    found = manifest_of_blob(blob, name)
    if found is None:
        return None
    manifest, models_dir, _name = found
    layers = manifest.of_kind("projector")
    if not layers:
        return None
    p = models_dir / "blobs" / f"sha256-{layers[0].sha256}"
    return p if p.is_file() else None
