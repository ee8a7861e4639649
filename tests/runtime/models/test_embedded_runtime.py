"""dx.models.embedded: how the runtime finds and uses the model appended to its own file (no Nuitka needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fake_minted import fake_minted

from dx.models import embedded
from dxverify import trailer
from dxverify.errors import IntegrityError, MalformedInputError


@pytest.fixture
def minted_file(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file laid out like a minted executable (fake runtime bytes + the real SmolLM2)."""
    exe = fake_minted(tmp_path / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf)
    monkeypatch.setenv(embedded.SELF_ENV, str(exe))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    return exe


def test_not_compiled_and_no_override_means_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.SELF_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/dx/__main__.py"])
    assert embedded.self_executable() is None
    assert embedded.find_embedded() is None


def test_embedded_source_points_the_engine_into_the_file(minted_file: Path, smollm2_gguf: Path) -> None:
    src = embedded.embedded_source()
    assert src is not None
    assert src.path == minted_file.resolve()
    assert src.offset == trailer.ALIGNMENT
    assert src.length == smollm2_gguf.stat().st_size
    assert src.engine_model_arg == f"{minted_file.resolve()}#offset={trailer.ALIGNMENT}"
    assert src.display_name == "smollm2"


def test_flipped_model_byte_is_refused_naming_the_executable(minted_file: Path) -> None:
    em = trailer.read_trailer(minted_file)
    with open(minted_file, "r+b") as f:
        f.seek(em.offset + em.length - 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match its recorded SHA-256") as e:
        embedded.embedded_source()
    assert str(minted_file) in str(e.value)


def test_damaged_gguf_header_is_refused(minted_file: Path) -> None:
    em = trailer.read_trailer(minted_file)
    with open(minted_file, "r+b") as f:
        f.seek(em.offset + 8)  # the tensor count
        f.write((2**40).to_bytes(8, "little"))
    with pytest.raises(MalformedInputError, match="embedded model"):
        embedded.embedded_source()


def test_run_arguments_take_a_lone_prompt_for_the_embedded_model(minted_file: Path) -> None:
    assert embedded.run_arguments("Why is the sky blue?", ()) == ("smollm2", ("Why is the sky blue?",))
    assert embedded.run_arguments("Hello", ("there",)) == ("smollm2", ("Hello", "there"))
    assert embedded.run_arguments("smollm2", ("hi",)) == ("smollm2", ("hi",))
    assert embedded.run_arguments("hf:a/b/c.gguf", ("hi",)) == ("hf:a/b/c.gguf", ("hi",))


def test_run_arguments_unchanged_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.SELF_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["x.py"])
    assert embedded.run_arguments("Why?", ()) == ("Why?", ())
