"""A vision projector as the "projector" trailer entry: written, read back, checked by `dx verify`, refused when
tampered with or when it is not a projector (``dxverify.projector``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.files import flip_byte
from support.tiny_projector import write_tiny_projector
from test_verify_cli import TINY, dx, one_error_line

from dxverify import trailer
from dxverify.errors import IncompatibleModelsError, MalformedInputError
from dxverify.projector import check_projector

META = {"model": "tiny", "source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "0c1e570"}


def mint_with_projector(tmp_path: Path, projector: Path | None = None,
                        draft: Path | None = None) -> tuple[Path, trailer.EmbeddedModel]:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF" + os.urandom(5000))
    model = tmp_path / "model.gguf"
    model.write_bytes(TINY.data)
    projector = projector or write_tiny_projector(tmp_path / "mmproj-tiny.gguf", out_width=32)
    exe = tmp_path / "dx-tiny"
    with open(exe, "wb") as fh:
        em = trailer.write_executable(
            runtime, model, fh, dict(META), projector=projector,
            projector_metadata={"model": "mmproj-tiny", "source": "file:mmproj-tiny.gguf"},
            draft=draft, draft_metadata={"model": "tiny-draft", "source": "file:draft.gguf"} if draft else None)
    return exe, em


def test_projector_entry_round_trips(tmp_path: Path) -> None:
    exe, written = mint_with_projector(tmp_path)
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION_ENTRIES and [e.role for e in em.entries] == ["model", "projector"]
    proj = em.projector
    data = (tmp_path / "mmproj-tiny.gguf").read_bytes()
    assert proj is not None and proj == written.projector and em.draft is None
    assert proj.offset % trailer.ALIGNMENT == 0 and proj.length == len(data)
    assert proj.sha256 == hashlib.sha256(data).hexdigest()
    assert em.metadata["projector"] == {"model": "mmproj-tiny", "source": "file:mmproj-tiny.gguf",
                                        "sha256": proj.sha256, "length": len(data)}
    with open(exe, "rb") as f:
        f.seek(proj.offset)
        assert f.read(proj.length) == data


def test_projector_follows_the_draft(tmp_path: Path) -> None:
    draft = tmp_path / "draft.gguf"
    draft.write_bytes(TINY.data)
    exe, _ = mint_with_projector(tmp_path, draft=draft)
    em = trailer.read_trailer(exe)
    assert [e.role for e in em.entries] == ["model", "draft", "projector"]
    assert em.projector is not None and em.draft is not None
    assert em.projector.offset == trailer.aligned_offset(em.draft.offset + em.draft.length)


def test_dx_verify_checks_the_projector_entry(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe, _ = mint_with_projector(tmp_path)
    code, out, err = dx(capsys, "verify", exe)
    assert code == 0, err
    assert "projector: 'mmproj-tiny' from file:mmproj-tiny.gguf" in out, out
    code, out, _ = dx(capsys, "verify", "--json", exe)
    entries = json.loads(out)["embedded"]["entries"]
    assert [e["role"] for e in entries] == ["model", "projector"] and entries[1]["sha256_ok"] is True


def test_dx_verify_rejects_a_tampered_projector(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One byte of the projector's tensor data changed: exit 4, one line naming the projector entry."""
    exe, em = mint_with_projector(tmp_path)
    assert em.projector is not None
    flip_byte(exe, em.projector.offset + em.projector.length - 10)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 4, err
    assert "the projector entry ('mmproj-tiny'" in line and f"at byte {em.projector.offset}" in line, line


def test_dx_verify_rejects_a_projector_entry_that_is_not_one(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A text model sealed under the "projector" role: refused with one line (what the engine would choke on)."""
    not_clip = tmp_path / "not-a-projector.gguf"
    not_clip.write_bytes(TINY.data)
    exe, _ = mint_with_projector(tmp_path, projector=not_clip)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 3, err
    assert "is not a multimodal projector (general.architecture 'llama', expected 'clip')" in line, line


def test_old_executables_have_no_projector(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF")
    model = tmp_path / "model.gguf"
    model.write_bytes(TINY.data)
    exe = tmp_path / "dx-one"
    with open(exe, "wb") as fh:
        trailer.write_executable(runtime, model, fh, dict(META))
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION and em.projector is None


def test_check_projector_refuses_a_width_the_model_cannot_take(tmp_path: Path, smollm2_gguf: Path) -> None:
    """mtmd refuses a projector whose output width differs from the text model's n_embd; so does the check."""
    fits = write_tiny_projector(tmp_path / "mmproj-576.gguf")
    assert check_projector(fits, model=smollm2_gguf) == "mlp"
    narrow = write_tiny_projector(tmp_path / "mmproj-64.gguf", out_width=64)
    with pytest.raises(IncompatibleModelsError, match="projects to width 64, but the model's n_embd is 576"):
        check_projector(narrow, model=smollm2_gguf)
    with pytest.raises(MalformedInputError, match="is not a multimodal projector"):
        check_projector(smollm2_gguf)
