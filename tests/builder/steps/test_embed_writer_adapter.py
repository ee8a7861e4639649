"""The mint with ``--adapter``: the embed writer seals the LoRA adapter as the "adapter" entry, last (the same
bytes as the reference writer), the verify step refuses a GGUF that is not a LoRA adapter made for the model,
and ``--adapter`` without ``--model`` is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.tiny_lora import write_tiny_lora
from support.tiny_projector import write_tiny_projector
from test_embed_writer import META, _inputs, _write
from test_embed_writer_draft import DRAFT_META, _draft

from dxbuild.context import BuildContext, MintOptions
from dxbuild.models import ResolvedModel
from dxbuild.steps import resolve_model, verify_model
from dxverify import trailer
from dxverify.errors import ConfigurationError, IncompatibleModelsError, IntegrityError, MalformedInputError

LORA_META = {"model": "tiny-lora", "source": "file:tiny-lora.gguf"}
PROJ_META = {"model": "mmproj-tiny", "source": "file:mmproj-tiny.gguf"}


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_adapter_same_bytes_as_the_reference_writer(tmp_path: Path, kernel_copy: bool) -> None:
    rt, model = _inputs(tmp_path)
    draft = _draft(tmp_path)
    proj = write_tiny_projector(tmp_path / "mmproj-tiny.gguf")
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    data, em, digest = _write(tmp_path, rt, model, kernel_copy=kernel_copy, draft=draft,
                              draft_metadata=dict(DRAFT_META), projector=proj, projector_metadata=dict(PROJ_META),
                              adapter=lora, adapter_metadata=dict(LORA_META))
    with open(tmp_path / "reference", "wb") as f:
        trailer.write_executable(rt, model, f, dict(META), draft=draft, draft_metadata=dict(DRAFT_META),
                                 projector=proj, projector_metadata=dict(PROJ_META),
                                 adapter=lora, adapter_metadata=dict(LORA_META))
    assert data == (tmp_path / "reference").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    found = trailer.read_trailer(tmp_path / "minted")
    assert found == em and [e.role for e in found.entries] == ["model", "draft", "projector", "adapter"]
    assert found.adapter is not None
    assert found.adapter.sha256 == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert found.metadata["adapter"]["model"] == "tiny-lora"
    for e in found.entries:
        trailer.check_entry_hash(e)
    trailer.check_runtime(found)


def test_an_adapter_off_its_pin_is_never_sealed(tmp_path: Path) -> None:
    rt, model = _inputs(tmp_path)
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    with pytest.raises(IntegrityError, match=r"adapter model .* expected"):
        _write(tmp_path, rt, model, adapter=lora, adapter_expected_sha256="0" * 64)
    assert trailer.find_trailer(tmp_path / "minted") is None


def _ctx(tmp_path: Path, model: Path, adapter: Path) -> BuildContext:
    def resolved(name: str, path: Path) -> ResolvedModel:
        return ResolvedModel(name, path, None, path.stat().st_size, f"file:{path}", pinned=False)

    ctx = BuildContext(cell=None, out_dir=tmp_path)  # type: ignore[arg-type]
    ctx.model, ctx.adapter = resolved("smollm2", model), resolved(adapter.stem, adapter)
    return ctx


def test_verify_step_accepts_an_adapter_that_fits(tmp_path: Path, smollm2_gguf: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    ctx = _ctx(tmp_path, smollm2_gguf, write_tiny_lora(tmp_path / "tiny-lora.gguf"))
    verify_model.run(ctx)
    assert ctx.adapter is not None and ctx.adapter.name == "tiny-lora"
    assert "adapter tiny-lora: a LoRA adapter (llama, rank 8, 8 tensor pairs, alpha 8) that fits smollm2" \
        in capsys.readouterr().err


def test_verify_step_refuses_what_is_not_an_adapter_for_the_model(tmp_path: Path, smollm2_gguf: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MalformedInputError, match=r"--adapter .* is not an adapter \(general.type 'model'"):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, smollm2_gguf))
    qwen = write_tiny_lora(tmp_path / "qwen-lora.gguf", arch="qwen2")
    with pytest.raises(IncompatibleModelsError, match="is for architecture 'qwen2', the model is 'llama'"):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, qwen))


def test_adapter_needs_a_model(tmp_path: Path) -> None:
    ctx = BuildContext(cell=None, out_dir=tmp_path, options=MintOptions(adapter="x.gguf"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="--adapter needs --model"):
        resolve_model.run(ctx)
