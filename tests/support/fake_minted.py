"""A file laid out like a minted executable, without minting: fake runtime bytes, a real GGUF and the
real trailer written by DX's own writer (``dxverify.trailer.write_executable``).

The runtime reads a minted file only through its trailer (``dx.models.embedded``), so these tests need
no Nuitka build; the tests under ``tests/mint`` cover real minted files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dxverify import trailer

META: dict[str, Any] = {"model": "smollm2", "source": "test", "tier": "cpu", "dx_version": "0.1.0",
                        "llama_cpp_commit": "0" * 40}


def fake_minted(exe: Path, model: Path, meta: dict[str, Any] | None = None,
                **parts: tuple[Path, str]) -> Path:
    """Write ``exe``: model plus ``parts`` (role -> (GGUF file, its model name): ``projector``,
    ``adapter``, ``draft``) as trailer entries, behind 5 kB that start like an ELF file."""
    runtime = exe.with_name(exe.name + ".runtime")
    runtime.write_bytes(b"\x7fELF" + b"\0" * 5000)
    entries: dict[str, Any] = {}
    for role, (file, name) in parts.items():
        entries[role] = file
        entries[f"{role}_metadata"] = {"model": name, "source": "test"}
    with open(exe, "wb") as f:
        trailer.write_executable(runtime, model, f, dict(META if meta is None else meta), **entries)
    exe.chmod(0o755)
    return exe
