"""dxverify.trailer: the embedded-model trailer round-trips and refuses damage."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dxverify import trailer
from dxverify.errors import DXError, IntegrityError, MalformedInputError

META = {"model": "tiny", "source": "test", "tier": "cpu", "dx_version": "0.1.0",
        "llama_cpp_commit": "0" * 40}


def _mint(tmp_path: Path, runtime_bytes: bytes = b"\x7fELF" + b"r" * 1000,
          model_bytes: bytes = b"GGUF" + bytes(range(256)) * 40) -> tuple[Path, trailer.EmbeddedModel]:
    rt = tmp_path / "runtime"
    rt.write_bytes(runtime_bytes)
    model = tmp_path / "model.gguf"
    model.write_bytes(model_bytes)
    exe = tmp_path / "exe"
    with open(exe, "wb") as f:
        em = trailer.write_executable(rt, model, f, dict(META))
    return exe, em


def test_round_trip_places_model_aligned_and_unchanged(tmp_path: Path) -> None:
    model_bytes = b"GGUF" + os.urandom(5000)
    exe, written = _mint(tmp_path, model_bytes=model_bytes)
    found = trailer.read_trailer(exe)
    assert found.offset == trailer.ALIGNMENT
    assert found.length == len(model_bytes)
    assert found.sha256 == written.sha256
    assert found.metadata["model"] == "tiny"
    data = exe.read_bytes()
    assert data[found.offset: found.offset + found.length] == model_bytes
    assert data[:4] == b"\x7fELF"
    assert set(data[1004: found.offset]) == {0}
    assert found.engine_path == f"{exe}#offset={trailer.ALIGNMENT}"
    trailer.check_model_hash(found)


def test_runtime_exactly_on_boundary_gets_no_padding(tmp_path: Path) -> None:
    exe, em = _mint(tmp_path, runtime_bytes=b"x" * trailer.ALIGNMENT * 2)
    assert em.offset == trailer.ALIGNMENT * 2
    assert trailer.read_trailer(exe).offset == trailer.ALIGNMENT * 2


def test_file_without_trailer_is_none_and_read_names_it(tmp_path: Path) -> None:
    f = tmp_path / "dx-smollm2-cpu-linux-x86_64"
    f.write_bytes(os.urandom(100_000))
    assert trailer.find_trailer(f) is None
    with pytest.raises(MalformedInputError, match="no embedded model"):
        trailer.read_trailer(f)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"ab")
    assert trailer.find_trailer(tiny) is None


def test_truncated_executable_is_refused(tmp_path: Path) -> None:
    exe, _ = _mint(tmp_path)
    data = exe.read_bytes()
    # Cut the middle out but keep the trailer: sizes no longer add up.
    exe.write_bytes(data[: trailer.ALIGNMENT + 100] + data[-(trailer.TRAILER_SIZE + 200):])
    with pytest.raises(MalformedInputError, match="truncated"):
        trailer.find_trailer(exe)
    # Cut the end off: the trailer is gone, so there is no model at all.
    exe.write_bytes(data[:-10])
    assert trailer.find_trailer(exe) is None


def test_appended_bytes_are_refused(tmp_path: Path) -> None:
    exe, _ = _mint(tmp_path)
    data = exe.read_bytes()
    exe.write_bytes(data[:-trailer.TRAILER_SIZE] + b"junk" + data[-trailer.TRAILER_SIZE:])
    with pytest.raises(MalformedInputError, match="but the file has"):
        trailer.find_trailer(exe)


def test_flipped_model_byte_fails_hash(tmp_path: Path) -> None:
    exe, em = _mint(tmp_path)
    with open(exe, "r+b") as f:
        f.seek(em.offset + em.length // 2)
        b = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    found = trailer.read_trailer(exe)  # structure intact
    with pytest.raises(IntegrityError, match="altered"):
        trailer.check_model_hash(found)


def test_flipped_metadata_byte_fails_crc(tmp_path: Path) -> None:
    exe, em = _mint(tmp_path)
    with open(exe, "r+b") as f:
        f.seek(em.offset + em.length + 3)
        b = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x20]))
    with pytest.raises(MalformedInputError, match="CRC"):
        trailer.find_trailer(exe)


def _patch_trailer(exe: Path, **fields: int) -> None:
    data = bytearray(exe.read_bytes())
    vals = list(struct.unpack("<IIQQQ32s8s", data[-trailer.TRAILER_SIZE:]))
    names = ["version", "crc", "offset", "length", "meta_len", "digest", "magic"]
    for k, v in fields.items():
        vals[names.index(k)] = v
    data[-trailer.TRAILER_SIZE:] = struct.pack("<IIQQQ32s8s", *vals)
    exe.write_bytes(bytes(data))


@pytest.mark.parametrize(("fields", "message"), [
    ({"version": 9}, "format version 9"),
    ({"offset": 100}, "multiple of"),
    ({"offset": 0}, "multiple of"),
    ({"meta_len": trailer.MAX_METADATA + 1}, "exceeds"),
    ({"length": 2**63}, "but the file has"),
])
def test_forged_trailer_fields_are_named(tmp_path: Path, fields: dict, message: str) -> None:
    exe, _ = _mint(tmp_path)
    _patch_trailer(exe, **fields)
    with pytest.raises(MalformedInputError, match=message):
        trailer.find_trailer(exe)


def test_metadata_hash_must_match_trailer_hash(tmp_path: Path) -> None:
    exe, _ = _mint(tmp_path)
    data = bytearray(exe.read_bytes())
    digest_at = len(data) - trailer.TRAILER_SIZE + 4 + 4 + 8 * 3
    data[digest_at] ^= 0xFF
    exe.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="differs"):
        trailer.find_trailer(exe)


def test_expected_hash_mismatch_while_embedding_raises(tmp_path: Path) -> None:
    (tmp_path / "rt").write_bytes(b"rt")
    (tmp_path / "m").write_bytes(b"GGUF model")
    with open(tmp_path / "exe", "wb") as f, pytest.raises(IntegrityError, match="expected 0000"):
        trailer.write_executable(tmp_path / "rt", tmp_path / "m", f, dict(META), expected_sha256="00" * 32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=1, max_value=trailer.TRAILER_SIZE + 400), value=st.integers(0, 255))
def test_any_damage_near_the_end_is_a_dx_error_or_detected(tmp_path: Path, pos: int, value: int) -> None:
    exe = tmp_path / "fuzz-exe"
    if not exe.exists():
        _mint(tmp_path)
        os.replace(tmp_path / "exe", exe)
        (tmp_path / "orig").write_bytes(exe.read_bytes())
    data = bytearray((tmp_path / "orig").read_bytes())
    data[-pos] = value
    exe.write_bytes(bytes(data))
    try:
        found = trailer.find_trailer(exe)
    except DXError:
        return
    # Damage that leaves the trailer consistent can only be in the model: the hash catches it.
    if found is not None and bytes(data) != (tmp_path / "orig").read_bytes():
        with pytest.raises(IntegrityError):
            trailer.check_model_hash(found)


def test_file_hasher_sees_exactly_the_written_file(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "rt").write_bytes(os.urandom(70_000))
    (tmp_path / "m").write_bytes(b"GGUF" + os.urandom(20_000_000))
    fh = hashlib.sha256()
    with open(tmp_path / "exe", "wb") as f:
        em = trailer.write_executable(tmp_path / "rt", tmp_path / "m", f, dict(META), file_hasher=fh)
    data = (tmp_path / "exe").read_bytes()
    assert fh.hexdigest() == hashlib.sha256(data).hexdigest()
    assert em.file_size == len(data)
    assert em.offset == 2 * trailer.ALIGNMENT


def test_runtime_part_is_recorded_and_checked(tmp_path: Path) -> None:
    exe, em = _mint(tmp_path)
    assert em.metadata["runtime_size"] == 1004
    trailer.check_runtime(trailer.read_trailer(exe))
    data = bytearray(exe.read_bytes())
    data[10] ^= 1
    exe.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="the runtime"):
        trailer.check_runtime(trailer.read_trailer(exe))
    data[10] ^= 1
    data[2000] = 7  # in the padding
    exe.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="padding"):
        trailer.check_runtime(trailer.read_trailer(exe))


def test_hash_region_is_the_shared_file_hash_with_progress_in_steps(tmp_path: Path) -> None:
    import hashlib

    from dxverify.hashing import CHUNK_SIZE
    from dxverify.trailer import hash_region

    data = bytes(range(256)) * (CHUNK_SIZE // 128 + 3)
    f = tmp_path / "blob"
    f.write_bytes(data)
    steps: list[int] = []
    assert hash_region(f, 5, len(data) - 9, steps.append) == hashlib.sha256(data[5:-4]).hexdigest()
    assert sum(steps) == len(data) - 9 and len(steps) == 3
    assert hash_region(f, 0, 0) == hashlib.sha256(b"").hexdigest()
