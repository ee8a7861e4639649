"""dx.models.embedded.embedded_draft: the draft a two-model executable carries, as a verified ModelSource."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.fake_minted import fake_minted
from support.files import flip_byte

from dx.models import embedded
from dxverify import trailer
from dxverify.errors import IntegrityError, MalformedInputError


@pytest.fixture
def two_model_file(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake runtime + the real SmolLM2 as the model + a copy of it as the draft (same vocabulary)."""
    draft = tmp_path / "draft-copy.gguf"
    shutil.copyfile(smollm2_gguf, draft)
    exe = fake_minted(tmp_path / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf, draft=(draft, "smollm2-draft"))
    monkeypatch.setenv(embedded.SELF_ENV, str(exe))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    return exe


def test_draft_source_points_into_the_file(two_model_file: Path, smollm2_gguf: Path) -> None:
    src = embedded.embedded_draft()
    em = trailer.read_trailer(two_model_file)
    assert src is not None and em.draft is not None
    size = smollm2_gguf.stat().st_size
    assert (src.path, src.offset, src.length) == (two_model_file.resolve(), em.draft.offset, size)
    assert src.offset % trailer.ALIGNMENT == 0 and src.offset >= trailer.ALIGNMENT + size
    assert src.engine_model_arg == f"{two_model_file.resolve()}#offset={em.draft.offset}"
    assert src.display_name == "smollm2-draft" and src.sha256 == em.draft.sha256
    model = embedded.embedded_source()
    assert model is not None and model.offset == trailer.ALIGNMENT and model.display_name == "smollm2"


def test_no_draft_in_a_version_1_file(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = fake_minted(tmp_path / "one", smollm2_gguf)
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    assert embedded.embedded_draft(exe) is None
    assert embedded.embedded_source(exe) is not None


def test_flipped_draft_byte_refuses_the_start(two_model_file: Path) -> None:
    """The model is fine, but verifying it (what every start does) refuses the damaged draft."""
    em = trailer.read_trailer(two_model_file)
    flip_byte(two_model_file, em.draft.offset + em.draft.length - 100)
    with pytest.raises(IntegrityError, match="embedded draft 'smollm2-draft' does not match") as e:
        embedded.embedded_source()
    assert str(two_model_file) in str(e.value)
    with pytest.raises(IntegrityError, match="embedded draft"):
        embedded.embedded_draft()


def test_damaged_draft_header_is_named(two_model_file: Path) -> None:
    em = trailer.read_trailer(two_model_file)
    with open(two_model_file, "r+b") as f:
        f.seek(em.draft.offset + 8)  # the tensor count
        f.write((2**40).to_bytes(8, "little"))
    with pytest.raises(MalformedInputError, match=f"embedded draft 'smollm2-draft' \\(at offset {em.draft.offset}"):
        embedded.embedded_draft()
