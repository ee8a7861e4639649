"""The GPU check as far as a machine without a GPU goes: the tarball it needs, and its first line.

``gpu_check.sh`` itself runs on a GPU machine (README); here the tarball is built
and looked into, the trimmed llama.cpp tree is configured by CMake (CPU only: no
nvcc needed), the cut-down model is run by the real cpu engine, and the script
is shellcheck-clean and stops with one line when there is no GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import make_source_tarball  # noqa: E402

SCRIPT = HERE / "gpu_check.sh"


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    dest = tmp_path_factory.mktemp("gpu") / "gpu-check.tar.gz"
    return dest, make_source_tarball.make_tarball(dest)


@pytest.fixture(scope="module")
def unpacked(tarball: tuple[Path, dict[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-unpacked")
    with tarfile.open(tarball[0]) as t:
        t.extractall(out, filter="data")
    return out / make_source_tarball.TOP


def test_tarball_is_well_under_the_64_mib_a_gpu_machine_takes(tarball: tuple[Path, dict[str, int]]) -> None:
    path, sizes = tarball
    assert path.stat().st_size == sizes["tarball"] < make_source_tarball.LIMIT - 8 * 2**20
    with tarfile.open(path) as t:
        names = t.getnames()
        infos = t.getmembers()
    top = make_source_tarball.TOP
    assert f"{top}/llama.cpp/CMakeLists.txt" in names
    assert any(n.startswith(f"{top}/llama.cpp/ggml/src/ggml-cuda/") for n in names)
    assert any(n.startswith(f"{top}/llama.cpp/ggml/src/ggml-cpu/") for n in names)
    for gone in ("ggml/src/ggml-vulkan/", "ggml/src/ggml-metal/", "ggml/src/ggml-sycl/", "models/", "docs/",
                 "tests/", "tools/ui/src/"):
        assert not any(n.startswith(f"{top}/llama.cpp/{gone}") for n in names), gone
    assert {f"{top}/runtime/dx/cli/__init__.py", f"{top}/runtime/dxverify/gguf.py", f"{top}/runtime/click/__init__.py",
            f"{top}/runtime/dx/host/cuda_libs.py", f"{top}/gpu_check.sh", f"{top}/cmake-flags.txt",
            f"{top}/model/smollm2-6l.gguf"} <= set(names)
    assert {i.mtime for i in infos} == {make_source_tarball.EPOCH} and {i.uid for i in infos} == {0}
    assert sizes["llama.cpp"] < 40e6, "trimmed: the pinned tree is 176 MB"


def test_tree_carries_dx_patches_and_the_tier_flags(unpacked: Path) -> None:
    assert "#offset=" in (unpacked / "llama.cpp/src/llama.cpp").read_text(), "0001 patch applied"
    flags = (unpacked / "cmake-flags.txt").read_text().split()
    assert {"-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_NO_VMM=ON", "-DGGML_BACKEND_DL=ON"} \
        <= set(flags)


@pytest.mark.integration
def test_trimmed_tree_configures(unpacked: Path, tmp_path: Path) -> None:
    """CMake accepts the trimmed tree with the tier's flags (CUDA off: no nvcc here)."""
    cmake = shutil.which("cmake") or str(Path(sys.executable).with_name("cmake"))
    flags = [f for f in (unpacked / "cmake-flags.txt").read_text().split() if "CUDA" not in f]
    res = subprocess.run([cmake, "-S", str(unpacked / "llama.cpp"), "-B", str(tmp_path / "b"), "-G", "Ninja",
                          *flags], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ninja = (tmp_path / "b" / "build.ninja").read_text()
    assert "llama-server" in ninja and "llama-bench" in ninja


@pytest.mark.integration
def test_cut_model_runs_in_the_real_engine(unpacked: Path, cpu_engine: Path) -> None:
    model = unpacked / "model/smollm2-6l.gguf"
    res = subprocess.run([str(cpu_engine / "bin/llama-bench"), "-m", str(model), "-p", "16", "-n", "4", "-r", "1",
                          "-t", "1", "-o", "csv"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "llama" in res.stdout and "tg4" not in res.stderr


def test_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    res = subprocess.run([shellcheck, "-s", "sh", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("fake_smi", [False, True], ids=["no-nvidia-smi", "no-dev-nvidia0"])
def test_without_a_gpu_it_stops_first_with_one_line(fake_smi: bool, tmp_path: Path) -> None:
    """No GPU here: exit 2 and one line, before it looks at the tarball or builds anything."""
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if fake_smi:  # a stand-in nvidia-smi (named a fake): the device node is still missing
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'fake nvidia-smi'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "absent.tar.gz")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=30)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no NVIDIA GPU here")
    assert ("no /dev/nvidia0" if fake_smi else "nvidia-smi not found") in lines[0]
    assert os.listdir(tmp_path) == ["bin"], "nothing unpacked or built"
