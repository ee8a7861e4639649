"""Mutations of valid files: every one is rejected with the right code, never an unhandled exception."""

from __future__ import annotations

import random
import struct

import pytest
from support.gguf_handcraft import ARR, F32, F64, I8, I32, STR, U32, GGUFCraft, Tensor, tiny_model

from dxverify.gguf import GGUFError, read_gguf, read_gguf_buffer

VALID = tiny_model().build()


def put_u64(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<Q", value % 2**64) + data[at + 8 :]


def put_u32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<I", value % 2**32) + data[at + 4 :]


def rejected(data: bytes, codes: set[str] | None = None) -> GGUFError:
    with pytest.raises(GGUFError) as exc:
        read_gguf_buffer(data)
    err = exc.value
    if codes is not None:
        assert err.code in codes, f"got {err.code}: {err}"
    assert 0 <= err.offset <= len(data)
    assert err.field and "\n" not in str(err)
    return err


def accepted_or_rejected(data: bytes) -> None:
    try:
        read_gguf_buffer(data)
    except GGUFError as e:
        assert 0 <= e.offset <= len(data) and e.field


def test_the_valid_file_is_valid() -> None:
    gf = read_gguf_buffer(VALID.data)
    assert [t.name for t in gf.tensors] == ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"]
    assert gf.get("tokenizer.ggml.tokens") == [f"t{i}" for i in range(8)]


def test_every_truncation_is_rejected() -> None:
    for n in range(len(VALID.data)):
        rejected(VALID.data[:n])


@pytest.mark.parametrize("name", sorted(VALID.fields))
def test_truncation_at_each_field_boundary_names_a_field_before_it(name: str) -> None:
    start, _ = VALID.fields[name]
    err = rejected(VALID.data[:start])
    assert err.offset <= start


@pytest.mark.parametrize("value", [1, 2, 4, 1000, 2**32, 2**62, 2**63, 2**64 - 1])
@pytest.mark.parametrize("count", ["n_tensors", "n_kv"])
def test_header_counts_too_large(count: str, value: int) -> None:
    at, _ = VALID.fields[count]
    real = struct.unpack_from("<Q", VALID.data, at)[0]
    rejected(put_u64(VALID.data, at, real + value))


@pytest.mark.parametrize("count", ["n_tensors", "n_kv"])
def test_header_counts_too_small(count: str) -> None:
    at, _ = VALID.fields[count]
    real = struct.unpack_from("<Q", VALID.data, at)[0]
    for v in range(real):
        accepted_or_rejected(put_u64(VALID.data, at, v))
    # one tensor fewer: the tensor infos that follow are read as padding/data and fail
    if count == "n_tensors":
        rejected(put_u64(VALID.data, at, real - 1))


@pytest.mark.parametrize("value", [0, 2**16, 2**30 + 1, 2**63, 2**64 - 1])
def test_key_length_flips(value: int) -> None:
    at, _ = VALID.fields["kv3.key_len"]
    rejected(
        put_u64(VALID.data, at, value),
        {
            "empty_key",
            "string_too_long",
            "truncated",
            "bad_value_type",
            "invalid_utf8",
            "count_too_large",
            "bad_array_type",
        },
    )


def test_huge_string_value_length() -> None:
    at, _ = VALID.fields["kv1.value"]  # general.name: u64 length + bytes
    rejected(put_u64(VALID.data, at, 2**64 - 1), {"string_too_long"})
    rejected(put_u64(VALID.data, at, 10**6), {"truncated"})


@pytest.mark.parametrize("vtype", [13, 14, 255, 2**31, 2**32 - 1])
def test_unknown_value_types(vtype: int) -> None:
    for i in range(len(tiny_model().kvs)):
        at, _ = VALID.fields[f"kv{i}.type"]
        rejected(put_u32(VALID.data, at, vtype), {"bad_value_type"})


def test_every_valid_value_type_swap_is_handled() -> None:
    for i in range(len(tiny_model().kvs)):
        at, _ = VALID.fields[f"kv{i}.type"]
        for vtype in range(13):
            accepted_or_rejected(put_u32(VALID.data, at, vtype))


def test_array_element_type_and_count_flips() -> None:
    at, _ = VALID.fields["kv6.value"]  # tokenizer.ggml.tokens: elem type u32, count u64
    rejected(put_u32(VALID.data, at, 9), {"nested_array"})
    rejected(put_u32(VALID.data, at, 13), {"bad_array_type"})
    for count in (2**30 + 1, 2**40, 2**63, 2**64 - 1):
        rejected(put_u64(VALID.data, at + 4, count), {"count_too_large"})
    for count in (9, 1000, 10**6):
        rejected(put_u64(VALID.data, at + 4, count))
    at_scores, _ = VALID.fields["kv7.value"]
    rejected(put_u64(VALID.data, at_scores + 4, 2**27), {"truncated"})


def test_string_inside_array_runs_past_the_end() -> None:
    at, _ = VALID.fields["kv6.value"]
    first_len = at + 12
    rejected(put_u64(VALID.data, first_len, 2**62), {"truncated", "string_too_long"})
    rejected(put_u64(VALID.data, first_len, len(VALID.data)), {"truncated"})


@pytest.mark.parametrize("n_dims", [5, 6, 255, 2**32 - 1])
def test_n_dims_too_large(n_dims: int) -> None:
    at, _ = VALID.fields["t0.n_dims"]
    rejected(put_u32(VALID.data, at, n_dims), {"bad_n_dims"})


@pytest.mark.parametrize(
    ("value", "codes"),
    [
        (0, {"zero_dimension"}),
        (-1, {"bad_dimension"}),
        (-(2**62), {"bad_dimension"}),
        (2**62, {"element_overflow", "size_overflow", "tensor_out_of_bounds", "data_truncated"}),
        (31, {"row_not_block_multiple"}),
    ],
)
def test_bad_dimensions(value: int, codes: set[str]) -> None:
    at, _ = VALID.fields["t0.ne"]
    rejected(put_u64(VALID.data, at, value), codes)


def test_dimension_product_overflow() -> None:
    c = tiny_model()
    c.tensors[1] = Tensor("output_norm.weight", [2**32, 2**32], 0)
    c.data_bytes = 0
    rejected(c.build().data, {"element_overflow"})


@pytest.mark.parametrize(
    ("ggml_type", "code"),
    [
        (4, "removed_ggml_type"),
        (5, "removed_ggml_type"),
        (31, "removed_ggml_type"),
        (33, "removed_ggml_type"),
        (36, "removed_ggml_type"),
        (38, "removed_ggml_type"),
        (43, "bad_ggml_type"),
        (2**31, "bad_ggml_type"),
        (2**32 - 1, "bad_ggml_type"),
    ],
)
def test_bad_ggml_types(ggml_type: int, code: str) -> None:
    at, _ = VALID.fields["t1.type"]
    rejected(put_u32(VALID.data, at, ggml_type), {code})


def test_type_change_that_breaks_the_block_size() -> None:
    at, _ = VALID.fields["t1.type"]  # output_norm.weight is F32 [5]; Q4_0 needs multiples of 32
    rejected(put_u32(VALID.data, at, 2), {"row_not_block_multiple"})


@pytest.mark.parametrize(
    ("delta", "code"),
    [
        (1, "tensor_misaligned"),
        (-1, "tensor_misaligned"),
        (32, "tensor_gap"),
        (-32, "tensor_overlap"),
        (2**63, "tensor_gap"),
        (2**64 - 32, "tensor_overlap"),
    ],
)
def test_offset_flips(delta: int, code: str) -> None:
    at, _ = VALID.fields["t1.offset"]
    real = struct.unpack_from("<Q", VALID.data, at)[0]
    rejected(put_u64(VALID.data, at, real + delta), {code})


def test_overlapping_tensors() -> None:
    at0, _ = VALID.fields["t0.offset"]
    at1, _ = VALID.fields["t1.offset"]
    rejected(put_u64(VALID.data, at1, struct.unpack_from("<Q", VALID.data, at0)[0]), {"tensor_overlap"})


def test_last_tensor_past_the_end() -> None:
    c = tiny_model()
    c.data_bytes = 200  # first tensor fits, the rest do not
    rejected(c.build().data, {"tensor_out_of_bounds"})


def test_no_data_section() -> None:
    data = VALID.data[: VALID.fields["data"][0]]
    rejected(data, {"tensor_out_of_bounds"})
    rejected(VALID.data[: VALID.fields["header_pad"][0]], {"missing_data"})


def test_nonzero_header_padding() -> None:
    at, size = VALID.fields["header_pad"]
    assert size > 0
    rejected(VALID.data[:at] + b"\x01" + VALID.data[at + 1 :], {"padding_not_zero"})


@pytest.mark.parametrize(
    ("alignment", "vtype", "code"),
    [
        (0, U32, "bad_alignment"),
        (3, U32, "bad_alignment"),
        (13, U32, "bad_alignment"),
        (2**31, U32, "bad_alignment"),
        (2**21, U32, "bad_alignment"),
        (32, I32, "alignment_type"),
        ("32", STR, "alignment_type"),
    ],
)
def test_bad_alignment(alignment: object, vtype: int, code: str) -> None:
    c = tiny_model()
    c.kvs.append(("general.alignment", vtype, alignment))
    rejected(c.build().data, {code})


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_custom_alignment_accepted(alignment: int) -> None:
    gf = read_gguf_buffer(tiny_model(alignment=alignment).build().data)
    assert gf.alignment == alignment
    assert all(t.offset % alignment == 0 for t in gf.tensors)


def test_duplicate_key_and_tensor() -> None:
    c = tiny_model()
    c.kvs.append(("general.name", STR, "again"))
    rejected(c.build().data, {"duplicate_key"})
    c = tiny_model()
    c.tensors[2].name = c.tensors[0].name
    rejected(c.build().data, {"duplicate_tensor"})


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("x" * 64, "tensor_name_too_long"),
        ("", "empty_tensor_name"),
        (b"\xff\xfe".decode("latin-1"), None),
    ],
)
def test_tensor_names(name: str, code: str | None) -> None:
    c = tiny_model()
    c.tensors[0].name = name
    data = c.build().data
    if code is None:  # latin-1 text re-encoded as UTF-8 is valid UTF-8
        read_gguf_buffer(data)
    else:
        rejected(data, {code})
    ok = tiny_model()
    ok.tensors[0].name = "x" * 63
    read_gguf_buffer(ok.build().data)


def test_invalid_utf8_key() -> None:
    at, _ = VALID.fields["kv0.key"]
    rejected(VALID.data[:at] + b"\xff" + VALID.data[at + 1 :], {"invalid_utf8"})


def test_bool_must_be_0_or_1() -> None:
    c = tiny_model()
    c.kvs.append(("x.flag", 7, 2))
    rejected(c.build().data, {"bad_bool"})
    c = tiny_model()
    c.kvs.append(("x.flags", ARR, (7, [0, 1, 2])))
    rejected(c.build().data, {"bad_bool"})


# -- what llama.cpp only finds at load time ----------------------------------------------------------


def model_with(key: str, vtype: int, value: object) -> bytes:
    c = tiny_model()
    c.kvs = [kv for kv in c.kvs if kv[0] != key] + [(key, vtype, value)]
    return c.build().data


@pytest.mark.parametrize(
    ("key", "vtype", "value", "code"),
    [
        ("tokenizer.ggml.scores", ARR, (I8, [1] * 8), "tokenizer_type"),
        ("tokenizer.ggml.scores", ARR, (F64, [1.0] * 8), "tokenizer_type"),
        ("tokenizer.ggml.scores", ARR, (F32, [1.0] * 7), "tokenizer_length"),
        ("tokenizer.ggml.token_type", ARR, (F32, [1.0] * 8), "tokenizer_type"),
        ("tokenizer.ggml.token_type", ARR, (I32, [1] * 9), "tokenizer_length"),
        ("tokenizer.ggml.tokens", ARR, (I32, [1] * 8), "tokenizer_type"),
        ("tokenizer.ggml.tokens", STR, "not an array", "tokenizer_type"),
        ("tokenizer.ggml.merges", ARR, (U32, [1]), "tokenizer_type"),
        ("tokenizer.ggml.bos_token_id", U32, 8, "token_id_range"),
        ("tokenizer.ggml.eos_token_id", U32, 2**32 - 1, "token_id_range"),
        ("tokenizer.ggml.padding_token_id", I32, -1, "token_id_range"),
        ("tokenizer.ggml.eot_token_id", F32, 1.0, "token_id_type"),
        ("llama.block_count", U32, 513, "bad_hparam"),
        ("llama.block_count", U32, 0, "bad_hparam"),
        ("llama.block_count", F32, 2.0, "bad_metadata_type"),
        ("llama.attention.head_count", U32, 0, "bad_hparam"),
        ("llama.attention.head_count", ARR, (U32, [4, 0]), "bad_hparam"),
        ("llama.context_length", U32, 0, "bad_hparam"),
        ("general.architecture", U32, 1, "bad_metadata_type"),
    ],
)
def test_load_time_checks(key: str, vtype: int, value: object, code: str) -> None:
    rejected(model_with(key, vtype, value), {code})


def test_integer_scores_are_accepted_as_llama_cpp_does() -> None:
    gf = read_gguf_buffer(model_with("tokenizer.ggml.scores", ARR, (I32, list(range(8)))))
    assert gf.get("tokenizer.ggml.scores") == list(range(8))


def test_special_ids_without_vocabulary() -> None:
    c = tiny_model()
    c.kvs = [kv for kv in c.kvs if not kv[0].startswith("tokenizer.ggml.t") and "scores" not in kv[0]]
    rejected(c.build().data, {"token_id_range"})


def test_largest_valid_special_id() -> None:
    read_gguf_buffer(model_with("tokenizer.ggml.eos_token_id", U32, 7))


# -- random damage ---------------------------------------------------------------------------------------


def test_random_byte_damage_is_always_handled() -> None:
    rng = random.Random(1234)
    n_rejected = 0
    for _ in range(3000):
        data = bytearray(VALID.data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(VALID.fields["data"][0])] = rng.randrange(256)
        try:
            read_gguf_buffer(bytes(data))
        except GGUFError as e:
            n_rejected += 1
            assert 0 <= e.offset <= len(data)
    assert n_rejected > 1500  # most header damage must be caught


# -- embedded in a larger file --------------------------------------------------------------------------


def test_embedded_gguf_offsets_are_file_relative(tmp_path) -> None:
    base = 65536
    blob = tmp_path / "exe"
    blob.write_bytes(b"\x7fELF" + b"\xaa" * (base - 4) + VALID.data + b"TRAILER" * 10)
    gf = read_gguf(blob, offset=base, length=len(VALID.data))
    assert gf.offset == base and gf.summary().file_size == len(VALID.data)
    assert gf.tensors[0].data_start == base + VALID.fields["data"][0]
    assert gf.get("general.name") == "tiny"
    gf.close()
    # a GGUF shorter than its region's declared data is judged against the region, not the file
    with pytest.raises(GGUFError) as exc:
        read_gguf(blob, offset=base, length=len(VALID.data) - 1)
    assert exc.value.code == "data_truncated"
    # damage inside the embedded GGUF is reported at its absolute offset
    at, _ = VALID.fields["t1.n_dims"]
    damaged = tmp_path / "exe2"
    damaged.write_bytes(b"\0" * base + put_u32(VALID.data, at, 9))
    with pytest.raises(GGUFError) as exc:
        read_gguf(damaged, offset=base, length=len(VALID.data))
    assert exc.value.code == "bad_n_dims" and exc.value.offset == base + at
    assert str(damaged) in str(exc.value)
    with pytest.raises(GGUFError) as exc:
        read_gguf(damaged, offset=base, length=len(VALID.data) + 1)
    assert exc.value.code == "region_out_of_file"


def test_alignment_is_relative_to_the_gguf_start() -> None:
    # embedded at an offset that is not a multiple of 32: the data section is still found
    data = b"\x01" * 7 + VALID.data
    gf = read_gguf_buffer(data, offset=7, length=len(VALID.data))
    assert gf.data_offset == 7 + VALID.fields["data"][0]


def test_wrong_array_of_strings_length_walk_is_bounded() -> None:
    # 2**20 strings declared, file holds 8: rejected before any per-string loop could run long
    c = GGUFCraft(kvs=[("a", ARR, (STR, ["x"] * 8))])
    data = c.build().data
    at = 24 + 8 + 1 + 4 + 4  # header, key len, key "a", type, elem type -> count
    rejected(put_u64(data, at, 2**20), {"truncated"})


@pytest.mark.parametrize(("text", "ok"), [("<0x41>", True), ("<0xfF>", True), ("<0x-1>", False), ("<0x4>", False),
                                          ("A", False), ("<0x41>x", False)])  # fmt: skip
def test_byte_tokens_must_read_0xNN(text: str, ok: bool) -> None:
    c = tiny_model()
    tokens = [f"t{i}" for i in range(8)]
    tokens[5] = text
    types = [1] * 8
    types[5] = 6  # BYTE
    c.kvs = [kv for kv in c.kvs if kv[0] not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")]
    c.kvs += [("tokenizer.ggml.tokens", ARR, (STR, tokens)), ("tokenizer.ggml.token_type", ARR, (I32, types))]
    data = c.build().data
    if ok:
        read_gguf_buffer(data)
    else:
        err = rejected(data, {"bad_byte_token"})
        assert err.field == "tokenizer.ggml.tokens[5]"


def test_messages_stay_one_short_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = tiny_model()
    c.kvs.append(("k" * 60000 + "\n", 13, 0))  # a huge key with a newline, then a bad type
    err = rejected(c.build().data, {"bad_value_type"})
    assert len(str(err)) < 400
    odd = tmp_path / "a\nb.gguf"
    odd.write_bytes(b"GGUF")
    with pytest.raises(GGUFError) as exc:
        read_gguf(odd)
    assert "\n" not in str(exc.value)
