"""Is this GGUF a LoRA adapter the engine can load with ``--lora``, and does it fit the model?

llama.cpp's adapter loader (src/llama-adapter.cpp ``llama_adapter_lora_init_impl``)
wants ``general.type`` = ``adapter``, ``adapter.type`` = ``lora``, a
``general.architecture`` equal to the base model's, an optional ``adapter.lora.alpha``
(read as a float32: another type aborts the engine in ``gguf_get_val_f32``), and
tensors named ``<base tensor>.lora_a`` / ``.lora_b`` in pairs (``*_norm.weight`` is
skipped; any other name is refused). For each pair the base tensor must exist, and
with ``W`` the base tensor's ggml shape: ``W[0] == a[0]``, ``W[1] == b[1]`` and
``a[1] == b[0]`` (the rank); for ``token_embd.weight`` A and B are flipped
(``W[0] == b[1]``, ``W[1] == a[1]``).

The engine finds all that out only after loading the model, and then refuses to start
with a line in its log. A mint (``dxbuild --adapter``), ``dx verify`` of an executable
and the runtime before it starts an engine with ``--lora`` read the same facts from the
headers in milliseconds and refuse with one line. Stricter than the loader in one way:
an adapter with no tensor pair (which would change nothing) is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dxverify.errors import IncompatibleModelsError, MalformedInputError
from dxverify.gguf import ARRAY, FLOAT32, STRING, UINT32, GGUFFile, read_gguf

ADAPTER_TYPE = "adapter"
LORA = "lora"
ALPHA_KEY = "adapter.lora.alpha"
ALORA_TOKENS_KEY = "adapter.alora.invocation_tokens"
_HINT = "pass a LoRA adapter GGUF (general.type 'adapter', adapter.type 'lora') made for this base model"
_FIT_HINT = "use the adapter made for this base model (same architecture and sizes)"


@dataclass(frozen=True)
class AdapterInfo:
    """What the check learnt: the architecture, alpha (0 when unset), how many tensor pairs, the rank."""

    arch: str
    alpha: float
    pairs: int
    rank: int

    def describe(self) -> str:
        return f"a LoRA adapter ({self.arch}, rank {self.rank}, {self.pairs} tensor pairs, alpha {self.alpha:g})"


def _string(g: GGUFFile, key: str, where: str) -> str:
    item = g.kv.get(key)
    if item is None:
        return ""
    if item.type != STRING:
        raise MalformedInputError(f"{where}: {key} is {item.type_name}, not a string (the engine aborts on it)",
                                  hint=_HINT)
    return str(item.value)


def _pairs(g: GGUFFile, where: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """base tensor name -> (lora_a shape, lora_b shape), as the loader pairs them."""
    a: dict[str, tuple[int, ...]] = {}
    b: dict[str, tuple[int, ...]] = {}
    for t in g.tensors:
        if t.name.endswith(".lora_a"):
            a[t.name[: -len(".lora_a")]] = t.shape
        elif t.name.endswith(".lora_b"):
            b[t.name[: -len(".lora_b")]] = t.shape
        elif not t.name.endswith("_norm.weight"):
            raise MalformedInputError(f"{where}: tensor {t.name!r} is not a LoRA tensor (.lora_a/.lora_b)",
                                      hint=_HINT)
    for name in sorted(set(a) ^ set(b)):
        raise MalformedInputError(f"{where}: the LoRA pair for {name!r} lacks its"
                                  f" {'lora_b' if name in a else 'lora_a'}", hint=_HINT)
    if not a:
        raise MalformedInputError(f"{where}: the adapter has no LoRA tensors (it would change nothing)",
                                  hint=_HINT)
    for name in sorted(a):
        if len(a[name]) != 2 or len(b[name]) != 2:
            raise MalformedInputError(f"{where}: the LoRA pair for {name!r} is not two matrices"
                                      f" (shapes {list(a[name])}, {list(b[name])})", hint=_HINT)
        if not name.endswith("token_embd.weight") and a[name][1] != b[name][0]:
            raise MalformedInputError(f"{where}: the LoRA pair for {name!r}: lora_a is {list(a[name])} and"
                                      f" lora_b {list(b[name])}, whose ranks differ (lora_a is not transposed)",
                                      hint=_HINT)
    return {name: (a[name], b[name]) for name in a}


def check_adapter(path: str | Path, offset: int = 0, length: int | None = None, *, label: str = "",
                  model: str | Path | None = None, model_offset: int = 0,
                  model_length: int | None = None) -> AdapterInfo:
    """Raise (one line) unless ``path`` is a LoRA adapter (and fits ``model``); what it is otherwise.

    MalformedInputError when the file is not a loadable LoRA adapter; IncompatibleModelsError
    (a ConfigurationError) when it is one but made for another model (architecture, a
    tensor the model lacks, or a shape that does not fit).
    """
    where = label or str(path)
    with read_gguf(path, offset, length) as g:
        general_type = _string(g, "general.type", where)
        if general_type != ADAPTER_TYPE:
            raise MalformedInputError(
                f"{where} is not an adapter (general.type {general_type or None!r}, expected {ADAPTER_TYPE!r})",
                hint=_HINT)
        kind = _string(g, "adapter.type", where)
        if kind != LORA:
            raise MalformedInputError(f"{where} is not a LoRA adapter (adapter.type {kind or None!r},"
                                      f" expected {LORA!r})", hint=_HINT)
        arch = _string(g, "general.architecture", where)
        if not arch:
            raise MalformedInputError(f"{where}: the adapter names no general.architecture", hint=_HINT)
        alpha = 0.0
        item = g.kv.get(ALPHA_KEY)
        if item is not None:
            if item.type != FLOAT32:
                raise MalformedInputError(f"{where}: {ALPHA_KEY} is {item.type_name}, not FLOAT32 (the engine"
                                          " aborts on it)", hint=_HINT)
            alpha = float(item.value)
        tokens = g.kv.get(ALORA_TOKENS_KEY)
        if tokens is not None and (tokens.type != ARRAY or getattr(tokens.value, "elem_type", None) != UINT32):
            raise MalformedInputError(f"{where}: {ALORA_TOKENS_KEY} is {tokens.type_name}, not ARRAY[UINT32]",
                                      hint=_HINT)
        pairs = _pairs(g, where)
    ranks = {sa[0] if name.endswith("token_embd.weight") else sa[1] for name, (sa, sb) in pairs.items()}
    info = AdapterInfo(arch=arch, alpha=alpha, pairs=len(pairs), rank=max(ranks))
    if model is None:
        return info
    with read_gguf(model, model_offset, model_length) as m:
        m_arch = m.get("general.architecture")
        shapes = {t.name: t.shape for t in m.tensors}
    if arch != m_arch:
        raise IncompatibleModelsError(f"{where} is for architecture {arch!r}, the model is {m_arch!r}"
                                      " (llama.cpp: model arch and LoRA arch mismatch)", hint=_FIT_HINT)
    for name in sorted(pairs):
        sa, sb = pairs[name]
        w = shapes.get(name)
        if w is None:
            raise IncompatibleModelsError(f"{where}: LoRA tensor {name!r} does not exist in the model",
                                          hint=_FIT_HINT)
        if len(w) < 2:
            raise IncompatibleModelsError(f"{where}: LoRA tensor {name!r} adapts a one-dimensional tensor",
                                          hint=_FIT_HINT)
        if name.endswith("token_embd.weight"):
            fits = w[0] == sb[1] and w[1] == sa[1]
        else:
            fits = w[0] == sa[0] and w[1] == sb[1]
        if not fits:
            raise IncompatibleModelsError(
                f"{where}: LoRA pair for {name!r} has shapes a {list(sa)}, b {list(sb)}, which do not fit the"
                f" model's {list(w[:2])}", hint=_FIT_HINT)
    return info
