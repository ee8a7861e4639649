"""A thin cuda13 executable, minted here and run here (no GPU): it serves on the CPU and says why in one line.

``dxbuild --gpu cuda13 --cuda-archs 90 --cuda-libs thin`` leaves cuBLAS/cudart out;
with no NVIDIA driver (this machine) and no CUDA 13 runtime found, ggml fails to load
``libggml-cuda`` (its libcublas.so.13 is nowhere), skips it and runs its CPU
variants, and dx prints one line naming what to install. With the fat form's
libraries offered through ``DX_CUDA_RUNTIME`` the search accepts them, and the only
thing missing is the driver. Marked ``cuda`` (DX_TEST_CUDA=1): it needs the
cuda13 engine, a ~25-minute compile on 2 cores the first time (cached after).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from smoke_executable import ask, serving

pytestmark = [pytest.mark.integration, pytest.mark.cuda]
MACHINE = platform.machine()


@pytest.fixture(scope="module")
def cuda13_engine() -> Path:
    from dxbuild.engine.build import host_engine

    return host_engine("cuda13", cuda_archs=("90",))


def _mint(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cuda13", "--cuda-archs", "90", "--cuda-libs", "thin",
                        "--no-bench", "-o", str(out), *args], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def thin_exe(tmp_path_factory: pytest.TempPathFactory, cuda13_engine: Path, smollm2_gguf: Path) -> Path:
    out = tmp_path_factory.mktemp("mint-cuda13-thin")
    _mint(out, "--model", "smollm2")
    return out / f"dx-smollm2-cuda13-linux-{MACHINE}"


def _no_driver() -> None:
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver: the CPU fallback is not what happens here")


def test_thin_leaves_cublas_out_and_reports_both_forms(thin_exe: Path, cuda13_engine: Path) -> None:
    report = json.loads((thin_exe.parent / "size-report.json").read_text())
    (entry,) = report["artifacts"]
    names = {f["name"] for f in entry["largest_files"]}
    assert "engine/bin/libggml-cuda.so" in names
    assert not any("cublas" in n or "cudart" in n for n in names)
    c = entry["cuda_libs"]
    libs = sum(p.stat().st_size for p in (cuda13_engine / "lib").glob("libcu*.so.13"))
    assert c["form"] == "thin" and c["runtime_libs_bytes"] == libs > 500e6
    assert c["engine_dir_fat_bytes"] - c["engine_dir_thin_bytes"] == libs
    assert c["thin_ok"] is True
    print(f"thin {thin_exe.name}: {thin_exe.stat().st_size / 1e6:.1f} MB, without model "
          f"{c['executable_without_model_bytes'] / 1e6:.1f} MB; engine dir thin {c['engine_dir_thin_bytes'] / 1e6:.1f}"
          f" MB, fat {c['engine_dir_fat_bytes'] / 1e6:.1f} MB")


def test_bare_thin_mint_is_under_its_goal(tmp_path: Path, cuda13_engine: Path) -> None:
    _mint(tmp_path)
    exe = tmp_path / f"dx-cuda13-linux-{MACHINE}"
    size = exe.stat().st_size
    print(f"bare thin cuda13 (sm_90): {size / 1e6:.1f} MB")
    assert size <= 120e6, "goal: thin sm_90 executable without a model <= 120 MB"


def test_no_driver_no_cublas_serves_on_the_cpu_and_says_one_line(thin_exe: Path, tmp_path: Path) -> None:
    _no_driver()
    env = {"XDG_DATA_HOME": str(tmp_path / "no-pack"), "VIRTUAL_ENV": ""}
    with serving(thin_exe, env=env, home=tmp_path / "home") as run:
        answer = ask(run, max_tokens=8)
        output = list(run.output)
        logs = "\n".join(p.read_text(errors="replace") for p in (run.home / ".dx" / "logs").glob("engine-*.log"))
    said = [line for line in output if "runs on the CPU" in line or "running on the CPU" in line]
    assert len(said) == 1, output
    assert said[0].startswith("dx: no NVIDIA driver") and "pip install nvidia-cublas nvidia-cuda-runtime" in said[0]
    assert "paris" in answer.lower(), answer
    assert "dx: cuda: thin engine; looking for libcudart.so.13, libcublas.so.13, libcublasLt.so.13" in logs
    assert "dx: cuda: no usable CUDA 13 runtime" in logs
    # ggml could not load libggml-cuda (no cuBLAS) and went on with its CPU variants; a release
    # ggml says nothing about it, so the CPU buffers are the evidence
    assert "CUDA" not in "".join(line for line in logs.splitlines() if "buffer size" in line), logs[-3000:]


def test_cublas_offered_is_found_and_logged(thin_exe: Path, cuda13_engine: Path, tmp_path: Path) -> None:
    """The fat form's libraries as a stand-in runtime pack: accepted; only the driver is missing here."""
    _no_driver()
    with serving(thin_exe, env={"DX_CUDA_RUNTIME": str(cuda13_engine / "lib")}, home=tmp_path / "home") as run:
        answer = ask(run, max_tokens=8)
        output = list(run.output)
        logs = "\n".join(p.read_text(errors="replace") for p in (run.home / ".dx" / "logs").glob("engine-*.log"))
    assert f"dx: cuda: [env] {cuda13_engine / 'lib'}: accepted" in logs
    assert f"dx: cuda: using {cuda13_engine / 'lib'}" in logs
    said = [line for line in output if "CPU" in line]
    assert len(said) == 1 and said[0].startswith("dx: no NVIDIA driver"), output
    assert "paris" in answer.lower(), answer
