"""A LoRA adapter as the "adapter" trailer entry: written after the model (and draft, projector), read back,
hashed and checked by `dx verify`, refused when tampered with, when it is not an adapter, or when it does not
fit the model (``dxverify.adapter``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from support.files import flip_byte
from support.tiny_lora import write_tiny_lora
from support.tiny_projector import write_tiny_projector
from test_verify_cli import TINY, dx, one_error_line

from dxverify import trailer

META = {"model": "smollm2", "source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "0c1e570"}
ADAPTER_META = {"model": "tiny-lora", "source": "file:tiny-lora.gguf"}


def mint_with_adapter(tmp_path: Path, model: Path, adapter: Path | None = None,
                      projector: Path | None = None) -> tuple[Path, trailer.EmbeddedModel]:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF" + os.urandom(5000))
    adapter = adapter or write_tiny_lora(tmp_path / "tiny-lora.gguf")
    exe = tmp_path / "dx-smollm2"
    with open(exe, "wb") as fh:
        em = trailer.write_executable(
            runtime, model, fh, dict(META), adapter=adapter, adapter_metadata=dict(ADAPTER_META),
            projector=projector, projector_metadata={"model": "mmproj-tiny", "source": "test"} if projector else None)
    return exe, em


def test_adapter_entry_round_trips(tmp_path: Path, smollm2_gguf: Path) -> None:
    exe, written = mint_with_adapter(tmp_path, smollm2_gguf)
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION_ENTRIES and [e.role for e in em.entries] == ["model", "adapter"]
    ad = em.adapter
    data = (tmp_path / "tiny-lora.gguf").read_bytes()
    assert ad is not None and ad == written.adapter and em.draft is None and em.projector is None
    assert ad.offset % trailer.ALIGNMENT == 0 and ad.length == len(data)
    assert em.metadata["adapter"] == {**ADAPTER_META, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    with open(exe, "rb") as f:
        f.seek(ad.offset)
        assert f.read(ad.length) == data


def test_adapter_follows_the_projector(tmp_path: Path, smollm2_gguf: Path) -> None:
    exe, _ = mint_with_adapter(tmp_path, smollm2_gguf, projector=write_tiny_projector(tmp_path / "mmproj.gguf"))
    em = trailer.read_trailer(exe)
    assert [e.role for e in em.entries] == ["model", "projector", "adapter"]
    assert em.adapter is not None and em.projector is not None
    assert em.adapter.offset == trailer.aligned_offset(em.projector.offset + em.projector.length)


def test_dx_verify_checks_and_hashes_the_adapter_entry(capsys, tmp_path: Path, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    exe, _ = mint_with_adapter(tmp_path, smollm2_gguf)
    code, out, err = dx(capsys, "verify", exe)
    assert code == 0, err
    assert "adapter: 'tiny-lora' from file:tiny-lora.gguf" in out and "a LoRA adapter that fits the model" in out, out
    code, out, _ = dx(capsys, "verify", "--json", exe)
    entries = json.loads(out)["embedded"]["entries"]
    assert [e["role"] for e in entries] == ["model", "adapter"] and entries[1]["sha256_ok"] is True


def test_dx_verify_rejects_a_tampered_adapter(capsys, tmp_path: Path, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    exe, em = mint_with_adapter(tmp_path, smollm2_gguf)
    assert em.adapter is not None
    flip_byte(exe, em.adapter.offset + em.adapter.length - 10)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 4, err
    assert "the adapter entry ('tiny-lora'" in line and f"at byte {em.adapter.offset}" in line, line


def test_dx_verify_rejects_an_adapter_entry_that_is_not_one(capsys, tmp_path: Path, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    """A text model sealed under the "adapter" role: exit 3, one line (llama.cpp: expect general.type 'adapter')."""
    not_lora = tmp_path / "not-a-lora.gguf"
    not_lora.write_bytes(TINY.data)
    exe, em = mint_with_adapter(tmp_path, smollm2_gguf, adapter=not_lora)
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 3, err
    assert f"adapter entry at byte {em.adapter.offset} is not an adapter (general.type" in line, line  # type: ignore[union-attr]


def test_dx_verify_rejects_an_adapter_for_another_model(capsys, tmp_path: Path, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    exe, _ = mint_with_adapter(tmp_path, smollm2_gguf, adapter=write_tiny_lora(tmp_path / "q.gguf", arch="qwen2"))
    code, _, err = dx(capsys, "verify", exe)
    line = one_error_line(err)
    assert code == 2, err
    assert "is for architecture 'qwen2', the model is 'llama'" in line, line


def test_old_executables_have_no_adapter(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF")
    model = tmp_path / "model.gguf"
    model.write_bytes(TINY.data)
    exe = tmp_path / "dx-one"
    with open(exe, "wb") as fh:
        trailer.write_executable(runtime, model, fh, dict(META))
    em = trailer.read_trailer(exe)
    assert em.version == trailer.FORMAT_VERSION and em.adapter is None
