"""Trailer format version 2: a target and a draft in one file, each entry checked against the file and the others."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dxverify import trailer
from dxverify.errors import DXError, IntegrityError, MalformedInputError

META = {"model": "tiny", "source": "test", "tier": "cpu", "dx_version": "0.1.0",
        "llama_cpp_commit": "0" * 40}
A = trailer.ALIGNMENT


def _mint2(tmp_path: Path, model_bytes: bytes = b"GGUF" + bytes(range(256)) * 300,
           draft_bytes: bytes = b"GGUF" + bytes(range(255, -1, -1)) * 77) -> tuple[Path, trailer.EmbeddedModel]:
    rt = tmp_path / "runtime"
    rt.write_bytes(b"\x7fELF" + b"r" * 1000)
    (tmp_path / "model.gguf").write_bytes(model_bytes)
    (tmp_path / "draft.gguf").write_bytes(draft_bytes)
    exe = tmp_path / "exe2"
    with open(exe, "wb") as f:
        em = trailer.write_executable(rt, tmp_path / "model.gguf", f, dict(META), draft=tmp_path / "draft.gguf",
                                      draft_metadata={"model": "tiny-draft", "source": "file:draft.gguf"})
    return exe, em


def test_two_entries_round_trip_aligned_one_after_another(tmp_path: Path) -> None:
    model_bytes, draft_bytes = b"GGUF" + os.urandom(70_000), b"GGUF" + os.urandom(3000)
    exe, written = _mint2(tmp_path, model_bytes, draft_bytes)
    found = trailer.read_trailer(exe)
    assert found.version == 2 and found == written
    assert [e.role for e in found.entries] == ["model", "draft"]
    model, draft = found.entries
    assert (found.offset, found.length, found.sha256) == (model.offset, model.length, model.sha256)
    assert model.offset == A and draft.offset == 3 * A  # 70 kB model: two boundaries later
    assert all(e.offset % A == 0 for e in found.entries)
    data = exe.read_bytes()
    assert data[model.offset: model.offset + model.length] == model_bytes
    assert data[draft.offset: draft.offset + draft.length] == draft_bytes
    assert draft.engine_path == f"{exe}#offset={3 * A}" and found.draft == draft
    assert found.metadata["draft"] == {"model": "tiny-draft", "source": "file:draft.gguf",
                                       "sha256": draft.sha256, "length": len(draft_bytes)}
    assert trailer.find_entries(exe) == found.entries
    for e in found.entries:
        trailer.check_entry_hash(e)
    trailer.check_runtime(found)


def test_single_model_is_still_version_1(tmp_path: Path) -> None:
    rt, m = tmp_path / "rt", tmp_path / "m.gguf"
    rt.write_bytes(b"rt" * 10)
    m.write_bytes(b"GGUF" * 100)
    with open(tmp_path / "exe", "wb") as f:
        em = trailer.write_executable(rt, m, f, dict(META))
    raw = (tmp_path / "exe").read_bytes()
    assert struct.unpack_from("<I", raw, len(raw) - trailer.TRAILER_SIZE)[0] == 1
    found = trailer.read_trailer(tmp_path / "exe")
    assert found.version == 1 and found.draft is None and found == em
    assert found.entries == (trailer.Entry("model", A, 400, em.sha256, tmp_path / "exe"),)


def test_flipped_draft_byte_names_the_draft_entry(tmp_path: Path) -> None:
    exe, em = _mint2(tmp_path)
    data = bytearray(exe.read_bytes())
    data[em.draft.offset + 100] ^= 1
    exe.write_bytes(bytes(data))
    found = trailer.read_trailer(exe)  # structure is fine: only the hash can tell
    trailer.check_entry_hash(found.entries[0])
    with pytest.raises(IntegrityError, match="embedded draft entry"):
        trailer.check_entry_hash(found.draft)


def test_nonzero_padding_between_entries_is_refused(tmp_path: Path) -> None:
    exe, em = _mint2(tmp_path)
    data = bytearray(exe.read_bytes())
    data[em.draft.offset - 1] = 7
    exe.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="padding between"):
        trailer.check_runtime(trailer.read_trailer(exe))


def _forge(exe: Path, em: trailer.EmbeddedModel, entries: list[tuple[int, int, bytes, bytes]] | None = None,
           *, meta: bytes | None = None, table_len: int | None = None, model_sha: bytes | None = None,
           table_at: int | None = None) -> None:
    """Rewrite table + metadata + trailer with a valid CRC, so only the field under test is wrong."""
    data = exe.read_bytes()
    version, _, t_at, t_len, meta_len, digest, magic = struct.unpack("<IIQQQ32s8s", data[-trailer.TRAILER_SIZE:])
    old_table = data[t_at: t_at + t_len]
    old_meta = data[t_at + t_len: t_at + t_len + meta_len]
    if entries is None:
        entries = [struct.unpack_from("<QQ32s16s", old_table, i) for i in range(0, t_len, 64)]
    table = b"".join(struct.pack("<QQ32s16s", *e) for e in entries)
    meta = old_meta if meta is None else meta
    tl = len(table) if table_len is None else table_len
    at = t_at if table_at is None else table_at
    tail = table + meta + struct.pack("<IIQQQ32s8s", version, zlib.crc32(table + meta), at, tl, len(meta),
                                      model_sha or digest, magic)
    exe.write_bytes(data[:t_at] + tail)


def _entries(exe: Path) -> list[list]:
    data = exe.read_bytes()
    _, _, t_at, t_len, _, _, _ = struct.unpack("<IIQQQ32s8s", data[-trailer.TRAILER_SIZE:])
    return [list(struct.unpack_from("<QQ32s16s", data, t_at + i)) for i in range(0, t_len, 64)]


@pytest.mark.parametrize(("change", "message"), [
    (lambda es: es[1].__setitem__(3, b"model"), "appears twice"),
    (lambda es: es[1].__setitem__(3, b"drafty"), "is not one of model, draft"),
    (lambda es: es[1].__setitem__(3, b"dr\0aft"), "NUL-padded ASCII"),
    (lambda es: es[1].__setitem__(3, b""), "NUL-padded ASCII"),
    (lambda es: es.reverse(), "first entry must be the 'model'"),
    (lambda es: es[1].__setitem__(0, es[1][0] + 100), "not a positive multiple of 65536"),
    (lambda es: es[1].__setitem__(0, 0), "not a positive multiple"),
    (lambda es: es[1].__setitem__(0, A), "overlaps the model"),
    (lambda es: es[1].__setitem__(0, es[1][0] + A), "runs past the entry table"),
    (lambda es: es[1].__setitem__(1, 0), "length is 0"),
    (lambda es: es[1].__setitem__(1, es[1][1] + 10), "runs past the entry table"),
    (lambda es: es[1].__setitem__(1, es[1][1] - 10), "does not follow the last entry"),
    (lambda es: es[0].__setitem__(1, es[0][1] - A), "does not follow the model"),
    (lambda es: es[1].__setitem__(2, b"\1" * 32), "metadata 'draft' SHA-256"),
    (lambda es: es[0].__setitem__(2, b"\1" * 32), "differs from the model entry"),
])
def test_hostile_tables_get_one_clear_error(tmp_path: Path, change, message: str) -> None:
    exe, em = _mint2(tmp_path)
    es = _entries(exe)
    change(es)
    _forge(exe, em, [tuple(e) for e in es])
    with pytest.raises(DXError, match=message) as info:
        trailer.find_trailer(exe)
    assert "\n" not in str(info.value)


def test_table_size_limits(tmp_path: Path) -> None:
    exe, em = _mint2(tmp_path)
    for bad in (0, 63, 65, 64 * (trailer.MAX_ENTRIES + 1)):
        _mint2(tmp_path)
        _forge(exe, em, table_len=bad)
        with pytest.raises(MalformedInputError, match="entry table length"):
            trailer.find_trailer(exe)
    _mint2(tmp_path)
    _forge(exe, em, table_at=10)
    with pytest.raises(MalformedInputError, match="but the file has"):
        trailer.find_trailer(exe)


def test_metadata_without_the_draft_record_is_refused(tmp_path: Path) -> None:
    exe, em = _mint2(tmp_path)
    meta = dict(em.metadata)
    del meta["draft"]
    _forge(exe, em, meta=json.dumps(meta).encode())
    with pytest.raises(IntegrityError, match="metadata 'draft' SHA-256 None"):
        trailer.find_trailer(exe)


def test_crc_covers_the_table(tmp_path: Path) -> None:
    exe, em = _mint2(tmp_path)
    data = bytearray(exe.read_bytes())
    data[em.payload_end + 64 + 50] ^= 0x40  # inside the draft's role field
    exe.write_bytes(bytes(data))
    with pytest.raises(MalformedInputError, match="CRC-32"):
        trailer.find_trailer(exe)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=1, max_value=trailer.TRAILER_SIZE + 128 + 400), value=st.integers(0, 255))
def test_any_damage_near_the_end_is_a_dx_error_or_detected(tmp_path: Path, pos: int, value: int) -> None:
    orig = tmp_path / "orig2"
    if not orig.exists():
        exe, _ = _mint2(tmp_path)
        os.replace(exe, orig)
    good = orig.read_bytes()
    data = bytearray(good)
    data[-pos] = value
    exe = tmp_path / "fuzz2"
    exe.write_bytes(bytes(data))
    try:
        found = trailer.find_trailer(exe)
    except DXError as e:
        assert "\n" not in str(e)
        return
    if found is not None and bytes(data) != good:
        with pytest.raises(IntegrityError):
            for e in found.entries:
                trailer.check_entry_hash(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                  st.binary(min_size=32, max_size=32),
                                  st.sampled_from([b"model", b"draft", b"x", b"\xff"])), min_size=1, max_size=4))
def test_random_tables_never_escape_as_non_dx_errors(tmp_path: Path, entries) -> None:
    exe, em = _mint2(tmp_path)
    _forge(exe, em, entries)
    try:
        found = trailer.find_trailer(exe)
    except DXError:
        return
    assert found is not None
    size = exe.stat().st_size
    for e in found.entries:  # whatever was accepted lies inside the file, aligned, in order
        assert e.offset % A == 0 and e.offset > 0 and e.offset + e.length <= size
