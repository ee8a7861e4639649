"""`dx verify` / `dx inspect` on a two-model executable (trailer version 2): every entry checked, a failure
names its entry, the pair's vocabularies checked as llama.cpp would."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from support.gguf_handcraft import STR, tiny_model
from test_verify_cli import TINY, dx, one_error_line

from dxverify import trailer


def _draft_bytes(name: str = "tiny-draft", token7: str = "t7") -> bytes:
    craft = tiny_model()
    tokens = [f"t{i}" for i in range(8)]
    tokens[7] = token7
    craft.kvs = [(k, t, (STR, tokens) if k == "tokenizer.ggml.tokens" else name if k == "general.name" else v)
                 for k, t, v in craft.kvs]
    return craft.build().data


def mint_two(tmp_path: Path, draft_bytes: bytes) -> tuple[Path, trailer.EmbeddedModel]:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF" + os.urandom(5000))
    (tmp_path / "model.gguf").write_bytes(TINY.data)
    (tmp_path / "draft.gguf").write_bytes(draft_bytes)
    exe = tmp_path / "dx-tiny"
    meta = {"model": "tiny", "source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "0c1e570"}
    with open(exe, "wb") as fh:
        em = trailer.write_executable(runtime, tmp_path / "model.gguf", fh, meta, draft=tmp_path / "draft.gguf",
                                      draft_metadata={"model": "tiny-draft", "source": "file:draft.gguf"})
    return exe, em


def test_both_entries_verified(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    draft = _draft_bytes()
    exe, _ = mint_two(tmp_path, draft)
    code, out, err = dx(capsys, "verify", exe)
    assert code == 0, err
    assert "draft:   'tiny-draft' from file:draft.gguf" in out and "SHA-256 matches its entry" in out, out
    code, out, _ = dx(capsys, "verify", "--json", exe)
    doc = json.loads(out)
    entries = doc["embedded"]["entries"]
    assert [e["role"] for e in entries] == ["model", "draft"] and doc["embedded"]["format_version"] == 2
    assert entries[1]["sha256"] == hashlib.sha256(draft).hexdigest() and entries[1]["sha256_ok"] is True
    assert all(e["offset"] % trailer.ALIGNMENT == 0 for e in entries)


def test_inspect_lists_the_entries(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe, em = mint_two(tmp_path, _draft_bytes())
    code, out, err = dx(capsys, "inspect", exe)
    assert code == 0, err
    assert "entries:        2 (trailer format version 2)" in out
    assert f"model  'tiny' {len(TINY.data)} bytes at byte 65536" in out
    assert f"draft  'tiny-draft' {em.draft.length} bytes at byte {em.draft.offset}" in out, out


def test_flipped_draft_byte_names_the_draft_entry(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe, em = mint_two(tmp_path, _draft_bytes())
    data = bytearray(exe.read_bytes())
    data[em.draft.offset + em.draft.length - 5] ^= 0xFF  # a weight byte of the draft
    exe.write_bytes(bytes(data))
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 4 and "the draft entry ('tiny-draft'" in line and f"at byte {em.draft.offset}" in line, line
    code, out, _ = dx(capsys, "verify", "--json", exe)
    assert json.loads(out)["errors"][0] == {"code": "sha256_mismatch", "offset": em.draft.offset,
                                            "message": json.loads(out)["errors"][0]["message"]}


def test_malformed_draft_is_named(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe, em = mint_two(tmp_path, _draft_bytes())
    data = bytearray(exe.read_bytes())
    at, _ = TINY.fields["version"]  # the same place in every GGUF
    data[em.draft.offset + at] = 99
    exe.write_bytes(bytes(data))
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 3 and f"draft entry at byte {em.draft.offset}" in line and f"at byte {em.draft.offset + at}" in line


def test_incompatible_draft_is_refused(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe, _ = mint_two(tmp_path, _draft_bytes(token7="other"))
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 2 and "token 7 differs ('t7' vs 'other')" in line, line
