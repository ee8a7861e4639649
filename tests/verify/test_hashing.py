"""Streamed SHA-256 (against sha256sum and hashlib) and where expected hashes come from."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dxverify.errors import ConfigurationError, MalformedInputError
from dxverify.hashing import CHUNK_SIZE, expected_sha256_for, normalize_sha256, sha256_file


def test_matches_sha256sum_across_chunk_boundaries(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE * 2 + 12345)
    f = tmp_path / "blob"
    f.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(f) == want
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", f], capture_output=True, text=True).stdout.split()[0] == want


def test_region_and_progress(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE + 999)
    f = tmp_path / "blob"
    f.write_bytes(data)
    seen: list[tuple[int, int]] = []
    got = sha256_file(f, 100, CHUNK_SIZE + 5, progress=lambda d, t: seen.append((d, t)))
    assert got == hashlib.sha256(data[100 : 100 + CHUNK_SIZE + 5]).hexdigest()
    assert seen[-1] == (CHUNK_SIZE + 5, CHUNK_SIZE + 5) and len(seen) == 2
    assert sha256_file(f, len(data), 0) == hashlib.sha256(b"").hexdigest()
    assert sha256_file(f, 10) == hashlib.sha256(data[10:]).hexdigest()


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, 10**9), (10**9, None), (5, -1)])
def test_region_outside_the_file(tmp_path: Path, offset: int, length: int | None) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 100)
    with pytest.raises(MalformedInputError, match="outside"):
        sha256_file(f, offset, length)


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(MalformedInputError, match="directory"):
        sha256_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(MalformedInputError, match="not a regular file"):
        sha256_file(fifo)  # must not block opening it
    with pytest.raises(MalformedInputError, match="cannot read"):
        sha256_file(tmp_path / "missing")


def test_expected_from_blob_name(tmp_path: Path) -> None:
    h = "ab" * 32
    assert expected_sha256_for(tmp_path / f"sha256-{h}") == h
    assert expected_sha256_for(tmp_path / f"sha256-{h.upper()}") == h
    assert expected_sha256_for(tmp_path / f"sha256-{h[:-1]}") is None
    assert expected_sha256_for(tmp_path / "model.gguf") is None


def test_expected_from_sha256sums(tmp_path: Path) -> None:
    h1, h2 = "12" * 32, "34" * 32
    (tmp_path / "SHA256SUMS").write_text(f"{h1}  model.gguf\n{h2} *other.bin\n\ngarbage\n")
    assert expected_sha256_for(tmp_path / "model.gguf") == h1
    assert expected_sha256_for(tmp_path / "other.bin") == h2
    assert expected_sha256_for(tmp_path / "absent.gguf") is None
    (tmp_path / "SHA256SUMS").write_text("nothex  model.gguf\n")
    with pytest.raises(ConfigurationError, match="SHA256SUMS:1"):
        expected_sha256_for(tmp_path / "model.gguf")


def test_normalize() -> None:
    h = "Ab" * 32
    assert normalize_sha256(h) == h.lower()
    assert normalize_sha256(f"sha256:{h}") == h.lower()
    with pytest.raises(ConfigurationError, match="--sha256"):
        normalize_sha256("xyz")
