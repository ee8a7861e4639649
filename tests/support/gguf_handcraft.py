"""Write GGUF bytes by hand, field by field, so tests can corrupt any one of them.

Independent of dxverify.gguf on purpose: a test that used the reader's own
layout knowledge to build its inputs would share the reader's mistakes. It
also records where each field landed (``fields``), so mutation tests can
truncate or overwrite exactly at a structural boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {
    U8: "B",
    I8: "b",
    U16: "H",
    I16: "h",
    U32: "I",
    I32: "i",
    F32: "f",
    BOOL: "B",
    U64: "Q",
    I64: "q",
    F64: "d",
}
# (block size, bytes per block) of the ggml types the tiny model uses, from the pinned llama.cpp;
# other types go by a table passed to build() (tests cross-check dxverify's table separately).
GGML = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    8: (32, 34),
    12: (256, 144),
    24: (1, 1),
    27: (1, 8),
    30: (1, 2),
}


@dataclass
class Tensor:
    name: str
    shape: list[int]
    ggml_type: int = 0
    offset: int | None = None  # None: computed (packed, aligned)
    n_dims: int | None = None  # None: len(shape)


@dataclass
class Crafted:
    data: bytes
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size)


@dataclass
class GGUFCraft:
    """A GGUF described field by field; ``build()`` lays it out like llama.cpp's writer."""

    magic: bytes = b"GGUF"
    version: int = 3
    kvs: list[tuple[str, int, Any]] = field(
        default_factory=list
    )  # (key, type, value); arrays: (elem_type, list)
    tensors: list[Tensor] = field(default_factory=list)
    alignment: int = 32
    n_tensors: int | None = None  # override the header count
    n_kv: int | None = None
    data_fill: int | None = None  # None: pattern bytes for the full data section
    data_bytes: int | None = None  # override the data section length

    def build(self, sizes: dict[int, tuple[int, int]] | None = None) -> Crafted:
        out = bytearray()
        fields: dict[str, tuple[int, int]] = {}

        def put(name: str, b: bytes) -> None:
            fields[name] = (len(out), len(b))
            out.extend(b)

        put("magic", self.magic)
        put("version", struct.pack("<I", self.version))
        put("n_tensors", struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors))
        put("n_kv", struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv))
        for i, (key, vtype, value) in enumerate(self.kvs):
            kb = key.encode()
            put(f"kv{i}.key_len", struct.pack("<Q", len(kb)))
            put(f"kv{i}.key", kb)
            put(f"kv{i}.type", struct.pack("<I", vtype))
            put(f"kv{i}.value", _value(vtype, value))
        offset = 0
        for i, t in enumerate(self.tensors):
            nb = t.name.encode()
            put(f"t{i}.name_len", struct.pack("<Q", len(nb)))
            put(f"t{i}.name", nb)
            put(f"t{i}.n_dims", struct.pack("<I", len(t.shape) if t.n_dims is None else t.n_dims))
            put(f"t{i}.ne", b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.shape))
            put(f"t{i}.type", struct.pack("<I", t.ggml_type))
            put(f"t{i}.offset", struct.pack("<Q", (offset if t.offset is None else t.offset) & (2**64 - 1)))
            size = nbytes(t, sizes)
            offset += size + (-size % self.alignment)
        if self.tensors:
            pad = -len(out) % self.alignment
            put("header_pad", b"\0" * pad)
            n = offset if self.data_bytes is None else self.data_bytes
            fill = bytes(i % 251 for i in range(min(n, 4096)))
            body = (fill * (n // 4096 + 1))[:n] if self.data_fill is None else bytes([self.data_fill]) * n
            put("data", body)
        return Crafted(bytes(out), fields)


def nbytes(t: Tensor, sizes: dict[int, tuple[int, int]] | None = None) -> int:
    blck, size = (sizes or GGML).get(t.ggml_type, (1, 4))
    n = 1
    for d in t.shape:
        n *= max(d, 0)
    return n // blck * size


def _value(vtype: int, value: Any) -> bytes:
    if vtype == STR:
        b = value.encode() if isinstance(value, str) else value
        return struct.pack("<Q", len(b)) + b
    if vtype == ARR:
        etype, items = value
        body = b"".join(_value(etype, v) for v in items)
        return struct.pack("<IQ", etype, len(items)) + body
    if vtype not in FMT:  # an invalid type: one byte of "value", as test-gguf writes
        return b"\0"
    return struct.pack("<" + FMT[vtype], value)


def tiny_model(n_vocab: int = 8, alignment: int | None = None) -> GGUFCraft:
    """A small but complete model: architecture, tokenizer, special ids and three tensors."""
    kvs: list[tuple[str, int, Any]] = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "tiny"),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 128),
        ("llama.attention.head_count", U32, 2),
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.tokens", ARR, (STR, [f"t{i}" for i in range(n_vocab)])),
        ("tokenizer.ggml.scores", ARR, (F32, [float(i) for i in range(n_vocab)])),
        ("tokenizer.ggml.token_type", ARR, (I32, [1] * n_vocab)),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.chat_template", STR, "{{ messages }}"),
    ]
    if alignment is not None:
        kvs.append(("general.alignment", U32, alignment))
    return GGUFCraft(
        kvs=kvs,
        tensors=[
            Tensor("token_embd.weight", [32, n_vocab], 3),
            Tensor("output_norm.weight", [5], 0),
            Tensor("blk.0.attn_q.weight", [64, 2], 8),
        ],
        alignment=alignment or 32,
    )
