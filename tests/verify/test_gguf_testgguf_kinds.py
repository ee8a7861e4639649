"""Every corrupt file kind llama.cpp's tests/test-gguf.cpp builds, rebuilt here: DX must reject them all.

The kinds and their parameters follow test-gguf.cpp of the pinned commit
(HANDCRAFTED_*). Where DX is deliberately stricter than gguf.cpp (zero-sized
dimensions, a tensor table with no data section) the test says so.
"""

from __future__ import annotations

import random

import pytest
from support.gguf_handcraft import (
    ARR,
    BOOL,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    STR,
    U8,
    U16,
    U32,
    U64,
    GGUFCraft,
    Tensor,
)

from dxverify.ggml_types import GGML_TYPE_COUNT, GGML_TYPES
from dxverify.gguf import GGUFError, read_gguf_buffer

SIZES = {t.id: (t.block_size, t.type_size) for t in GGML_TYPES.values() if not t.removed}
SCALARS = {
    U8: 7,
    I8: -7,
    U16: 700,
    I16: -700,
    U32: 70000,
    I32: -70000,
    F32: 1.5,
    BOOL: 1,
    U64: 2**40,
    I64: -(2**40),
    F64: 2.25,
}


def random_kvs(rng: random.Random) -> list[tuple[str, int, object]]:
    kvs: list[tuple[str, int, object]] = []
    for i in range(rng.randint(1, 30)):
        t = rng.choice([*SCALARS, STR, ARR])
        if t == STR:
            v: object = "x" * rng.randint(0, 20)
        elif t == ARR:
            et = rng.choice([*SCALARS, STR])
            n = rng.randint(0, 10)
            v = (et, ["s" * rng.randint(0, 5) for _ in range(n)] if et == STR else [SCALARS[et]] * n)
        else:
            v = SCALARS[t]
        kvs.append((f"my_key_{i}", t, v))
    return kvs


def random_tensors(rng: random.Random) -> list[Tensor]:
    out = []
    for i in range(rng.randint(1, 8)):
        tid = rng.choice(sorted(SIZES))
        blck = SIZES[tid][0]
        n_dims = rng.randint(1, 4)
        shape = [blck * rng.randint(1, 3)] + [rng.randint(1, 3) for _ in range(n_dims - 1)]
        out.append(Tensor(f"my_tensor_{i}", shape, tid))
    return out


def craft(kind: str, seed: int) -> bytes:
    rng = random.Random(seed)
    c = GGUFCraft()
    header_only = kind.startswith("HEADER")
    kv_only = kind.startswith("KV")
    if not header_only:
        c.kvs = random_kvs(rng)
    if not header_only and not kv_only:
        c.tensors = random_tensors(rng)
    if kind == "HEADER_BAD_MAGIC":
        c.magic = b"FUGG"
    elif kind.startswith("HEADER_BAD_VERSION_"):
        c.version = {"0": 0, "1": 1, "FUTURE": 4}[kind.rsplit("_", 1)[1]]
    elif kind == "HEADER_BAD_N_TENSORS":
        c.n_tensors = 2**64 - 1
    elif kind == "HEADER_BAD_N_KV":
        c.n_kv = 2**64 - 1
    elif kind == "KV_BAD_KEY_SIZE":
        data = c.build(SIZES).data
        # key length of the first KV set to u64 -1 (it sits right after the 24-byte header)
        return data[:24] + (2**64 - 1).to_bytes(8, "little") + data[32:]
    elif kind == "KV_EMPTY_KEY":
        c.kvs[0] = ("", *c.kvs[0][1:])
    elif kind == "KV_BAD_TYPE":
        c.kvs[0] = (c.kvs[0][0], 13, 0)  # unknown type 13 followed by one byte
    elif kind == "KV_DUPLICATE_KEY":
        c.kvs = [(f"my_key_{i // 2}", t, v) for i, (_, t, v) in enumerate(c.kvs + c.kvs[:1])]
    elif kind in ("KV_BAD_ALIGN", "TENSORS_BAD_ALIGN", "DATA_BAD_ALIGN"):
        c.kvs.append(("general.alignment", U32, 13))
    elif kind == "KV_WRONG_TYPE_ALIGN":
        c.kvs.append(("general.alignment", I32, 1))
    elif kind in ("TENSORS_CUSTOM_ALIGN", "DATA_CUSTOM_ALIGN"):
        c.kvs.append(("general.alignment", U32, 1))
        c.alignment = 1
    elif kind == "TENSORS_BAD_NAME_SIZE":
        c.tensors[0].name += "_with_a_very_long_name_which_is_longer_than_what_is_allowed_for_ggml_tensors"
    elif kind == "TENSORS_BAD_N_DIMS":
        c.tensors[0].n_dims = 5
        c.tensors[0].shape = [SIZES[c.tensors[0].ggml_type][0], 1, 1, 1, 1]
    elif kind == "TENSORS_BAD_SHAPE":
        c.tensors[0].shape = [-1] * len(c.tensors[0].shape)
    elif kind == "TENSORS_ZERO_DIM":
        c.tensors[0].shape = [c.tensors[0].shape[0], 0]
    elif kind == "TENSORS_NE_TOO_BIG":
        c.tensors[0] = Tensor(c.tensors[0].name, [4 * (2**31 - 1)] * 2, 0)
    elif kind == "TENSORS_NBYTES_TOO_BIG":
        big_ne = (2**64 - 1) // 8
        big_dim = int(1.01 * big_ne**0.5) + 1
        c.tensors[0] = Tensor(c.tensors[0].name, [big_dim, big_dim], 27)  # I64
    elif kind == "TENSORS_NBYTES_PAD_WRAP":
        c.tensors = [Tensor("my_tensor_0", [4, 2**30 - 1, 2**30 + 1, 1], 0)]
    elif kind == "TENSORS_BAD_TYPE":
        c.tensors[0].ggml_type = GGML_TYPE_COUNT
    elif kind == "TENSORS_BAD_OFFSET":
        c.tensors[0].offset = 2**64 - 1
    elif kind == "TENSORS_DUPLICATE_NAME":
        for t in c.tensors:
            t.name = "my_tensor"
        if len(c.tensors) == 1:
            c.tensors.append(Tensor("my_tensor", [1], 0))
    elif kind in ("TENSORS_INCONSISTENT_ALIGN", "DATA_INCONSISTENT_ALIGN"):
        # offsets computed for alignment 1 while the file declares the default 32
        off = 0
        for t in c.tensors:
            t.offset = off
            blck, size = SIZES[t.ggml_type]
            n = 1
            for d in t.shape:
                n *= d
            off += n // blck * size
        if len(c.tensors) == 1 or all(t.offset % 32 == 0 for t in c.tensors):
            c.tensors.append(Tensor("odd", [3], 24))
            c.tensors.append(Tensor("after_odd", [1], 0, offset=off + 3))
    elif kind == "DATA_MEM_SIZE_OVERFLOW":
        c.tensors = [Tensor("a", [0x7FFFFFFFFFFFFFC0], 24), Tensor("b", [0x7FFFFFFFFFFFFFC0], 24)]
        c.data_bytes = 32
    if kind.startswith("TENSORS_"):
        c.data_bytes = 0  # test-gguf writes no data section for these kinds
    data = c.build(SIZES)
    if kind.startswith("TENSORS_"):
        # test-gguf writes no data section for the TENSORS_* kinds
        return data.data[: data.fields["header_pad"][0]] if "header_pad" in data.fields else data.data
    if kind == "DATA_NOT_ENOUGH_DATA":
        return data.data[:-1]
    return data.data


REJECTED = {
    "HEADER_BAD_MAGIC": {"bad_magic"},
    "HEADER_BAD_VERSION_0": {"bad_version"},
    "HEADER_BAD_VERSION_1": {"bad_version"},
    "HEADER_BAD_VERSION_FUTURE": {"bad_version"},
    "HEADER_BAD_N_TENSORS": {"count_too_large"},
    "HEADER_BAD_N_KV": {"count_too_large"},
    "KV_BAD_KEY_SIZE": {"string_too_long"},
    "KV_EMPTY_KEY": {"empty_key"},
    "KV_BAD_TYPE": {"bad_value_type"},
    "KV_DUPLICATE_KEY": {"duplicate_key"},
    "KV_BAD_ALIGN": {"bad_alignment"},
    "KV_WRONG_TYPE_ALIGN": {"alignment_type"},
    "TENSORS_BAD_NAME_SIZE": {"tensor_name_too_long"},
    "TENSORS_BAD_N_DIMS": {"bad_n_dims"},
    "TENSORS_BAD_SHAPE": {"bad_dimension"},
    "TENSORS_NE_TOO_BIG": {"element_overflow"},
    "TENSORS_NBYTES_TOO_BIG": {"size_overflow"},
    "TENSORS_NBYTES_PAD_WRAP": {"size_overflow"},
    "TENSORS_BAD_TYPE": {"bad_ggml_type"},
    "TENSORS_BAD_OFFSET": {"tensor_misaligned"},
    "TENSORS_DUPLICATE_NAME": {"duplicate_tensor"},
    "TENSORS_BAD_ALIGN": {"bad_alignment"},
    "TENSORS_INCONSISTENT_ALIGN": {"tensor_misaligned"},
    "DATA_NOT_ENOUGH_DATA": {"data_truncated", "tensor_out_of_bounds"},
    "DATA_BAD_ALIGN": {"bad_alignment"},
    "DATA_INCONSISTENT_ALIGN": {"tensor_misaligned"},
    "DATA_MEM_SIZE_OVERFLOW": {"tensor_out_of_bounds"},
    # gguf.cpp accepts these; DX rejects them on purpose:
    "TENSORS_ZERO_DIM": {"zero_dimension"},  # the issue asks for positive dimensions
    "TENSORS_SUCCESS": {"missing_data", "data_truncated", "tensor_out_of_bounds"},  # tensors without data
    "TENSORS_CUSTOM_ALIGN": {"missing_data", "data_truncated", "tensor_out_of_bounds"},
}
ACCEPTED = ["HEADER_EMPTY", "KV_SUCCESS", "DATA_SUCCESS", "DATA_CUSTOM_ALIGN"]
SEEDS = range(20)


@pytest.mark.parametrize("kind", sorted(REJECTED))
@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_kind_is_rejected_with_its_code(kind: str, seed: int) -> None:
    data = craft(kind, seed)
    with pytest.raises(GGUFError) as exc:
        read_gguf_buffer(data)
    err = exc.value
    assert err.code in REJECTED[kind], f"{kind}: got {err.code}: {err}"
    assert 0 <= err.offset <= len(data)
    assert "\n" not in str(err) and err.field


@pytest.mark.parametrize("kind", ACCEPTED)
@pytest.mark.parametrize("seed", SEEDS)
def test_success_kind_is_accepted(kind: str, seed: int) -> None:
    data = craft(kind, seed)
    gf = read_gguf_buffer(data)
    rng = random.Random(seed)
    n_kv = 0 if kind.startswith("HEADER") else len(random_kvs(rng))
    assert len(gf.kv) == n_kv + (1 if kind.endswith("CUSTOM_ALIGN") else 0)
    if kind.startswith("DATA"):
        assert len(gf.tensors) == len(random_tensors(rng))
        assert gf.data_offset + gf.data_size <= len(data)


def test_header_empty_is_exactly_the_header() -> None:
    gf = read_gguf_buffer(craft("HEADER_EMPTY", 0))
    assert gf.kv == {} and gf.tensors == [] and gf.version == 3
