"""The mint with ``--mmproj``: the embed writer seals the projector as the "projector" entry (the same bytes as
the reference writer), the verify step refuses a GGUF that is not a vision projector for the model, and
``--mmproj`` without ``--model`` is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.tiny_projector import write_tiny_projector
from test_embed_writer import META, _inputs, _write
from test_embed_writer_draft import DRAFT_META, _draft

from dxbuild.context import BuildContext, MintOptions
from dxbuild.models import ResolvedModel
from dxbuild.steps import resolve_model, verify_model
from dxverify import trailer
from dxverify.errors import ConfigurationError, IncompatibleModelsError, IntegrityError, MalformedInputError

PROJ_META = {"model": "mmproj-tiny", "source": "file:mmproj-tiny.gguf"}


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_projector_same_bytes_as_the_reference_writer(tmp_path: Path, kernel_copy: bool) -> None:
    rt, model = _inputs(tmp_path)
    draft = _draft(tmp_path)
    proj = write_tiny_projector(tmp_path / "mmproj-tiny.gguf")
    data, em, digest = _write(tmp_path, rt, model, kernel_copy=kernel_copy, draft=draft,
                              draft_metadata=dict(DRAFT_META), projector=proj, projector_metadata=dict(PROJ_META))
    with open(tmp_path / "reference", "wb") as f:
        trailer.write_executable(rt, model, f, dict(META), draft=draft, draft_metadata=dict(DRAFT_META),
                                 projector=proj, projector_metadata=dict(PROJ_META))
    assert data == (tmp_path / "reference").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    found = trailer.read_trailer(tmp_path / "minted")
    assert found == em and [e.role for e in found.entries] == ["model", "draft", "projector"]
    assert found.projector is not None
    assert found.projector.sha256 == hashlib.sha256(proj.read_bytes()).hexdigest()
    assert found.metadata["projector"]["model"] == "mmproj-tiny"
    for e in found.entries:
        trailer.check_entry_hash(e)
    trailer.check_runtime(found)


def test_a_projector_off_its_pin_is_never_sealed(tmp_path: Path) -> None:
    rt, model = _inputs(tmp_path)
    proj = write_tiny_projector(tmp_path / "mmproj-tiny.gguf")
    with pytest.raises(IntegrityError, match=r"projector model .* expected"):
        _write(tmp_path, rt, model, projector=proj, projector_expected_sha256="0" * 64)
    assert trailer.find_trailer(tmp_path / "minted") is None


def _ctx(tmp_path: Path, model: Path, projector: Path) -> BuildContext:
    def resolved(name: str, path: Path) -> ResolvedModel:
        return ResolvedModel(name, path, None, path.stat().st_size, f"file:{path}", pinned=False)

    ctx = BuildContext(cell=None, out_dir=tmp_path)  # type: ignore[arg-type]
    ctx.model, ctx.projector = resolved("smollm2", model), resolved(projector.stem, projector)
    return ctx


def test_verify_step_accepts_a_projector_that_fits(tmp_path: Path, smollm2_gguf: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    ctx = _ctx(tmp_path, smollm2_gguf, write_tiny_projector(tmp_path / "mmproj-tiny.gguf"))
    verify_model.run(ctx)
    assert ctx.projector is not None and ctx.projector.name == "mmproj-tiny"


def test_verify_step_refuses_what_is_not_a_projector_for_the_model(tmp_path: Path, smollm2_gguf: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MalformedInputError, match=r"--mmproj .* is not a multimodal projector"):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, smollm2_gguf))
    narrow = write_tiny_projector(tmp_path / "mmproj-narrow.gguf", out_width=64)
    with pytest.raises(IncompatibleModelsError, match="projects to width 64, but the model's n_embd is 576"):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, narrow))


def test_mmproj_needs_a_model(tmp_path: Path) -> None:
    ctx = BuildContext(cell=None, out_dir=tmp_path, options=MintOptions(mmproj="x.gguf"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="--mmproj needs --model"):
        resolve_model.run(ctx)
