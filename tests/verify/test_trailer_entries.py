"""A vision projector ("projector") or a LoRA adapter ("adapter") as a further trailer entry: written after the
model (the projector after the draft, the adapter after the projector), read back, hashed and checked by
`dx verify`, refused when tampered with, when it is not one (``dxverify.projector``, ``dxverify.adapter``), or
when it does not fit the model.

The cases every role shares are parametrized over ``role``; what differs per role (the file written, the model
it must fit, the refusal's words) is in ``ROLES``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.files import flip_byte
from support.tiny_lora import write_tiny_lora
from support.tiny_projector import write_tiny_projector
from test_verify_cli import TINY, dx, one_error_line

from dxverify import trailer
from dxverify.errors import IncompatibleModelsError, MalformedInputError
from dxverify.projector import check_projector

META = {"source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "0c1e570"}


@dataclass(frozen=True)
class Role:
    """What one further entry's cases need."""

    name: str  # its model name in the trailer metadata; written as file:<name>.gguf
    write: Callable[[Path], Path]  # writes a good entry into the folder, returns its path
    real_model: bool  # True: it must fit the real SmolLM2 (an adapter); False: the tiny test model will do
    not_one: Callable[[trailer.EmbeddedModel], str]  # the refusal's words for a text model sealed under the role
    checked: str  # what `dx verify` says it proved about the entry
    after: str  # the entry it follows when both are there

    @property
    def metadata(self) -> dict[str, str]:
        return {"model": self.name, "source": f"file:{self.name}.gguf"}


ROLES = {
    "projector": Role(
        name="mmproj-tiny", write=lambda d: write_tiny_projector(d / "mmproj-tiny.gguf", out_width=32),
        real_model=False, after="draft", checked="a vision projector that fits the model",
        not_one=lambda em: "is not a multimodal projector (general.architecture 'llama', expected 'clip')"),
    "adapter": Role(
        name="tiny-lora", write=lambda d: write_tiny_lora(d / "tiny-lora.gguf"),
        real_model=True, after="projector", checked="a LoRA adapter that fits the model",
        not_one=lambda em: f"adapter entry at byte {em.adapter.offset} is not an adapter (general.type"),  # type: ignore[union-attr]
}
OTHER_ROLES = ("draft", "projector", "adapter")


def model_for(role: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The model the role's entry is sealed with: the real SmolLM2 for an adapter, else the tiny test model."""
    if ROLES[role].real_model:
        return request.getfixturevalue("smollm2_gguf")
    model = tmp_path / "model.gguf"
    model.write_bytes(TINY.data)
    return model


def mint_with(tmp_path: Path, role: str, model: Path, entry: Path | None = None,
              **others: Path) -> tuple[Path, trailer.EmbeddedModel]:
    """An executable whose model is followed by ``role``'s entry (a good one unless ``entry``), and ``others``."""
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF" + os.urandom(5000))
    entries = {role: (entry or ROLES[role].write(tmp_path), ROLES[role].metadata)}
    entries.update({other: (path, {"model": f"tiny-{other}", "source": "test"}) for other, path in others.items()})
    kwargs = {k: v for r, (path, meta) in entries.items() for k, v in ((r, path), (f"{r}_metadata", meta))}
    exe = tmp_path / "dx-tiny"
    with open(exe, "wb") as fh:
        em = trailer.write_executable(runtime, model, fh, dict(META, model=model.stem), **kwargs)
    return exe, em


@pytest.mark.parametrize("role", list(ROLES))
def test_entry_round_trips(role: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    exe, written = mint_with(tmp_path, role, model_for(role, tmp_path, request))
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION_ENTRIES and [e.role for e in em.entries] == ["model", role]
    got = getattr(em, role)
    data = (tmp_path / f"{ROLES[role].name}.gguf").read_bytes()
    assert got is not None and got == getattr(written, role)
    assert all(getattr(em, other) is None for other in OTHER_ROLES if other != role)
    assert got.offset % trailer.ALIGNMENT == 0 and got.length == len(data)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert em.metadata[role] == {**ROLES[role].metadata, "sha256": hashlib.sha256(data).hexdigest(),
                                 "length": len(data)}
    with open(exe, "rb") as f:
        f.seek(got.offset)
        assert f.read(got.length) == data


def _preceding_entry(before: str, tmp_path: Path) -> Path:
    if before == "draft":
        draft = tmp_path / "draft.gguf"
        draft.write_bytes(TINY.data)
        return draft
    return write_tiny_projector(tmp_path / "mmproj.gguf")


@pytest.mark.parametrize("role", list(ROLES))
def test_entry_follows_the_one_before(role: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The projector follows the draft, the adapter the projector: each at the next aligned offset."""
    before = ROLES[role].after
    exe, _ = mint_with(tmp_path, role, model_for(role, tmp_path, request),
                       **{before: _preceding_entry(before, tmp_path)})
    em = trailer.read_trailer(exe)
    assert [e.role for e in em.entries] == ["model", before, role]
    got, prev = getattr(em, role), getattr(em, before)
    assert got is not None and prev is not None
    assert got.offset == trailer.aligned_offset(prev.offset + prev.length)


@pytest.mark.parametrize("role", list(ROLES))
def test_dx_verify_checks_and_hashes_the_entry(role: str, capsys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 request: pytest.FixtureRequest) -> None:
    exe, _ = mint_with(tmp_path, role, model_for(role, tmp_path, request))
    code, out, err = dx(capsys, "verify", exe)
    assert code == 0, err
    assert f"{role}: '{ROLES[role].name}' from file:{ROLES[role].name}.gguf" in out, out
    assert ROLES[role].checked in out, out
    code, out, _ = dx(capsys, "verify", "--json", exe)
    entries = json.loads(out)["embedded"]["entries"]
    assert [e["role"] for e in entries] == ["model", role] and entries[1]["sha256_ok"] is True


@pytest.mark.parametrize("role", list(ROLES))
def test_dx_verify_rejects_a_tampered_entry(role: str, capsys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            request: pytest.FixtureRequest) -> None:
    """One byte of the entry's tensor data changed: exit 4, one line naming the entry."""
    exe, em = mint_with(tmp_path, role, model_for(role, tmp_path, request))
    got = getattr(em, role)
    assert got is not None
    flip_byte(exe, got.offset + got.length - 10)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 4, err
    assert f"the {role} entry ('{ROLES[role].name}'" in line and f"at byte {got.offset}" in line, line


@pytest.mark.parametrize("role", list(ROLES))
def test_dx_verify_rejects_an_entry_that_is_not_one(role: str, capsys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    request: pytest.FixtureRequest) -> None:
    """A text model sealed under the role: exit 3, one line (what the engine would choke on)."""
    not_one = tmp_path / f"not-a-{role}.gguf"
    not_one.write_bytes(TINY.data)
    exe, em = mint_with(tmp_path, role, model_for(role, tmp_path, request), entry=not_one)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 3, err
    assert ROLES[role].not_one(em) in line, line


@pytest.mark.parametrize("role", list(ROLES))
def test_old_executables_have_no_entry(role: str, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF")
    model = tmp_path / "model.gguf"
    model.write_bytes(TINY.data)
    exe = tmp_path / "dx-one"
    with open(exe, "wb") as fh:
        trailer.write_executable(runtime, model, fh, dict(META, model="tiny"))
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION and getattr(em, role) is None


def test_dx_verify_rejects_an_adapter_for_another_model(capsys, tmp_path: Path, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    exe, _ = mint_with(tmp_path, "adapter", smollm2_gguf, entry=write_tiny_lora(tmp_path / "q.gguf", arch="qwen2"))
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 2, err
    assert "is for architecture 'qwen2', the model is 'llama'" in line, line


def test_check_projector_refuses_a_width_the_model_cannot_take(tmp_path: Path, smollm2_gguf: Path) -> None:
    """mtmd refuses a projector whose output width differs from the text model's n_embd; so does the check."""
    fits = write_tiny_projector(tmp_path / "mmproj-576.gguf")
    assert check_projector(fits, model=smollm2_gguf) == "mlp"
    narrow = write_tiny_projector(tmp_path / "mmproj-64.gguf", out_width=64)
    with pytest.raises(IncompatibleModelsError, match="projects to width 64, but the model's n_embd is 576"):
        check_projector(narrow, model=smollm2_gguf)
    with pytest.raises(MalformedInputError, match="is not a multimodal projector"):
        check_projector(smollm2_gguf)
