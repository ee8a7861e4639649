"""dx.models.embedded.embedded_part(em, "projector"): the projector entry of an executable, extracted once to a verified
cache file for the engine's ``--mmproj`` (its loader, tools/mtmd/clip.cpp, opens whole files only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.fake_minted import fake_minted
from support.files import flip_byte
from support.tiny_projector import write_tiny_projector

from dx.models import embedded
from dx.models.capabilities import capabilities_for, projector_for
from dxverify import trailer
from dxverify.errors import IntegrityError


@pytest.fixture
def vision_file(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake runtime + the real SmolLM2 + a tiny random-weight projector as the "projector" entry."""
    proj = write_tiny_projector(tmp_path / "mmproj-tiny.gguf")
    exe = fake_minted(tmp_path / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf, projector=(proj, "mmproj-tiny"))
    monkeypatch.setenv(embedded.SELF_ENV, str(exe))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    return exe


def test_projector_is_extracted_once_and_verified(vision_file: Path, tmp_path: Path) -> None:
    em = trailer.read_trailer(vision_file)
    got = embedded.embedded_part(em, "projector")
    assert em.projector is not None and got is not None
    assert got == tmp_path / "dxhome" / "cache" / "projectors" / f"sha256-{em.projector.sha256}.gguf"
    assert got.read_bytes() == (tmp_path / "mmproj-tiny.gguf").read_bytes()
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # no temporary file left behind
    before = got.stat()
    again = embedded.embedded_part(em, "projector")
    assert again == got and (got.stat().st_ino, got.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_damaged_cache_file_is_replaced(vision_file: Path) -> None:
    em = trailer.read_trailer(vision_file)
    got = embedded.embedded_part(em, "projector")
    assert got is not None and em.projector is not None
    flip_byte(got, 100)
    assert hashlib.sha256(got.read_bytes()).hexdigest() != em.projector.sha256
    assert embedded.embedded_part(em, "projector") == got
    assert hashlib.sha256(got.read_bytes()).hexdigest() == em.projector.sha256


def test_projector_for_the_embedded_model(vision_file: Path) -> None:
    """The engine's --mmproj for the embedded model is the extracted file, and /api/show lists vision."""
    src = embedded.embedded_source()
    assert src is not None
    proj = projector_for(src)
    assert proj is not None and proj.parent.name == "projectors" and proj.is_file()
    assert "vision" in capabilities_for(src).names()


def test_a_tampered_projector_entry_refuses_the_start(vision_file: Path, tmp_path: Path) -> None:
    em = trailer.read_trailer(vision_file)
    assert em.projector is not None
    flip_byte(vision_file, em.projector.offset + em.projector.length - 10)
    with pytest.raises(IntegrityError, match=r"the embedded projector .* has SHA-256 .*, the trailer says") as e:
        embedded.embedded_source()
    assert str(vision_file) in str(e.value) and "\n" not in str(e.value)
    cache = tmp_path / "dxhome" / "cache" / "projectors"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written or unverified kept


def test_no_projector_without_the_entry(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executable minted before projectors (version 1): no vision, no --mmproj, served as before."""
    exe = fake_minted(tmp_path / "one", smollm2_gguf)
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    src = embedded.embedded_source(exe)
    assert src is not None and projector_for(src) is None
    assert "vision" not in capabilities_for(src).names()
    assert embedded.embedded_part(trailer.read_trailer(exe), "projector") is None
    assert not os.path.exists(tmp_path / "dxhome" / "cache" / "projectors")
