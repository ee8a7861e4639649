"""A bundle build cannot be spoiled by another one running at the same time."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dxbuild.bundle.nuitka import check_payload, nuitka_env
from dxverify.errors import ToolError

_ZSTD = b"\x28\xb5\x2f\xfd"


def _onefile(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """An ELF-looking file with a Nuitka archive payload (name, flags, size, crc, stored size, data)."""
    body = b"".join(n.encode() + b"\0" + b"\0" + struct.pack("<QII", 100, 1, len(d)) + d for n, d in entries)
    path.write_bytes(b"\x7fELF" + b"\0" * 60 + b"KAY" + body + b"\0")
    return path


def test_a_payload_with_an_empty_entry_never_enters_the_cache(tmp_path: Path) -> None:
    good = _onefile(tmp_path / "good", [("dx.bin", _ZSTD + b"a" * 8), ("_ssl.so", _ZSTD + b"b" * 8)])
    check_payload(good, tmp_path / "log")
    # What a concurrent build left: a compressed file that was still empty when this build copied it.
    bad = _onefile(tmp_path / "bad", [("dx.bin", _ZSTD + b"a" * 8), ("_ssl.so", b"")])
    with pytest.raises(ToolError, match="damaged onefile payload"):
        check_payload(bad, tmp_path / "log")


def test_each_build_compresses_into_its_own_cache(tmp_path: Path) -> None:
    """The variable is the one the installed Nuitka reads for its onefile-compression cache."""
    env = nuitka_env(tmp_path / "work")
    code = "from nuitka.utils.AppDirs import getCacheDir; print(getCacheDir('onefile-compression'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == tmp_path / "work" / "onefile-compression"
    assert "PYTHONSTARTUP" not in env and env.get("PATH") == os.environ.get("PATH")
