"""dx.models.details: family, parameter size and quantisation read from the GGUF, as Ollama shows them."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from dx.models.details import details_for, details_or_empty, parameter_size


def test_smollm2_reads_as_ollama_shows_it(smollm2_gguf: Path) -> None:
    d = details_for(smollm2_gguf)
    assert (d.family, d.parameter_size, d.quantization_level) == ("llama", "135M", "Q4_1")
    assert d.parameter_count == 134_515_008
    assert d.ollama() == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                          "parameter_size": "135M", "quantization_level": "Q4_1"}


@pytest.mark.parametrize("n,text", [
    (134_515_008, "135M"), (3_212_749_888, "3.2B"), (8_030_261_248, "8.0B"), (70_553_706_496, "70.6B"),
    (1_711_376_384, "1.7B"), (360_000_000, "360M"), (99_960_000, "100M"), (1_500, "1.5K"), (999, "999"),
])
def test_parameter_size(n: int, text: str) -> None:
    assert parameter_size(n) == text


def _gguf(file_type: int, arch: str = "qwen2") -> bytes:
    """A minimal valid GGUF: architecture, file type, one F32 tensor of 64 values."""
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kvs = (s("general.architecture") + struct.pack("<I", 8) + s(arch)
           + s("general.file_type") + struct.pack("<II", 4, file_type))
    tensor = s("w") + struct.pack("<IQIQ", 1, 64, 0, 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + kvs + tensor
    return head + b"\0" * (-len(head) % 32) + b"\0" * 256


def test_a_changed_file_is_read_again_and_a_bad_one_gives_empty_details(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf(15))
    assert (details_for(p).family, details_for(p).quantization_level, details_for(p).parameter_size) == (
        "qwen2", "Q4_K_M", "64")
    p.write_bytes(_gguf(7, "gemma3"))
    os.utime(p, ns=(1, 1))  # a new mtime (and the cache key has the size and inode too)
    assert (details_for(p).family, details_for(p).quantization_level) == ("gemma3", "Q8_0")
    p.write_bytes(b"GGUF" + b"\xff" * 40)
    assert details_or_empty(p).family == ""
    assert details_or_empty(tmp_path / "missing.gguf").quantization_level == ""


def test_a_model_inside_a_larger_file(tmp_path: Path, smollm2_gguf: Path) -> None:
    exe = tmp_path / "exe"
    with open(exe, "wb") as out, open(smollm2_gguf, "rb") as src:
        out.write(b"\x7fELF" + b"\0" * 65532)
        shutil.copyfileobj(src, out)
    d = details_for(exe, 65536, smollm2_gguf.stat().st_size)
    assert (d.family, d.quantization_level) == ("llama", "Q4_1")
