"""The mint's embed writer: one kernel copy of the model, hashed from the written pages — and exactly
the bytes dxverify.trailer.write_executable (the layout's reference) writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from dxbuild.steps.embed import write_minted
from dxverify import trailer
from dxverify.errors import IntegrityError

META = {"model": "tiny", "source": "test", "sha256": None, "tier": "cpu", "dx_version": "0.1.0",
        "llama_cpp_commit": "0" * 40}
CHUNK = 1 << 20


def _inputs(tmp_path: Path, model_dir: Path | None = None) -> tuple[Path, Path]:
    rt = tmp_path / "runtime"
    rt.write_bytes(b"\x7fELF" + os.urandom(70_001))
    model = (model_dir or tmp_path) / "model.gguf"
    model.write_bytes(b"GGUF" + os.urandom(3 * CHUNK + 12_345))  # three whole chunks and a part
    return rt, model


def _reference(tmp_path: Path, rt: Path, model: Path) -> bytes:
    with open(tmp_path / "reference", "wb") as f:
        trailer.write_executable(rt, model, f, dict(META))
    return (tmp_path / "reference").read_bytes()


def _write(tmp_path: Path, rt: Path, model: Path, **kw: object) -> tuple[bytes, trailer.EmbeddedModel, str]:
    dest = tmp_path / "minted"
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        em, digest = write_minted(rt, model, fd, dict(META), dest=dest, chunk=CHUNK, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return dest.read_bytes(), em, digest


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_same_bytes_as_the_reference_writer_and_digests_of_what_was_written(tmp_path: Path,
                                                                             kernel_copy: bool) -> None:
    rt, model = _inputs(tmp_path)
    data, em, digest = _write(tmp_path, rt, model, kernel_copy=kernel_copy)
    assert data == _reference(tmp_path, rt, model)
    assert digest == hashlib.sha256(data).hexdigest()
    assert em.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    found = trailer.read_trailer(tmp_path / "minted")
    assert (found.offset, found.length, found.sha256) == (em.offset, em.length, em.sha256)
    assert em.file_size == len(data)
    trailer.check_model_hash(found)
    trailer.check_runtime(found)


def test_model_on_another_filesystem(tmp_path: Path) -> None:
    """copy_file_range may refuse two filesystems (EXDEV): the copy goes through memory instead."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        rt, model = _inputs(tmp_path, Path(other))
        data, _em, digest = _write(tmp_path, rt, model)
        assert data == _reference(tmp_path, rt, model)
        assert digest == hashlib.sha256(data).hexdigest()


def test_a_model_off_its_pin_is_never_sealed(tmp_path: Path) -> None:
    rt, model = _inputs(tmp_path)
    with pytest.raises(IntegrityError, match="expected"):
        _write(tmp_path, rt, model, expected_sha256="0" * 64)
    assert trailer.find_trailer(tmp_path / "minted") is None


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-memory"])
def test_a_model_that_shrinks_while_it_is_copied_is_an_error(tmp_path: Path, kernel_copy: bool) -> None:
    from dxbuild.steps.embed import _copy_span
    from dxverify.errors import MalformedInputError

    (tmp_path / "m").write_bytes(b"x" * 1000)
    with (open(tmp_path / "m", "rb") as src, open(tmp_path / "out", "wb") as dst,
          pytest.raises(MalformedInputError, match="ended at byte 1000")):
        _copy_span(src.fileno(), dst.fileno(), 0, 0, 2000, kernel_copy, tmp_path / "m")
