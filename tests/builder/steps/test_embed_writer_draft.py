"""The mint's embed writer with a draft: the same bytes as the reference writer's version 2, each entry hashed
from the pages written, the draft pinned like the model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_embed_writer import CHUNK, META, _inputs, _write

from dxverify import trailer
from dxverify.errors import IntegrityError

DRAFT_META = {"model": "tiny-draft", "source": "file:draft.gguf"}


def _draft(tmp_path: Path) -> Path:
    d = tmp_path / "draft.gguf"
    d.write_bytes(b"GGUF" + os.urandom(CHUNK + 777))
    return d


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_two_models_same_bytes_as_the_reference_writer(tmp_path: Path, kernel_copy: bool) -> None:
    rt, model = _inputs(tmp_path)
    draft = _draft(tmp_path)
    data, em, digest = _write(tmp_path, rt, model, kernel_copy=kernel_copy, draft=draft,
                              draft_metadata=dict(DRAFT_META))
    with open(tmp_path / "reference", "wb") as f:
        trailer.write_executable(rt, model, f, dict(META), draft=draft, draft_metadata=dict(DRAFT_META))
    assert data == (tmp_path / "reference").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    found = trailer.read_trailer(tmp_path / "minted")
    assert found == em and found.version == 2
    assert found.draft.sha256 == hashlib.sha256(draft.read_bytes()).hexdigest()
    assert found.draft.offset % trailer.ALIGNMENT == 0 and found.draft.offset >= found.offset + found.length
    assert found.metadata["draft"]["model"] == "tiny-draft"
    for e in found.entries:
        trailer.check_entry_hash(e)
    trailer.check_runtime(found)


def test_a_draft_off_its_pin_is_never_sealed(tmp_path: Path) -> None:
    rt, model = _inputs(tmp_path)
    with pytest.raises(IntegrityError, match=r"draft model .* expected"):
        _write(tmp_path, rt, model, draft=_draft(tmp_path), draft_expected_sha256="0" * 64)
    assert trailer.find_trailer(tmp_path / "minted") is None
