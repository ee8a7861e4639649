"""The gate every model passes before the engine may load it.

Structure is checked every time (the strict reader, milliseconds); the full
SHA-256 is computed once per (path, size, mtime, inode, offset, length) and
remembered in ``dxverify.verified_cache``, so a 10 GB model is hashed once, not
at every start.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dxverify.errors import IntegrityError, MalformedInputError

_CHUNK = 1 << 20
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
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "metadata"}
        return d


def sha256_of(path: Path, offset: int = 0, length: int | None = None) -> str:
    """Stream a SHA-256 over ``length`` bytes of ``path`` from ``offset``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    if left:
        raise MalformedInputError(f"{path}: ends {left} bytes short of the model's recorded length")
    return h.hexdigest()


def read_facts(path: Path, offset: int = 0, length: int | None = None) -> ModelFacts:
    """Run the strict GGUF reader over the model and keep what the store and doctor need.

    Raises the reader's MalformedInputError (field and byte offset) on any flaw.
    """
    from dxverify.gguf import read_gguf

    gguf = read_gguf(path, offset=offset, length=length)
    return facts_from_gguf(gguf)


def facts_from_gguf(gguf: Any) -> ModelFacts:
    meta = dict(gguf.metadata)
    arch = str(meta.get("general.architecture", ""))

    def arch_int(key: str) -> int:
        v = meta.get(f"{arch}.{key}", 0)
        if isinstance(v, (list, tuple)):  # per-layer arrays (e.g. head_count_kv on some models)
            v = max(v) if v else 0
        try:
            return int(v)
        except (TypeError, ValueError):
            return 0

    summary = getattr(gguf, "summary", None)
    summary = summary() if callable(summary) else summary
    params = int(_get(summary, "parameter_count", 0) or _get(summary, "params", 0) or 0)
    quant = str(_get(summary, "file_type", "") or _get(summary, "quant", "") or "")
    head_count = arch_int("attention.head_count")
    return ModelFacts(
        arch=arch,
        name=str(meta.get("general.name", "")),
        family=arch,
        quant=quant,
        parameter_size=_human_params(params) if params else str(meta.get("general.size_label", "")),
        parameter_count=params,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=head_count,
        head_count_kv=arch_int("attention.head_count_kv") or head_count,
        has_chat_template="tokenizer.chat_template" in meta,
        metadata={
            k: v for k, v in meta.items() if not (isinstance(v, (list, tuple)) and len(v) > _MAX_LISTED_ARRAY)
        },
    )


def _get(obj: Any, key: str, default: Any) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _human_params(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


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
    digest = verified_cache.lookup(path, offset=offset, length=length, cache_dir=cache_dir)
    if digest is None:
        digest = sha256_of(path, offset, length)
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:
            verified_cache.remember(path, digest, offset=offset, length=length, cache_dir=cache_dir)
    if expected_sha256 and digest != expected_sha256.lower():
        raise IntegrityError(
            f"model {path} has SHA-256 {digest}, expected {expected_sha256.lower()}",
            hint="the file is corrupt or was replaced; pull or import it again",
        )
    return digest
