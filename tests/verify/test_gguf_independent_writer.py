"""Files written by an independent writer (gguf-py's GGUFWriter) are accepted, and agree with gguf-py.

Hypothesis draws metadata of every GGUF value type (arrays of every element
type included) and tensors of plain and quantized ggml types; the reader's
keys, values, tensor shapes, types, sizes and offsets must match
``gguf.GGUFReader`` on the same file.
"""

from __future__ import annotations

import math
import string
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dxverify.ggml_types import GGML_TYPES
from dxverify.gguf import ArrayValue, read_gguf

VT = gguf.GGUFValueType
INT_RANGES = {
    VT.UINT8: (0, 2**8 - 1), VT.INT8: (-(2**7), 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
    VT.INT16: (-(2**15), 2**15 - 1), VT.UINT32: (0, 2**32 - 1), VT.INT32: (-(2**31), 2**31 - 1),
    VT.UINT64: (0, 2**64 - 1), VT.INT64: (-(2**63), 2**63 - 1),
}  # fmt: skip
KEY = st.text(alphabet=string.ascii_lowercase + "._", min_size=1, max_size=24).filter(
    lambda k: not k.startswith(("general.", "tokenizer.")) and k != "."
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def scalar(vt: VT) -> st.SearchStrategy[Any]:
    if vt in INT_RANGES:
        lo, hi = INT_RANGES[vt]
        return st.integers(lo, hi)
    if vt == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vt == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vt == VT.BOOL:
        return st.booleans()
    return TEXT


SCALAR_TYPES = [*INT_RANGES, VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]


@st.composite
def key_value(draw: st.DrawFn) -> tuple[VT, VT | None, Any]:
    if draw(st.booleans()):
        vt = draw(st.sampled_from(SCALAR_TYPES))
        return vt, None, draw(scalar(vt))
    et = draw(st.sampled_from(SCALAR_TYPES))
    return (
        VT.ARRAY,
        et,
        draw(st.lists(scalar(et), min_size=1, max_size=12)),
    )  # GGUFWriter refuses empty arrays


PLAIN = {np.float32: gguf.GGMLQuantizationType.F32, np.float16: gguf.GGMLQuantizationType.F16,
         np.int8: gguf.GGMLQuantizationType.I8, np.int16: gguf.GGMLQuantizationType.I16,
         np.int32: gguf.GGMLQuantizationType.I32, np.int64: gguf.GGMLQuantizationType.I64,
         np.float64: gguf.GGMLQuantizationType.F64}  # fmt: skip
QUANT = [
    gguf.GGMLQuantizationType[n] for n in ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ4_NL", "BF16", "TQ2_0")
]


@st.composite
def tensor(draw: st.DrawFn) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    n_dims = draw(st.integers(1, 4))
    outer = [draw(st.integers(1, 3)) for _ in range(n_dims - 1)]
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(sorted(PLAIN, key=str)))
        shape = [*outer, draw(st.integers(1, 9))]  # numpy order: innermost last
        return np.zeros(shape, dtype=dtype) + 1, None
    qt = draw(st.sampled_from(QUANT))
    blck, size = GGML_TYPES[int(qt)].block_size, GGML_TYPES[int(qt)].type_size
    row_bytes = draw(st.integers(1, 2)) * size
    assert row_bytes // size * blck % blck == 0
    return np.full([*outer, row_bytes], 7, dtype=np.uint8), qt


@st.composite
def gguf_spec(draw: st.DrawFn) -> dict[str, Any]:
    kvs = draw(st.dictionaries(KEY, key_value(), max_size=10))
    names = draw(
        st.lists(st.text(string.ascii_letters + "._", min_size=1, max_size=63), unique=True, max_size=5)
    )
    tensors = [(n, *draw(tensor())) for n in names]
    alignment = draw(st.sampled_from([None, 8, 64, 256]))
    vocab = draw(st.one_of(st.none(), st.lists(TEXT, min_size=1, max_size=20)))
    return {"kvs": kvs, "tensors": tensors, "alignment": alignment, "vocab": vocab}


def write(spec: dict[str, Any], path: Path) -> None:
    w = gguf.GGUFWriter(path, "testarch")
    if spec["alignment"]:
        w.add_custom_alignment(spec["alignment"])
    for key, (vt, et, value) in spec["kvs"].items():
        w.add_key_value(key, value, vt, sub_type=et)
    if spec["vocab"] is not None:
        n = len(spec["vocab"])
        w.add_token_list(spec["vocab"])
        w.add_token_scores([0.5] * n)
        w.add_token_types([1] * n)
        w.add_bos_token_id(n - 1)
    for name, arr, qt in spec["tensors"]:
        w.add_tensor(name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gguf_spec())
def test_writer_files_are_accepted_and_agree_with_gguf_py(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        write(spec, path)
        ref = gguf.GGUFReader(path)
        with read_gguf(path) as gf:
            ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
            assert list(gf.kv) == list(ref_fields)
            for key, f in ref_fields.items():
                kv = gf.kv[key]
                assert kv.type == int(f.types[0]), key
                if isinstance(kv.value, ArrayValue):
                    assert kv.value.elem_type == int(f.types[1]) if len(f.types) > 1 else True
                    mine, theirs = kv.value.to_list(), list(f.contents())
                    assert len(mine) == len(theirs)
                    assert all(same(a, b) for a, b in zip(mine, theirs, strict=True)), key
                else:
                    assert same(kv.value, f.contents()), key
            assert len(gf.tensors) == len(ref.tensors)
            for mine, theirs in zip(gf.tensors, ref.tensors, strict=True):
                assert mine.name == theirs.name
                assert list(mine.shape) == [int(x) for x in theirs.shape]
                assert mine.ggml_type == int(theirs.tensor_type)
                assert mine.n_elements == int(theirs.n_elements)
                assert mine.n_bytes == int(theirs.n_bytes)
                assert mine.data_start == int(theirs.data_offset)
            s = gf.summary()
            assert s.tensor_count == len(ref.tensors)
            assert s.parameters == sum(int(t.n_elements) for t in ref.tensors)
            assert s.vocab_size == (len(spec["vocab"]) if spec["vocab"] is not None else None)
            assert s.architecture == "testarch"
            assert gf.alignment == (spec["alignment"] or 32)


def test_table_agrees_with_gguf_py_except_its_known_q8_1_error() -> None:
    """gguf-py's GGML_QUANT_SIZES is an independent copy; it lists Q8_1 as 40 bytes where ggml.c has 36."""
    for qt, (blck, size) in gguf.GGML_QUANT_SIZES.items():
        mine = GGML_TYPES.get(int(qt))
        assert mine is not None and not mine.removed, qt
        if qt.name == "Q8_1":
            assert (mine.block_size, mine.type_size) == (32, 36)
            continue
        assert (mine.block_size, mine.type_size) == (blck, size), qt.name


@pytest.mark.parametrize("version", [2, 3])
def test_versions_two_and_three(tmp_path: Path, version: int) -> None:
    path = tmp_path / "v.gguf"
    write(
        {"kvs": {}, "tensors": [("t", np.ones(4, np.float32), None)], "alignment": None, "vocab": None}, path
    )
    data = bytearray(path.read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with read_gguf(path) as gf:
        assert gf.version == version
