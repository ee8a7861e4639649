"""cuda13: the toolkit assembled from PyPI wheels configures llama.cpp here (no GPU needed);
the full compile is a separate, opt-in test (marked ``cuda``: DX_TEST_CUDA=1)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from dxbuild.engine.build import configure_only, host_engine
from dxbuild.toolchains.plan import host_cell
from dxmatrix.recipes import get_tier, load_engine_recipe


@pytest.mark.integration
def test_cuda13_configures_with_pypi_toolkit() -> None:
    """Downloads ~0.5 GB of wheels once (cached) and runs CMake configure: a few minutes cold."""
    recipe = load_engine_recipe()
    cell = host_cell(get_tier("cuda13"), recipe, cuda_archs=("90",))
    build = configure_only(cell, recipe, echo=None)
    cache = (build / "CMakeCache.txt").read_text()
    compiler = re.search(r"^CMAKE_CUDA_COMPILER:\w+=(.*)$", cache, re.M)
    assert compiler and "/toolchains/cuda13-" in compiler.group(1), "nvcc comes from the DX cache, not the host"
    assert re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=90$", cache, re.M)
    assert re.search(r"^GGML_CUDA:BOOL=ON$", cache, re.M)
    assert re.search(r"^GGML_CUDA_NO_VMM:BOOL=ON$", cache, re.M)
    assert (build / "build.ninja").is_file()
    rules = (build / "build.ninja").read_text()
    assert "ggml-cuda" in rules
    version = subprocess.run([compiler.group(1), "--version"], capture_output=True, text=True).stdout
    assert "release 13.0" in version


@pytest.mark.cuda
@pytest.mark.integration
def test_cuda13_full_compile_one_arch() -> None:
    """The whole cuda13 engine for sm_90 only: ~25+ minutes on 2 cores. DX_TEST_CUDA=1 to run."""
    archs = tuple(os.environ.get("DX_TEST_CUDA_ARCHS", "90").split(";"))
    t0 = time.monotonic()
    engine = host_engine("cuda13", cuda_archs=archs)
    info = json.loads((engine / "engine.json").read_text())
    print(f"cuda13 engine: {engine} in {time.monotonic() - t0:.0f}s, {info['size_bytes'] / 1e6:.1f} MB")
    assert info["tier"] == "cuda13" and info["cuda_archs"] == list(archs)
    assert (engine / "bin" / "libggml-cuda.so").is_file()
    assert (engine / "bin" / "llama-server").is_file()
    needed = subprocess.run(["readelf", "-d", str(engine / "bin" / "libggml-cuda.so")],
                            capture_output=True, text=True).stdout
    assert "libcuda.so" not in needed, "built without the driver API (GGML_CUDA_NO_VMM)"
