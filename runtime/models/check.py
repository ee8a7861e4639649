"""The gate every model passes before the engine may load it.

Structure is checked every time (the strict reader, milliseconds); the full
SHA-256 is computed once per (path, size, mtime, inode, offset, length) and
remembered in ``dxverify.verified_cache``, so a 10 GB model is hashed once, not
at every start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dx import metrics
from dx.models.details import parameter_size  # Ollama's form, as /api/tags shows it
from dxverify.errors import IntegrityError, MalformedInputError

# Metadata arrays this long are tokenizer tables: useless in /api/show, huge in JSON.
_MAX_LISTED_ARRAY = 64


@dataclass(frozen=True)
class ModelFacts:
    """What the store records about a GGUF, read once at import."""

    arch: str = ""
    name: str = ""
    family: str = ""
    quant: str = ""
    parameter_size: str = ""
    parameter_count: int = 0
    context_length: int = 0
    block_count: int = 0
    embedding_length: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    has_chat_template: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "metadata"}


def sha256_of(path: Path, offset: int = 0, length: int | None = None) -> str:
    """Streamed SHA-256 of the model's bytes (``dxverify.hashing``)."""
    from dxverify.hashing import sha256_file

    return sha256_file(path, offset, length)


def read_facts(path: Path, offset: int = 0, length: int | None = None) -> ModelFacts:
    """Run the strict GGUF reader over the model and keep what the store and doctor need.

    Raises the reader's MalformedInputError (field and byte offset) on any flaw.
    """
    from dxverify.gguf import read_gguf

    with read_gguf(path, offset=offset, length=length) as gguf:
        return facts_from_gguf(gguf)


def facts_from_gguf(gguf: Any) -> ModelFacts:
    """Pick the fields DX uses out of a checked ``dxverify.gguf.GGUFFile``."""
    meta = gguf.metadata(max_array=_MAX_LISTED_ARRAY)
    summary = gguf.summary()
    arch = summary.architecture or ""

    def arch_int(key: str) -> int:
        v = gguf.get(f"{arch}.{key}", 0)
        if isinstance(v, (list, tuple)):  # per-layer arrays (head_count_kv on some models)
            v = max((x for x in v if isinstance(x, int)), default=0)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    params = int(summary.parameters or 0)
    # The quantisation that holds most of the bytes names the model ("Q4_1"), as Ollama shows it.
    quant = next(iter(summary.quantization), "") if summary.quantization else ""
    head_count = arch_int("attention.head_count")
    return ModelFacts(
        arch=arch,
        name=summary.name or "",
        family=arch,
        quant=quant,
        parameter_size=parameter_size(params) if params else "",
        parameter_count=params,
        context_length=int(summary.context_length or 0),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=head_count,
        head_count_kv=arch_int("attention.head_count_kv") or head_count,
        has_chat_template=bool(summary.chat_template),
        metadata=meta,
    )


def verify_model(
    path: Path,
    *,
    offset: int = 0,
    length: int | None = None,
    expected_sha256: str | None = None,
    cache_dir: Path | None = None,
) -> str:
    """Check structure now and the full SHA-256 once; return the SHA-256.

    ``expected_sha256`` (a store blob's digest, a pinned hash) must match when
    given; a mismatch is an IntegrityError and the model must not be loaded.
    """
    from dxverify import verified_cache

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise MalformedInputError(f"cannot read model {path}: {e.strerror}") from None
    read_facts(path, offset, length)
    digest = verified_cache.lookup(cache_dir, path, offset, length) if cache_dir else None

    if digest is None:
        digest = sha256_of(path, offset, length)
        metrics.model_verified(length if length is not None else st.st_size - offset)
        if cache_dir and os.stat(path).st_mtime_ns == st.st_mtime_ns:
            verified_cache.remember(cache_dir, path, digest, offset, length)
    else:
        metrics.model_verified(None)
    if expected_sha256 and digest != expected_sha256.lower():
        raise IntegrityError(
            f"model {path} has SHA-256 {digest}, expected {expected_sha256.lower()}",
            hint="the file is corrupt or was replaced; pull or import it again",
        )
    return digest
