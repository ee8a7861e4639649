"""A strict, bounds-checked GGUF reader: the gate every model passes before the engine sees it.

Why hand-written: llama.cpp's parser has had a long line of overflow and
out-of-bounds bugs (see shared/reference/gguf-security.md), and gguf-py checks
nothing. This reader trusts no number from the file: every count, length, type
and offset is compared with the bytes that remain *before* it is used to
allocate, loop or seek. It rejects everything llama.cpp's ``gguf.cpp`` rejects
(and its ``tests/test-gguf.cpp`` corrupt kinds), plus what llama.cpp only finds
at model load (tensor bytes past the end of the file, tokenizer arrays of the
wrong element type, special token ids outside the vocabulary, too many layers).

The file is mmapped and only the header is touched, so checking a 40 GB model
costs the same memory as checking a 100 MB one. A GGUF embedded inside a
larger file (a minted executable) is read in place: bounds are checked against
the embedded region and offsets are reported relative to the start of the file.
"""

from __future__ import annotations

import array
import math
import mmap
import os
import re
import stat
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dxverify.errors import MalformedInputError
from dxverify.ggml_types import INT64_MAX, SIZE_MAX, ggml_type
from dxverify.units import parameter_size

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# gguf.cpp's GGUF_MAX_STRING_LENGTH and GGUF_MAX_ARRAY_ELEMENTS.
MAX_STRING_LENGTH = 1 << 30
MAX_ARRAY_ELEMENTS = 1 << 30
# The GGUF spec's limit for keys; gguf.cpp has none.
MAX_KEY_LENGTH = 65535
# An alignment beyond this only wastes bytes; gguf.cpp has no cap (PR #24997 proposes one).
MAX_ALIGNMENT = 1 << 20
# GGML_MAX_NAME: gguf.cpp rejects names of 64 bytes or more.
MAX_TENSOR_NAME = 63
MAX_DIMS = 4
# LLAMA_MAX_LAYERS: a larger block_count indexes past llama.cpp's fixed layer arrays.
MAX_LAYERS = 512
# Smallest possible records, used to bound the header counts by the file size:
# key (u64 len + 1 byte) + u32 type + 1-byte value; name (u64 len + 1 byte) + u32 n_dims + u32 type + u64 offset.
MIN_KV_BYTES = 14
MIN_TENSOR_INFO_BYTES = 25

# GGUF metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPE_NAMES = {
    UINT8: "UINT8",
    INT8: "INT8",
    UINT16: "UINT16",
    INT16: "INT16",
    UINT32: "UINT32",
    INT32: "INT32",
    FLOAT32: "FLOAT32",
    BOOL: "BOOL",
    STRING: "STRING",
    ARRAY: "ARRAY",
    UINT64: "UINT64",
    INT64: "INT64",
    FLOAT64: "FLOAT64",
}
_SCALAR_FORMAT = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "B",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
_SCALAR_STRUCT = {t: struct.Struct("<" + f) for t, f in _SCALAR_FORMAT.items()}
INTEGER_TYPES = frozenset({UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64})

# llama_ftype names (include/llama.h of the pinned commit), for general.file_type.
FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0", 41: "Q2_0",
}  # fmt: skip

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_HINT = "the file is not a valid GGUF model; re-download or re-convert it"


class GGUFError(MalformedInputError):
    """One rejection: ``code`` (stable, for tools), ``field`` and ``offset`` (bytes from the file start)."""

    def __init__(
        self, code: str, detail: str, *, field: str, offset: int, path: str | None = None, hint: str = _HINT
    ) -> None:
        self.code = code
        self.detail = detail
        self.field = field
        self.offset = offset
        self.path = path
        super().__init__(self._compose(), hint=hint)

    def _compose(self) -> str:
        # one line whatever the path holds
        where = (
            f"{self.path!r}: "
            if self.path and not self.path.isprintable()
            else f"{self.path}: "
            if self.path
            else ""
        )
        return f"{where}malformed GGUF: {self.field} at byte {self.offset}: {self.detail} [{self.code}]"

    def with_path(self, path: str) -> GGUFError:
        self.path = path
        self.message = self._compose()
        self.args = (self.message,)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.detail, "field": self.field, "offset": self.offset}


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array, decoded only on request so a 150k-token vocabulary costs nothing until used."""

    elem_type: int
    count: int
    start: int  # absolute offset of the first element
    end: int  # absolute offset just past the last element
    _buf: Any = field(repr=False, compare=False)

    def __len__(self) -> int:
        return self.count

    def to_list(self) -> list[Any]:
        if self.elem_type == STRING:
            return list(_iter_strings(self._buf, self.start, self.count))
        fmt = _SCALAR_FORMAT[self.elem_type]
        values = list(struct.unpack_from(f"<{self.count}{fmt}", self._buf, self.start))
        if self.elem_type == BOOL:
            return [bool(v) for v in values]
        return values


def _iter_strings(buf: Any, pos: int, count: int) -> Iterator[str]:
    # Only called on arrays the parser already walked, so every length is known to fit.
    unpack = _U64.unpack_from
    for _ in range(count):
        n = unpack(buf, pos)[0]
        pos += 8
        yield bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
        pos += n


@dataclass(frozen=True)
class KeyValue:
    key: str
    type: int
    value: Any  # int, float, bool, str or ArrayValue
    offset: int  # absolute offset of the key's record

    @property
    def type_name(self) -> str:
        if isinstance(self.value, ArrayValue):
            return f"ARRAY[{VALUE_TYPE_NAMES[self.value.elem_type]}]"
        return VALUE_TYPE_NAMES[self.type]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ne[0..n_dims), innermost first, as in the file
    ggml_type: int
    type_name: str
    offset: int  # relative to the data section, as in the file
    n_elements: int
    n_bytes: int
    info_offset: int  # absolute offset of this tensor's info record
    data_start: int  # absolute offset of its bytes in the file


@dataclass(frozen=True)
class GGUFSummary:
    """What `dx inspect` shows; computed from the header only."""

    version: int
    architecture: str | None
    name: str | None
    parameters: int
    quantization: dict[str, int]  # bytes by ggml type name
    file_type: str | None  # general.file_type as llama.cpp names it, else the type holding most bytes
    context_length: int | None
    vocab_size: int | None
    chat_template: bool
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int
    file_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "architecture": self.architecture,
            "name": self.name,
            "parameters": self.parameters,
            "quantization": dict(self.quantization),
            "file_type": self.file_type,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template,
            "tensor_count": self.tensor_count,
            "kv_count": self.kv_count,
            "alignment": self.alignment,
            "data_offset": self.data_offset,
            "file_size": self.file_size,
        }

    @property
    def parameter_count(self) -> int:
        return self.parameters


@dataclass
class GGUFFile:
    """A GGUF that passed every check. Holds the read-only mapping until ``close()``."""

    path: str | None
    offset: int  # where the GGUF starts in the file
    length: int  # its length in bytes
    version: int
    alignment: int
    kv: dict[str, KeyValue]
    tensors: list[TensorInfo]
    header_size: int  # bytes of header, KVs and tensor infos (before padding)
    data_offset: int  # absolute offset of the data section
    data_size: int  # bytes of the data section, padding included
    _buf: Any = field(default=None, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``; arrays come back as lists."""
        kv = self.kv.get(key)
        if kv is None:
            return default
        return kv.value.to_list() if isinstance(kv.value, ArrayValue) else kv.value

    def metadata(self, max_array: int | None = None) -> dict[str, Any]:
        """Every key -> value (what /api/show needs); arrays longer than ``max_array`` are left out undecoded."""
        return {
            k: self.get(k)
            for k, kv in self.kv.items()
            if max_array is None or not isinstance(kv.value, ArrayValue) or kv.value.count <= max_array
        }

    def summary(self) -> GGUFSummary:
        arch = self.kv.get("general.architecture")
        arch_name = arch.value if arch is not None and arch.type == STRING else None
        name = self.kv.get("general.name")
        quant: dict[str, int] = {}
        for t in self.tensors:
            quant[t.type_name] = quant.get(t.type_name, 0) + t.n_bytes
        ctx = self.kv.get(f"{arch_name}.context_length") if arch_name else None
        tokens = self.kv.get("tokenizer.ggml.tokens")
        vocab: int | None = None
        if tokens is not None and isinstance(tokens.value, ArrayValue):
            vocab = tokens.value.count
        elif arch_name and isinstance(self.get(f"{arch_name}.vocab_size"), int):
            vocab = self.get(f"{arch_name}.vocab_size")
        ftype_kv = self.kv.get("general.file_type")
        file_type = None
        if ftype_kv is not None and ftype_kv.type in INTEGER_TYPES:
            file_type = FILE_TYPE_NAMES.get(ftype_kv.value)
        if file_type is None and quant:
            file_type = max(quant.items(), key=lambda kv: kv[1])[0]
        return GGUFSummary(
            version=self.version,
            architecture=arch_name,
            name=name.value if name is not None and name.type == STRING else None,
            parameters=sum(t.n_elements for t in self.tensors),
            quantization=dict(sorted(quant.items(), key=lambda kv: -kv[1])),
            file_type=file_type,
            context_length=ctx.value if ctx is not None and ctx.type in INTEGER_TYPES else None,
            vocab_size=vocab,
            chat_template="tokenizer.chat_template" in self.kv,
            tensor_count=len(self.tensors),
            kv_count=len(self.kv),
            alignment=self.alignment,
            data_offset=self.data_offset - self.offset,
            file_size=self.length,
        )

    def close(self) -> None:
        buf, self._buf = self._buf, None
        if isinstance(buf, mmap.mmap):
            buf.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RawTensor(NamedTuple):
    """A tensor info as read, before its offset is checked against the layout and the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_elements: int
    n_bytes: int
    info_offset: int
    offset_field_offset: int


class _Parser:
    """Walks ``buf[start:end]``; every read is checked against ``end`` first."""

    def __init__(self, buf: Any, start: int, end: int) -> None:
        self.buf = buf
        self.start = start
        self.end = end
        self.pos = start

    def fail(self, code: str, detail: str, field: str, offset: int | None = None) -> GGUFError:
        return GGUFError(code, detail, field=field, offset=self.pos if offset is None else offset)

    def need(self, n: int, field: str) -> None:
        remain = self.end - self.pos
        if n > remain:
            raise self.fail(
                "truncated", f"needs {n} bytes but only {remain} remain before the end of the file", field
            )

    def u32(self, field: str) -> int:
        self.need(4, field)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self, field: str) -> int:
        self.need(8, field)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def raw_string(self, field: str, max_len: int = MAX_STRING_LENGTH) -> bytes:
        at = self.pos
        n = self.u64(field + ".length")
        if n > max_len:
            raise self.fail(
                "string_too_long", f"string length {n} exceeds the limit of {max_len} bytes", field, at
            )
        remain = self.end - self.pos
        if n > remain:
            raise self.fail(
                "truncated",
                f"string of {n} bytes but only {remain} remain before the end of the file",
                field,
                at,
            )
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def text(self, field: str, max_len: int = MAX_STRING_LENGTH) -> str:
        at = self.pos
        data = self.raw_string(field, max_len)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(
                "invalid_utf8", f"string is not valid UTF-8 ({e.reason} at index {e.start})", field, at
            ) from None

    # -- metadata ---------------------------------------------------------------------------------

    def value(self, vtype: int, field: str) -> Any:
        if vtype == STRING:
            return self.text(field)
        if vtype == ARRAY:
            return self.array(field)
        st = _SCALAR_STRUCT[vtype]
        self.need(st.size, field)
        v = st.unpack_from(self.buf, self.pos)[0]
        if vtype == BOOL:
            if v > 1:
                raise self.fail("bad_bool", f"boolean value is {v}, must be 0 or 1", field)
            v = bool(v)
        self.pos += st.size
        return v

    def array(self, field: str) -> ArrayValue:
        at_type = self.pos
        etype = self.u32(field + ".type")
        if etype == ARRAY:
            raise self.fail(
                "nested_array",
                "arrays of arrays are not accepted (llama.cpp rejects them)",
                field + ".type",
                at_type,
            )
        if etype not in VALUE_TYPE_NAMES:
            raise self.fail(
                "bad_array_type",
                f"array element type {etype} is not a GGUF type (0..12)",
                field + ".type",
                at_type,
            )
        at_count = self.pos
        count = self.u64(field + ".count")
        if count > MAX_ARRAY_ELEMENTS:
            raise self.fail(
                "count_too_large",
                f"array of {count} elements exceeds the limit of {MAX_ARRAY_ELEMENTS}",
                field + ".count",
                at_count,
            )
        remain = self.end - self.pos
        start = self.pos
        if etype == STRING:
            if count * 8 > remain:
                raise self.fail(
                    "truncated",
                    f"array of {count} strings needs at least {count * 8} bytes but only {remain} remain",
                    field + ".count",
                    at_count,
                )
            self.pos = self._walk_strings(count, field)
        else:
            size = _SCALAR_STRUCT[etype].size
            if count * size > remain:
                raise self.fail(
                    "truncated",
                    f"array of {count} {VALUE_TYPE_NAMES[etype]} needs {count * size} bytes but only {remain} remain",
                    field + ".count",
                    at_count,
                )
            self.pos += count * size
            if etype == BOOL and bytes(self.buf[start : self.pos]).translate(None, b"\x00\x01"):
                raise self.fail("bad_bool", "boolean array holds a value other than 0 or 1", field, start)
        return ArrayValue(etype, count, start, self.pos, self.buf)

    def _walk_strings(self, count: int, field: str) -> int:
        """Step over ``count`` strings; the hottest loop (a vocabulary is ~100k strings), kept minimal.

        ``pos`` only grows, so one comparison with ``end`` per string bounds every length;
        a length read from past ``end`` only ever moves ``pos`` further past it.
        """
        buf, end, pos = self.buf, self.end, self.pos
        unpack = _U64.unpack_from
        if end - pos <= MAX_STRING_LENGTH:  # no string can reach the limit: skip that test
            try:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
                    if pos > end:
                        break
                else:
                    return pos
            except struct.error:  # fewer than 8 bytes left in the buffer itself
                pass
        # Slow path: a string is bad (or the file is over 1 GiB); walk again, naming the culprit.
        pos = self.pos
        for i in range(count):
            if end - pos < 8:
                raise self.fail(
                    "truncated",
                    f"string {i} of {count}: its length runs past the end of the file",
                    f"{field}[{i}]",
                    pos,
                )
            n = unpack(buf, pos)[0]
            if n > MAX_STRING_LENGTH:
                raise self.fail(
                    "string_too_long",
                    f"string {i} of {count} declares {n} bytes, over the 1 GiB limit",
                    f"{field}[{i}]",
                    pos,
                )
            if n > end - pos - 8:
                raise self.fail(
                    "truncated",
                    f"string {i} of {count} declares {n} bytes, more than remain in the file",
                    f"{field}[{i}]",
                    pos,
                )
            pos += 8 + n
        return pos

    # -- the whole file ---------------------------------------------------------------------------

    def parse(self) -> GGUFFile:
        total = self.end - self.start
        if total == 0:
            raise self.fail("empty", "the file is empty", "header.magic")
        self.need(4, "header.magic")
        magic = bytes(self.buf[self.pos : self.pos + 4])
        if magic != GGUF_MAGIC:
            raise self.fail(
                "bad_magic", f"magic is {magic!r}, expected b'GGUF' (is this a GGUF file?)", "header.magic"
            )
        self.pos += 4
        at = self.pos
        version = self.u32("header.version")
        if version & 0xFFFF == 0:
            raise self.fail(
                "bad_version",
                f"version {version:#x} looks byte-swapped; big-endian GGUF files are not supported",
                "header.version",
                at,
            )
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(
                "bad_version", f"GGUF version {version} is not supported (only 2 and 3)", "header.version", at
            )
        at_nt = self.pos
        n_tensors = self.u64("header.tensor_count")
        at_nkv = self.pos
        n_kv = self.u64("header.kv_count")
        remain = self.end - self.pos
        if n_tensors * MIN_TENSOR_INFO_BYTES > remain:
            raise self.fail(
                "count_too_large",
                f"{n_tensors} tensors cannot fit in the {remain} bytes that remain",
                "header.tensor_count",
                at_nt,
            )
        if n_kv * MIN_KV_BYTES > remain:
            raise self.fail(
                "count_too_large",
                f"{n_kv} key-value pairs cannot fit in the {remain} bytes that remain",
                "header.kv_count",
                at_nkv,
            )
        if n_tensors * MIN_TENSOR_INFO_BYTES + n_kv * MIN_KV_BYTES > remain:
            raise self.fail(
                "count_too_large",
                f"{n_kv} key-value pairs and {n_tensors} tensors cannot fit in the {remain} bytes that remain",
                "header.kv_count",
                at_nkv,
            )

        kvs = self.key_values(n_kv)
        alignment = self.alignment(kvs)
        tensors_raw = self.tensor_infos(n_tensors)
        header_end = self.pos

        data_offset = header_end
        if n_tensors > 0:
            data_offset = self.start + _pad(header_end - self.start, alignment)
        # Layout first (offsets, sizes), so a bad offset is named as such even when data is missing too.
        data_size = self.check_layout(tensors_raw, alignment)
        if n_tensors > 0:
            if data_offset > self.end:
                raise self.fail(
                    "missing_data", "the file ends before the data section starts", "data_section", header_end
                )
            if bytes(self.buf[header_end:data_offset]).strip(b"\0"):
                raise self.fail(
                    "padding_not_zero",
                    "padding before the data section holds non-zero bytes",
                    "data_section.padding",
                    header_end,
                )
        tensors = self.place_tensors(tensors_raw, data_offset, data_size)
        gf = GGUFFile(
            path=None,
            offset=self.start,
            length=total,
            version=version,
            alignment=alignment,
            kv=kvs,
            tensors=tensors,
            header_size=header_end - self.start,
            data_offset=data_offset,
            data_size=data_size,
            _buf=self.buf,
        )
        check_semantics(gf)
        return gf

    def key_values(self, n_kv: int) -> dict[str, KeyValue]:
        kvs: dict[str, KeyValue] = {}
        for i in range(n_kv):
            at = self.pos
            key = self.text(f"kv[{i}].key", MAX_KEY_LENGTH)
            if not key:
                raise self.fail("empty_key", f"key-value pair {i} has an empty key", f"kv[{i}].key", at)
            fname = f"kv[{i}] {_short(key)}"
            if key in kvs:
                raise self.fail(
                    "duplicate_key",
                    f"key {_short(key)} appears twice (first at byte {kvs[key].offset})",
                    fname,
                    at,
                )
            at_type = self.pos
            vtype = self.u32(fname + ".type")
            if vtype not in VALUE_TYPE_NAMES:
                raise self.fail(
                    "bad_value_type",
                    f"value type {vtype} is not a GGUF type (0..12)",
                    fname + ".type",
                    at_type,
                )
            kvs[key] = KeyValue(key, vtype, self.value(vtype, fname + ".value"), at)
        return kvs

    def alignment(self, kvs: dict[str, KeyValue]) -> int:
        kv = kvs.get("general.alignment")
        if kv is None:
            return DEFAULT_ALIGNMENT
        if kv.type != UINT32:
            raise self.fail(
                "alignment_type",
                f"general.alignment must be UINT32 but is {kv.type_name}",
                "general.alignment",
                kv.offset,
            )
        a = kv.value
        if a == 0 or a & (a - 1) or a > MAX_ALIGNMENT:
            raise self.fail(
                "bad_alignment",
                f"general.alignment is {a}, must be a power of two from 1 to {MAX_ALIGNMENT}",
                "general.alignment",
                kv.offset,
            )
        return a

    def tensor_infos(self, n_tensors: int) -> list[_RawTensor]:
        out: list[_RawTensor] = []
        seen: dict[str, int] = {}
        for i in range(n_tensors):
            at = self.pos
            base = f"tensor_info[{i}]"
            name = self.text(base + ".name", MAX_STRING_LENGTH)
            if not name:
                raise self.fail("empty_tensor_name", f"tensor {i} has an empty name", base + ".name", at)
            if len(name.encode()) > MAX_TENSOR_NAME:
                raise self.fail(
                    "tensor_name_too_long",
                    f"tensor name {name[:80]!r} is {len(name.encode())} bytes, at most {MAX_TENSOR_NAME} are allowed",
                    base + ".name",
                    at,
                )
            if name in seen:
                raise self.fail(
                    "duplicate_tensor",
                    f"tensor name {name!r} appears twice (first at byte {seen[name]})",
                    base + ".name",
                    at,
                )
            seen[name] = at
            base = f"tensor {name!r}"
            at_nd = self.pos
            n_dims = self.u32(base + ".n_dims")
            if n_dims > MAX_DIMS:
                raise self.fail(
                    "bad_n_dims",
                    f"{n_dims} dimensions, at most {MAX_DIMS} are allowed",
                    base + ".n_dims",
                    at_nd,
                )
            shape = []
            n_elements = 1
            for d in range(n_dims):
                at_d = self.pos
                ne = self.u64(f"{base}.ne[{d}]")
                if ne > INT64_MAX:
                    raise self.fail(
                        "bad_dimension",
                        f"dimension {d} is negative ({ne - (1 << 64)})",
                        f"{base}.ne[{d}]",
                        at_d,
                    )
                if ne == 0:
                    raise self.fail(
                        "zero_dimension",
                        f"dimension {d} is 0; tensors must have at least one element",
                        f"{base}.ne[{d}]",
                        at_d,
                    )
                n_elements *= ne
                if n_elements > INT64_MAX:
                    raise self.fail(
                        "element_overflow",
                        f"element count {n_elements} (so far) exceeds INT64_MAX",
                        f"{base}.ne[{d}]",
                        at_d,
                    )
                shape.append(ne)
            at_t = self.pos
            type_id = self.u32(base + ".type")
            gt = ggml_type(type_id)
            if gt is None:
                raise self.fail(
                    "bad_ggml_type",
                    f"ggml type {type_id} is unknown to the pinned llama.cpp",
                    base + ".type",
                    at_t,
                )
            if gt.removed:
                raise self.fail(
                    "removed_ggml_type",
                    f"ggml type {type_id} ({gt.name}) was removed from llama.cpp",
                    base + ".type",
                    at_t,
                )
            ne0 = shape[0] if shape else 1
            if ne0 % gt.block_size:
                raise self.fail(
                    "row_not_block_multiple",
                    f"row length {ne0} is not a multiple of the {gt.name} block size {gt.block_size}",
                    f"{base}.ne[0]",
                    at_nd + 4,
                )
            n_bytes = (n_elements // gt.block_size) * gt.type_size
            if n_bytes > SIZE_MAX:
                raise self.fail(
                    "size_overflow", f"{n_bytes} bytes exceeds the largest size_t", base + ".type", at_t
                )
            at_off = self.pos
            offset = self.u64(base + ".offset")
            out.append(_RawTensor(name, tuple(shape), type_id, offset, n_elements, n_bytes, at, at_off))
        return out

    def check_layout(self, raw: list[_RawTensor], alignment: int) -> int:
        """Each tensor must start where the previous one's padded bytes end, as gguf.cpp demands.

        That one rule rules out misalignment, overlaps and gaps; each gets its own code.
        Returns the size of the data section.
        """
        expected = 0
        previous = None
        for t in raw:
            name, offset, n_bytes, at_off = t.name, t.offset, t.n_bytes, t.offset_field_offset
            f = f"tensor {name!r}.offset"
            if offset % alignment:
                raise self.fail(
                    "tensor_misaligned",
                    f"offset {offset} is not a multiple of the alignment {alignment}",
                    f,
                    at_off,
                )
            if offset < expected:
                raise self.fail(
                    "tensor_overlap",
                    f"offset {offset} overlaps tensor {previous!r}, which ends at {expected}",
                    f,
                    at_off,
                )
            if offset > expected:
                raise self.fail(
                    "tensor_gap",
                    f"offset {offset} leaves a gap after the previous tensor; expected {expected}",
                    f,
                    at_off,
                )
            padded = _pad(n_bytes, alignment)
            if expected + padded > SIZE_MAX:
                raise self.fail(
                    "size_overflow",
                    f"data section size {expected + padded} exceeds the largest size_t",
                    f,
                    at_off,
                )
            expected += padded
            previous = name
        return expected

    def place_tensors(self, raw: list[_RawTensor], data_offset: int, data_size: int) -> list[TensorInfo]:
        """Every tensor's bytes, and the whole data section, must lie inside the file."""
        tensors: list[TensorInfo] = []
        for name, shape, type_id, offset, n_elements, n_bytes, at, at_off in raw:
            start = data_offset + offset
            if n_bytes > self.end - start:
                raise self.fail(
                    "tensor_out_of_bounds",
                    f"tensor's {n_bytes} bytes run {start + n_bytes - self.end} bytes past the end of the file",
                    f"tensor {name!r}.offset",
                    at_off,
                )
            tensors.append(
                TensorInfo(name, shape, type_id, _type_name(type_id), offset, n_elements, n_bytes, at, start)
            )
        if data_size > self.end - data_offset:
            raise self.fail(
                "data_truncated",
                f"the data section needs {data_size} bytes but only {self.end - data_offset} remain",
                "data_section",
                data_offset,
            )
        return tensors


def _short(text: str, limit: int = 80) -> str:
    """A key or name fit for a one-line message: quoted, escaped, cut to ``limit`` characters."""
    r = repr(text[:limit])
    return r + "…" if len(text) > limit else r


def _type_name(type_id: int) -> str:
    gt = ggml_type(type_id)
    return gt.name if gt is not None else str(type_id)


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


# -- checks llama.cpp only makes when it loads the model ----------------------------------------------


def check_semantics(gf: GGUFFile) -> None:
    """Tokenizer arrays and hyperparameters that llama.cpp indexes without checking."""
    kv = gf.kv

    def fail(code: str, detail: str, item: KeyValue) -> GGUFError:
        return GGUFError(code, detail, field=item.key, offset=item.offset)

    def array_of(key: str, *elems: int) -> ArrayValue | None:
        item = kv.get(key)
        if item is None:
            return None
        if not isinstance(item.value, ArrayValue) or item.value.elem_type not in elems:
            want = " or ".join(f"ARRAY[{VALUE_TYPE_NAMES[e]}]" for e in elems)
            raise fail("tokenizer_type", f"must be {want} but is {item.type_name}", item)
        return item.value

    tokens = array_of("tokenizer.ggml.tokens", STRING)
    n_vocab = tokens.count if tokens is not None else None
    # llama-vocab.cpp casts these arrays to float*/int* by their declared type: it reads scores
    # as FLOAT32 or INT32 and token types as INT32 only, n_tokens of each.
    for key, elems in (("tokenizer.ggml.scores", (FLOAT32, INT32)), ("tokenizer.ggml.token_type", (INT32,))):
        arr = array_of(key, *elems)
        if arr is not None and arr.count != n_vocab:
            raise fail(
                "tokenizer_length",
                f"has {arr.count} entries but tokenizer.ggml.tokens has {n_vocab}",
                kv[key],
            )
    array_of("tokenizer.ggml.merges", STRING)
    if tokens is not None and "tokenizer.ggml.token_type" in kv:
        _check_byte_tokens(tokens, kv["tokenizer.ggml.token_type"])
    for key, item in kv.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if item.type not in INTEGER_TYPES:
                raise fail("token_id_type", f"must be an integer but is {item.type_name}", item)
            if n_vocab is None:
                raise fail(
                    "token_id_range",
                    f"token id {item.value} given but the file has no tokenizer.ggml.tokens",
                    item,
                )
            if not 0 <= item.value < n_vocab:
                raise fail(
                    "token_id_range",
                    f"token id {item.value} is outside the vocabulary of {n_vocab} tokens",
                    item,
                )
    arch = kv.get("general.architecture")
    if arch is not None and arch.type != STRING:
        raise fail("bad_metadata_type", f"must be STRING but is {arch.type_name}", arch)
    if arch is not None:
        blocks = kv.get(f"{arch.value}.block_count")
        if blocks is not None:
            if blocks.type not in INTEGER_TYPES:
                raise fail("bad_metadata_type", f"must be an integer but is {blocks.type_name}", blocks)
            if not 0 < blocks.value <= MAX_LAYERS:
                raise fail("bad_hparam", f"block_count {blocks.value} must be from 1 to {MAX_LAYERS}", blocks)
        for suffix in ("attention.head_count", "attention.head_count_kv"):
            item = kv.get(f"{arch.value}.{suffix}")
            if item is None:
                continue
            values = item.value.to_list() if isinstance(item.value, ArrayValue) else [item.value]
            elem = item.value.elem_type if isinstance(item.value, ArrayValue) else item.type
            if elem not in INTEGER_TYPES:
                raise fail(
                    "bad_metadata_type",
                    f"must be an integer (or integer array) but is {item.type_name}",
                    item,
                )
            if suffix == "attention.head_count" and any(v <= 0 for v in values):
                raise fail("bad_hparam", "head_count must be positive", item)
            if any(v < 0 for v in values):
                raise fail("bad_hparam", "head_count_kv must not be negative", item)
        ctx = kv.get(f"{arch.value}.context_length")
        if ctx is not None and (ctx.type not in INTEGER_TYPES or ctx.value <= 0):
            raise fail("bad_hparam", "context_length must be a positive integer", ctx)


TOKEN_TYPE_BYTE = 6  # llama_token_type LLAMA_TOKEN_TYPE_BYTE
_BYTE_TOKEN = re.compile(rb"<0x[0-9A-Fa-f]{2}>")


def _check_byte_tokens(tokens: ArrayValue, types_kv: KeyValue) -> None:
    """Byte tokens must read ``<0xNN>``: llama-vocab.cpp parses their text with substr/strtol (PR #25969)."""
    types = array.array("i")
    if types.itemsize != 4:  # pragma: no cover - every platform DX targets has a 4-byte int
        return
    types.frombytes(bytes(tokens._buf[types_kv.value.start : types_kv.value.end]))
    if sys.byteorder != "little":  # pragma: no cover
        types.byteswap()
    if TOKEN_TYPE_BYTE not in types:
        return
    wanted = {i for i, t in enumerate(types) if t == TOKEN_TYPE_BYTE}
    last = max(wanted)
    buf, pos = tokens._buf, tokens.start
    for i in range(last + 1):
        n = _U64.unpack_from(buf, pos)[0]
        if i in wanted:
            text = bytes(buf[pos + 8 : pos + 8 + n])
            if not _BYTE_TOKEN.fullmatch(text):
                raise GGUFError(
                    "bad_byte_token",
                    f"token {i} has type BYTE but its text {text[:20]!r} is not <0xNN>",
                    field=f"tokenizer.ggml.tokens[{i}]",
                    offset=pos,
                )
        pos += 8 + n


# -- entry points ----------------------------------------------------------------------------------------


def read_gguf_buffer(data: Any, offset: int = 0, length: int | None = None) -> GGUFFile:
    """Check a GGUF held in memory (bytes, bytearray, mmap) at ``data[offset:offset+length]``."""
    size = len(data)
    end = size if length is None else offset + length
    if offset < 0 or end > size or end < offset:
        raise GGUFError(
            "region_out_of_file",
            f"region [{offset}, {end}) is outside the {size}-byte input",
            field="region",
            offset=offset,
        )
    return _Parser(data, offset, end).parse()


def read_gguf(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> GGUFFile:
    """Open and check the GGUF at ``path`` (or embedded at ``offset`` for ``length`` bytes).

    Raises GGUFError (a MalformedInputError) naming the field and byte offset of the
    first problem. The returned GGUFFile keeps a read-only mapping; ``close()`` it or
    use it as a context manager.
    """
    p = os.fspath(path)

    def err(code: str, detail: str) -> GGUFError:
        return GGUFError(
            code, detail, field="file", offset=offset, path=p, hint="check the path and its permissions"
        )

    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise err("not_found", "no such file") from None
    except OSError as e:
        raise err("unreadable", f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise err("not_a_file", "is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise err("not_a_file", "is not a regular file")
    size = st.st_size
    end = size if length is None else offset + length
    if offset < 0 or (length is not None and length < 0) or end > size:
        raise err("region_out_of_file", f"embedded region [{offset}, {end}) is outside the {size}-byte file")
    if end == offset:
        raise GGUFError("empty", "the file is empty (0 bytes)", field="header.magic", offset=offset, path=p)
    try:
        with open(p, "rb") as fh:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise err("unreadable", f"cannot read: {e.strerror or e}") from None
    except ValueError as e:  # mmap of a file that shrank to 0 bytes
        raise err("unreadable", f"cannot map: {e}") from None
    try:
        if len(buf) < end:
            raise err("truncated", "the file shrank while it was being read")
        gf = _Parser(buf, offset, end).parse()
    except GGUFError as e:
        buf.close()
        raise e.with_path(p) from None
    except BaseException:
        buf.close()
        raise
    gf.path = p
    return gf


def validate(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> GGUFSummary:
    """Check the file and return its summary, releasing the mapping."""
    with read_gguf(path, offset, length) as gf:
        return gf.summary()


def format_summary(s: GGUFSummary, path: str | Path | None = None) -> str:
    """A human summary, a few lines, for `dx inspect` and `dx verify`."""
    lines = []
    if path is not None:
        lines.append(f"file:           {path}")
    lines += [
        f"format:         GGUF v{s.version}, {s.kv_count} keys, {s.tensor_count} tensors, alignment {s.alignment}",
        f"architecture:   {s.architecture or '-'}",
        f"name:           {s.name or '-'}",
        f"parameters:     {s.parameters:,} ({parameter_size(s.parameters)})",
        f"context length: {s.context_length if s.context_length is not None else '-'}",
        f"vocabulary:     {s.vocab_size if s.vocab_size is not None else '-'}",
        f"chat template:  {'yes' if s.chat_template else 'no'}",
        f"file size:      {s.file_size:,} bytes (data section at byte {s.data_offset:,})",
    ]
    total = sum(s.quantization.values()) or 1
    mix = ", ".join(f"{name} {n / total:.1%} ({_human_bytes(n)})" for name, n in s.quantization.items())
    lines.append(f"quantization:   {mix or '-'}")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    if n <= 0:
        return "0 B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**exp:.1f} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[exp]}"
