"""Can this draft model speculate for that target? The check llama.cpp makes, made before the engine starts.

The pinned llama.cpp's ``common_speculative_are_compatible`` (common/speculative.cpp)
refuses a pair unless: the vocabulary types are equal; the add-BOS flags are equal
and, when BOS is added, the BOS ids; the same for EOS; the token counts differ by
at most ``SPEC_VOCAB_MAX_SIZE_DIFFERENCE`` (128); and every token text from id
``SPEC_VOCAB_CHECK_START_TOKEN_ID`` (5) up to the smaller count is equal (``strcmp``).
The engine finds that out only after loading both models and then exits with one
generic line; DX reads the same facts from the GGUF metadata in milliseconds and
names the first difference, so a mint or a ``dx serve --draft`` is refused before
anything is written or started.

The vocabulary facts mirror ``llama_vocab::impl::load`` (src/llama-vocab.cpp):
``tokenizer.ggml.model`` picks the vocabulary type and its default BOS/EOS ids and
add-flags (BPE's add-BOS default depends on ``tokenizer.ggml.pre``), a default id
outside the vocabulary is disabled, an id key outside it is ignored, and the
``add_bos_token``/``add_eos_token`` keys override the defaults (Gemma 4's
pre-tokenizer forces add-BOS on).

Token texts are compared as raw bytes in one ``memcmp`` when the counts are equal
(the common case: 49,152 SmolLM2 tokens in well under a millisecond); only a
difference walks the two lists to name the first differing id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from dxverify.errors import IncompatibleModelsError
from dxverify.gguf import STRING, ArrayValue, GGUFFile, KeyValue, read_gguf

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5
TOKEN_NULL = -1  # LLAMA_TOKEN_NULL

# tokenizer.ggml.model -> llama_vocab_type (the enum is what llama.cpp compares, not the string).
VOCAB_TYPES = {
    "no_vocab": "none", "none": "none",
    "llama": "spm",
    "bert": "wpm",
    "gpt2": "bpe", "hybriddna": "bpe", "whitespace": "bpe", "gemma4": "bpe",
    "t5": "ugm",
    "rwkv": "rwkv",
    "test": "test",
    "plamo2": "plamo2",
}
# Default (BOS, EOS) ids per vocabulary type, before the GGUF's keys (llama-vocab.cpp).
_DEFAULT_IDS = {
    "spm": (1, 2), "wpm": (101, TOKEN_NULL), "bpe": (11, 11), "ugm": (TOKEN_NULL, 1),
    "rwkv": (TOKEN_NULL, TOKEN_NULL), "test": (TOKEN_NULL, TOKEN_NULL), "plamo2": (1, 2),
}
# Default (add_bos, add_eos) per type; BPE's add_bos comes from its pre-tokenizer below.
_DEFAULT_ADD = {"spm": (True, False), "wpm": (True, False), "ugm": (False, True), "rwkv": (False, False)}
_BPE_PRE_ADD_BOS = frozenset({
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
    "jina-v5-nano",  # LLAMA_VOCAB_PRE_TYPE_LLAMA3
    "tekken", "chameleon",
})
_BPE_PRE_NO_BOS = frozenset({"chatglm-bpe", "glm4", "glm5"})  # special_bos_id = LLAMA_TOKEN_NULL
_GEMMA4_PRE = frozenset({"gemma4", "granite-embed-multi-311m"})  # add_bos forced on after the keys
_U64 = struct.Struct("<Q")
_HINT = "pick a draft from the same model family (the same tokenizer)"


@dataclass(frozen=True)
class Vocab:
    """What llama.cpp's speculation check reads from one model's vocabulary."""

    label: str
    type: str
    n_tokens: int
    add_bos: bool
    add_eos: bool
    bos: int
    eos: int
    tokens: ArrayValue | None  # None: a "none" vocabulary (dummy, empty tokens)


def check_pair(target: str | Path, draft: str | Path, *, target_offset: int = 0, target_length: int | None = None,
               draft_offset: int = 0, draft_length: int | None = None) -> None:
    """Raise IncompatibleModelsError (one line, the first difference) unless ``draft`` can speculate for ``target``.

    Either GGUF may sit inside a larger file (a minted executable) at ``*_offset``
    for ``*_length`` bytes. Each is read by the strict reader first, so a damaged
    file is a GGUFError (MalformedInputError), not a wrong verdict.
    """
    with read_gguf(target, target_offset, target_length) as tg, read_gguf(draft, draft_offset, draft_length) as dg:
        t = vocab_of(tg, "target " + _label(target, target_offset, tg))
        d = vocab_of(dg, "draft " + _label(draft, draft_offset, dg))
        problem = difference(t, d)
    if problem:
        raise IncompatibleModelsError(f"{d.label} is not compatible with {t.label}: {problem}",
                                      hint=_HINT)


def difference(t: Vocab, d: Vocab) -> str | None:
    """The first check of common_speculative_are_compatible that fails, in words; None when the pair passes."""
    if t.type != d.type:
        return f"vocabulary type differs ({t.type} vs {d.type})"
    if t.add_bos != d.add_bos or (t.add_bos and t.bos != d.bos):
        return f"BOS differs (add_bos {t.add_bos} vs {d.add_bos}, id {t.bos} vs {d.bos})"
    if t.add_eos != d.add_eos or (t.add_eos and t.eos != d.eos):
        return f"EOS differs (add_eos {t.add_eos} vs {d.add_eos}, id {t.eos} vs {d.eos})"
    diff = abs(t.n_tokens - d.n_tokens)
    if diff > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
        return (f"vocabulary size differs by {diff} ({t.n_tokens} vs {d.n_tokens} tokens,"
                f" at most {SPEC_VOCAB_MAX_SIZE_DIFFERENCE} allowed)")
    bad = first_token_difference(t, d)
    if bad is not None:
        i, a, b = bad
        return f"token {i} differs ({_show(a)} vs {_show(b)})"
    return None


def first_token_difference(t: Vocab, d: Vocab) -> tuple[int, bytes, bytes] | None:
    """(id, target text, draft text) of the first token from id 5 whose texts differ as C strings."""
    n = min(t.n_tokens, d.n_tokens)
    start = SPEC_VOCAB_CHECK_START_TOKEN_ID
    if n <= start or (t.tokens is None and d.tokens is None):
        return None
    if t.tokens is None or d.tokens is None:  # a "none" vocabulary (every text empty) against a real one
        real = t.tokens if d.tokens is None else d.tokens
        assert real is not None
        for i, text in _walk(real, start, n):
            if text.split(b"\0", 1)[0]:
                return (i, b"", text) if t.tokens is None else (i, text, b"")
        return None
    ta, da = t.tokens, d.tokens
    tpos = _skip(ta, start)
    dpos = _skip(da, start)
    tend = ta.end if n == ta.count else _skip(ta, n - start, tpos)
    dend = da.end if n == da.count else _skip(da, n - start, dpos)
    if tend - tpos == dend - dpos and ta._buf[tpos:tend] == da._buf[dpos:dend]:
        return None  # byte-identical: one comparison
    for (i, a), (_, b) in zip(_walk(ta, start, n), _walk(da, start, n), strict=True):
        if a != b and a.split(b"\0", 1)[0] != b.split(b"\0", 1)[0]:  # strcmp stops at a NUL
            return i, a, b
    return None


def vocab_of(gf: GGUFFile, label: str) -> Vocab:
    """The vocabulary facts llama.cpp's loader would derive from this GGUF's keys."""
    model = _str(gf, "tokenizer.ggml.model")
    if model is None:
        raise IncompatibleModelsError(f"{label} has no vocabulary (no tokenizer.ggml.model key)",
                                      hint="a draft and its target both need a tokenizer")
    vtype = VOCAB_TYPES.get(model)
    if vtype is None:
        raise IncompatibleModelsError(f"{label} has tokenizer.ggml.model {model!r}, which the engine does not know",
                                      hint="llama.cpp would refuse to load it; pick another model")
    if vtype == "none":  # llama.cpp returns early: dummy tokens, no BOS/EOS
        arch = _str(gf, "general.architecture") or ""
        n = gf.get(f"{arch}.vocab_size")
        n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0
        return Vocab(label, vtype, n, False, False, TOKEN_NULL, TOKEN_NULL, None)
    kv = gf.kv.get("tokenizer.ggml.tokens")
    if kv is None or not isinstance(kv.value, ArrayValue) or kv.value.elem_type != STRING:
        raise IncompatibleModelsError(f"{label} has no token list (tokenizer.ggml.tokens)",
                                      hint="llama.cpp would refuse to load it; pick another model")
    tokens = kv.value
    n = tokens.count
    pre = _str(gf, "tokenizer.ggml.pre") or ""
    if model == "gemma4":
        pre = "gemma4"
    bos, eos = _DEFAULT_IDS[vtype]
    if vtype == "bpe":
        add_bos, add_eos = pre in _BPE_PRE_ADD_BOS, False
        if pre in _BPE_PRE_NO_BOS:
            bos = TOKEN_NULL
    else:
        add_bos, add_eos = _DEFAULT_ADD.get(vtype, (False, False))
    bos = _special_id(gf.kv.get("tokenizer.ggml.bos_token_id"), bos, n)
    eos = _special_id(gf.kv.get("tokenizer.ggml.eos_token_id"), eos, n)
    add_bos = _flag(gf.kv.get("tokenizer.ggml.add_bos_token"), add_bos)
    add_eos = _flag(gf.kv.get("tokenizer.ggml.add_eos_token"), add_eos)
    if vtype == "bpe" and pre in _GEMMA4_PRE:
        add_bos = True
    return Vocab(label, vtype, n, add_bos, add_eos, bos, eos, tokens)


def _special_id(kv: KeyValue | None, default: int, n: int) -> int:
    if default >= n:  # "default special token ... out of vocab range, disabling"
        default = TOKEN_NULL
    v = None if kv is None else kv.value
    if isinstance(v, bool) or not isinstance(v, int):
        return default
    return v if 0 <= v < n else default  # "bad special token ... using default id"


def _flag(kv: KeyValue | None, default: bool) -> bool:
    return kv.value if kv is not None and isinstance(kv.value, bool) else default


def _str(gf: GGUFFile, key: str) -> str | None:
    v = gf.get(key)
    return v if isinstance(v, str) else None


def _skip(arr: ArrayValue, k: int, pos: int | None = None) -> int:
    """Offset just past ``k`` more strings of ``arr`` (the reader already checked every length fits)."""
    buf = arr._buf
    pos = arr.start if pos is None else pos
    unpack = _U64.unpack_from
    for _ in range(k):
        pos += 8 + unpack(buf, pos)[0]
    return pos


def _walk(arr: ArrayValue, start: int, stop: int):  # type: ignore[no-untyped-def]
    buf = arr._buf
    pos = _skip(arr, start)
    unpack = _U64.unpack_from
    for i in range(start, stop):
        n = unpack(buf, pos)[0]
        yield i, bytes(buf[pos + 8: pos + 8 + n])
        pos += 8 + n


def _label(path: str | Path, offset: int, gf: GGUFFile) -> str:
    name = _str(gf, "general.name")
    where = Path(path).name
    if where.startswith("sha256-") and len(where) > 19:  # a store blob: its name is its digest
        where = where[:19] + "…"
    where += f"@{offset}" if offset else ""
    return f"{name!r} ({where})" if name else where


def _show(text: bytes, limit: int = 40) -> str:
    s = text.decode("utf-8", errors="replace")
    return repr(s if len(s) <= limit else s[:limit] + "…")
