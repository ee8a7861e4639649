"""Cross-checks against the real engine: ggml's own type table, and `dx verify` on a minted executable."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import pytest

from dxverify.ggml_types import GGML_TYPE_COUNT, GGML_TYPES

pytestmark = pytest.mark.integration


def test_type_table_matches_the_built_libggml(cpu_engine: Path) -> None:
    """Ask the compiled libggml-base (the pinned commit) for every type's block and byte size."""
    libs = sorted((cpu_engine / "lib").glob("libggml-base.so*"))
    assert libs, f"no libggml-base in {cpu_engine / 'lib'}"
    lib = ctypes.CDLL(str(libs[0]))
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_name.restype = ctypes.c_char_p
    for tid in range(GGML_TYPE_COUNT):
        mine = GGML_TYPES[tid]
        assert lib.ggml_blck_size(tid) == mine.block_size, tid
        assert lib.ggml_type_size(tid) == mine.type_size, tid
        name = lib.ggml_type_name(tid).decode()
        if not mine.removed:
            assert name.upper() == mine.name.upper(), (tid, name)
    engine = json.loads((cpu_engine / "engine.json").read_text())
    commit = engine.get("llama_cpp_commit") or engine.get("commit")
    if commit:
        assert commit.startswith("0c1e57098bba43ac29e6e3b677cdceebdd22334f"[: len(commit)])


def test_dx_verify_accepts_a_minted_executable(minted_smollm2: Path, smollm2_gguf: Path) -> None:
    r = subprocess.run(
        ["dx", "verify", "--json", minted_smollm2], capture_output=True, text=True, timeout=600
    )
    doc = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert doc["kind"] == "executable" and doc["ok"] is True
    assert doc["expected_from"] == "trailer"
    assert doc["summary"]["architecture"] == "llama"
    assert doc["summary"]["file_size"] == smollm2_gguf.stat().st_size
    assert doc["summary"]["embedded_at"] % 65536 == 0
