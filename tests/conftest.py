"""Shared fixtures. Real inputs only: models and engines come from recipes, cached."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, via its recipe (PyPI wheel, hash-checked, cached)."""
    from dxbuild.models import resolve

    return resolve("smollm2").path


@pytest.fixture(scope="session")
def cpu_engine() -> Path:
    """The real cpu llama.cpp engine (DX's patches applied), built on first use, cached in the DX cache.

    A cold build takes several minutes on 2 cores; later sessions hit the cache in about a second.
    """
    from dxbuild.engine.build import host_engine

    return host_engine("cpu")


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real OCI registry (Debian's docker-registry, distribution 2.8) on loopback, plain HTTP, no auth."""
    from support.oci_registry import start_registry

    reg = start_registry(tmp_path_factory.mktemp("oci-registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def mint_release_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, cpu_engine: Path) -> Path:
    """A release directory made by the real `dxbuild --gpu cpu --model smollm2 -o DIR`.

    Engine and Nuitka bundle come from the DX cache (built on first use: minutes);
    the directory holds the executable, SHA256SUMS and the manifest.
    """
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("mint")
    # --no-bench: the bench report has its own tests (tests/reports); the rest of the release is here.
    res = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smollm2", "--no-bench",
                          "-o", str(out)],
                         capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise AssertionError(f"dxbuild failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return out


@pytest.fixture(scope="session")
def minted_smollm2(mint_release_dir: Path) -> Path:
    """The minted dx-smollm2-cpu-linux-<arch> executable (SmolLM2 embedded in place)."""
    import platform

    return mint_release_dir / f"dx-smollm2-cpu-linux-{platform.machine()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Builds that take tens of minutes on 2 cores run only when asked for by name.

    `cuda`: the full CUDA compile (DX_TEST_CUDA=1); `repro`: two cold engine builds
    compared byte for byte (DX_TEST_REPRO=1); `vulkan` and `aarch64`: the vulkan engine
    run on lavapipe and the cross-built arm64 engine run under qemu (DX_TEST_VULKAN=1,
    DX_TEST_AARCH64=1; cached after the first build). All are also commands: see README.
    `soak`: the short soak-and-chaos run (DX_TEST_SOAK=1): opt-in while one invariant does not hold
    on every run (issue #25: in the 60-minute run 18 of 637 client disconnects freed their slot after
    1.05-3.43 s, not within 1 s; a 2.5-minute run sees about 25 disconnects).
    """
    import os

    gates = {"cuda": "DX_TEST_CUDA", "repro": "DX_TEST_REPRO", "vulkan": "DX_TEST_VULKAN",
             "aarch64": "DX_TEST_AARCH64", "soak": "DX_TEST_SOAK"}
    why = {"soak": "slot frees within 1 s do not hold on every run yet (issue #25)"}
    for marker, env in gates.items():
        if os.environ.get(env) == "1":
            continue
        skip = pytest.mark.skip(reason=f"{marker}: {why.get(marker, 'tens of minutes on 2 cores')}; set {env}=1 to run")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    for marker, what in (("vulkan", "the vulkan tier on lavapipe (cold build: tens of minutes); DX_TEST_VULKAN=1"),
                         ("aarch64", "the arm64 cpu engine cross-built, run under qemu; DX_TEST_AARCH64=1"),
                         ("soak", "the short soak-and-chaos run (about 4 minutes; DX_SOAK_MINUTES=60 for the long "
                                  "one); DX_TEST_SOAK=1")):
        config.addinivalue_line("markers", f"{marker}: {what}")
