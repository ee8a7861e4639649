"""The mint with ``--mmproj`` or ``--adapter``: the embed writer seals the file as the "projector" or "adapter"
entry (the same bytes as the reference writer; the projector after the draft, the adapter last), the verify step
refuses a GGUF that is not a vision projector / LoRA adapter made for the model, and either flag without
``--model`` is refused.

The cases every role shares are parametrized over ``role``; what differs per role is in ``ROLES``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Role:
    """What one further entry's cases need."""

    name: str  # its model name; written as <name>.gguf
    write: Callable[[Path], Path]  # a good entry, written to the given path
    flag: str  # dxbuild's flag for it
    option: str  # the MintOptions field behind the flag
    not_one: str  # the refusal (a regex) of the real model passed as this role
    wrong: Callable[[Path], Path]  # writes one of this role made for another model
    wrong_words: str  # its refusal (IncompatibleModelsError; a regex)
    accepted: str  # what the verify step says of a good one

    @property
    def metadata(self) -> dict[str, str]:
        return {"model": self.name, "source": f"file:{self.name}.gguf"}


ROLES = {
    "projector": Role(
        name="mmproj-tiny", write=write_tiny_projector, flag="--mmproj", option="mmproj",
        not_one=r"--mmproj .* is not a multimodal projector",
        wrong=lambda d: write_tiny_projector(d / "mmproj-narrow.gguf", out_width=64),
        wrong_words="projects to width 64, but the model's n_embd is 576",
        accepted="projector mmproj-tiny: a vision projector (mlp) that fits smollm2"),
    "adapter": Role(
        name="tiny-lora", write=write_tiny_lora, flag="--adapter", option="adapter",
        not_one=r"--adapter .* is not an adapter \(general.type 'model'",
        wrong=lambda d: write_tiny_lora(d / "qwen-lora.gguf", arch="qwen2"),
        wrong_words="is for architecture 'qwen2', the model is 'llama'",
        accepted="adapter tiny-lora: a LoRA adapter (llama, rank 8, 8 tensor pairs, alpha 8) that fits smollm2"),
}
ORDER = ("draft", "projector", "adapter")  # the order the entries follow the model in


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
@pytest.mark.parametrize("role", list(ROLES))
def test_entry_same_bytes_as_the_reference_writer(tmp_path: Path, role: str, kernel_copy: bool) -> None:
    """The role's entry with every entry before it (a draft; for the adapter a projector too)."""
    rt, model = _inputs(tmp_path)
    entries = {"draft": (_draft(tmp_path), dict(DRAFT_META))}
    for r in ORDER[1:ORDER.index(role) + 1]:
        entries[r] = (ROLES[r].write(tmp_path / f"{ROLES[r].name}.gguf"), ROLES[r].metadata)
    kwargs = {k: v for r, (path, meta) in entries.items() for k, v in ((r, path), (f"{r}_metadata", meta))}
    data, em, digest = _write(tmp_path, rt, model, kernel_copy=kernel_copy, **kwargs)
    with open(tmp_path / "reference", "wb") as f:
        trailer.write_executable(rt, model, f, dict(META), **kwargs)
    assert data == (tmp_path / "reference").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    found = trailer.read_trailer(tmp_path / "minted")
    assert found == em and [e.role for e in found.entries] == ["model", *entries]
    assert [e.role for e in found.entries][-1] == role
    got = getattr(found, role)
    assert got is not None
    assert got.sha256 == hashlib.sha256(entries[role][0].read_bytes()).hexdigest()
    assert found.metadata[role]["model"] == ROLES[role].name
    for e in found.entries:
        trailer.check_entry_hash(e)
    trailer.check_runtime(found)


@pytest.mark.parametrize("role", list(ROLES))
def test_an_entry_off_its_pin_is_never_sealed(tmp_path: Path, role: str) -> None:
    rt, model = _inputs(tmp_path)
    entry = ROLES[role].write(tmp_path / f"{ROLES[role].name}.gguf")
    with pytest.raises(IntegrityError, match=rf"{role} model .* expected"):
        _write(tmp_path, rt, model, **{role: entry, f"{role}_expected_sha256": "0" * 64})
    assert trailer.find_trailer(tmp_path / "minted") is None


def _ctx(tmp_path: Path, model: Path, role: str, entry: Path) -> BuildContext:
    def resolved(name: str, path: Path) -> ResolvedModel:
        return ResolvedModel(name, path, None, path.stat().st_size, f"file:{path}", pinned=False)

    ctx = BuildContext(cell=None, out_dir=tmp_path)  # type: ignore[arg-type]
    ctx.model = resolved("smollm2", model)
    setattr(ctx, role, resolved(entry.stem, entry))
    return ctx


@pytest.mark.parametrize("role", list(ROLES))
def test_verify_step_accepts_an_entry_that_fits(tmp_path: Path, role: str, smollm2_gguf: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    ctx = _ctx(tmp_path, smollm2_gguf, role, ROLES[role].write(tmp_path / f"{ROLES[role].name}.gguf"))
    verify_model.run(ctx)
    got = getattr(ctx, role)
    assert got is not None and got.name == ROLES[role].name
    assert ROLES[role].accepted in capsys.readouterr().err


@pytest.mark.parametrize("role", list(ROLES))
def test_verify_step_refuses_what_is_not_one_for_the_model(tmp_path: Path, role: str, smollm2_gguf: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MalformedInputError, match=ROLES[role].not_one):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, role, smollm2_gguf))
    with pytest.raises(IncompatibleModelsError, match=ROLES[role].wrong_words):
        verify_model.run(_ctx(tmp_path, smollm2_gguf, role, ROLES[role].wrong(tmp_path)))


@pytest.mark.parametrize("role", list(ROLES))
def test_entry_flag_needs_a_model(tmp_path: Path, role: str) -> None:
    flag = ROLES[role].flag
    ctx = BuildContext(cell=None, out_dir=tmp_path, options=MintOptions(**{ROLES[role].option: "x.gguf"}))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=f"{flag} needs --model"):
        resolve_model.run(ctx)


def test_every_entry_is_resolved_with_its_role_in_order(tmp_path: Path) -> None:
    """--draft, --mmproj and --adapter beside --model: each resolved into its BuildContext field and recorded
    as a model artifact with its role, after the model, in that order."""
    model, draft = tmp_path / "m.gguf", tmp_path / "d.gguf"
    model.write_bytes(_inputs(tmp_path)[1].read_bytes())
    draft.write_bytes(model.read_bytes())
    paths = {"draft": draft, **{r: ROLES[r].write(tmp_path / f"{ROLES[r].name}.gguf") for r in ROLES}}
    ctx = BuildContext(cell=None, out_dir=tmp_path,  # type: ignore[arg-type]
                       options=MintOptions(model=str(model), draft=str(draft), mmproj=str(paths["projector"]),
                                           adapter=str(paths["adapter"])))
    resolve_model.run(ctx)
    assert ctx.model is not None and ctx.model.path == model
    assert {r: getattr(ctx, r).path for r in ORDER} == paths  # type: ignore[union-attr]
    assert [a.extra["role"] for a in ctx.artifacts] == ["model", *ORDER]
