"""dx doctor: the real CPU and memory of this machine, thin named fakes for GPUs that are not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dx.cli.doctor import kv_bytes_per_token, plan_model, report_text
from dx.host.hardware import Probe, detect, detect_cpu, detect_memory
from dx.host.tiers import pick_tier
from dx.models.check import ModelFacts, read_facts

GIB = 1024**3


def fake_nvidia_smi(bin_dir: Path, driver: str, name: str = "NVIDIA H100 80GB HBM3", mib: int = 81559) -> Path:
    """A FAKE nvidia-smi (no NVIDIA GPU here): answers the two queries dx makes, like the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    cuda = "13.0" if int(driver.split(".")[0]) >= 580 else "12.4"
    script.write_text(f"""#!/bin/sh
# FAKE nvidia-smi for tests
case "$1" in
  --query-gpu=*) echo "{name}, {mib}, {mib - 500}, {driver}" ;;
  *) echo "| NVIDIA-SMI {driver}      Driver Version: {driver}      CUDA Version: {cuda}     |" ;;
esac
""")
    script.chmod(0o755)
    return bin_dir


def test_real_cpu_and_memory_match_proc() -> None:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    hw = detect()
    processors = [ln for ln in cpuinfo.splitlines() if ln.startswith("processor")]
    assert hw.cpu.logical_cores == len(processors)
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
    if models:
        assert hw.cpu.model == models[0]
    flags = set(next(ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))).split(":")[1].split())
    assert ("AVX2" in hw.cpu.features) == ("avx2" in flags)
    assert ("AVX-512" in hw.cpu.features) == ("avx512f" in flags)
    assert 1 <= hw.cpu.usable_cores <= hw.cpu.logical_cores
    assert hw.cpu.usable_cores == len(os.sched_getaffinity(0))
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    assert hw.memory.total == int(meminfo["MemTotal"].split()[0]) * 1024
    assert 0 < hw.memory.available <= hw.memory.total
    assert hw.arch == os.uname().machine


def test_cpu_and_memory_from_a_fake_proc_tree(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    block = "processor\t: {n}\nmodel name\t: Fake Xeon\nphysical id\t: 0\ncore id\t: {c}\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
    (tmp_path / "proc/cpuinfo").write_text("\n".join(block.format(n=n, c=n // 2) for n in range(8)))
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemAvailable:    8192000 kB\n")
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory.max").write_text(f"{4 * GIB}\n")
    probe = Probe(root=tmp_path, system="Linux", machine="x86_64")
    cpu = detect_cpu(probe)
    assert (cpu.model, cpu.logical_cores, cpu.physical_cores) == ("Fake Xeon", 8, 4)
    assert cpu.features == ["SSE4.2", "AVX", "F16C", "FMA", "AVX2"]
    mem = detect_memory(probe)
    assert mem.total == 16384000 * 1024 and mem.limit == 4 * GIB and mem.available == 4 * GIB


def test_arm_cpu_reports_neon(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\n")
    cpu = detect_cpu(Probe(root=tmp_path, system="Linux", machine="aarch64"))
    assert cpu.features == ["NEON", "DOTPROD", "I8MM", "SVE"]


@pytest.mark.parametrize(
    ("driver", "tier"),
    [("550.54.15", "cuda12"), ("525.60.13", "cuda12"), ("580.65.06", "cuda13"), ("590.10", "cuda13"),
     ("470.82.01", "cpu")],
)
def test_nvidia_driver_picks_the_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str, tier: str) -> None:
    fake = fake_nvidia_smi(tmp_path / "bin", driver)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    hw = detect()
    [gpu] = [g for g in hw.gpus if g.vendor == "nvidia"]
    assert gpu.driver == driver and gpu.memory_total == 81559 * 1024 * 1024 and gpu.source == "nvidia-smi"
    assert gpu.cuda_version == ("13.0" if tier == "cuda13" else "12.4")
    choice = pick_tier(hw)
    assert choice.tier == tier
    if tier == "cpu":
        assert any("update the NVIDIA driver" in a for a in choice.advice)


def test_no_gpu_tools_means_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run
    hw = detect()
    assert [g for g in hw.gpus if g.usable] == [] and hw.vulkan_devices == []
    assert pick_tier(hw).tier == "cpu"


def fake_sysfs_amd(root: Path, vram: int = 16 * GIB) -> None:
    dev = root / "sys/class/drm/card0/device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1002\n")
    (dev / "mem_info_vram_total").write_text(f"{vram}\n")
    (root / "sys/class/drm/card0-DP-1").mkdir()
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake\n")


def runner(answers: dict[str, str]):
    """A FAKE command runner: the tools in ``answers`` exist and print their answer."""
    return lambda argv: answers.get(argv[0])


def test_amd_gpu_without_rocm_uses_vulkan_and_says_so(tmp_path: Path) -> None:
    fake_sysfs_amd(tmp_path)
    hw = detect(Probe(root=tmp_path, run=runner({}), system="Linux", machine="x86_64"))
    [gpu] = hw.gpus
    assert (gpu.vendor, gpu.memory_total, gpu.source) == ("amd", 16 * GIB, "sysfs")
    assert pick_tier(hw).tier == "cpu"
    vk = "GPU0:\n\tdeviceName         = AMD Radeon RX 7900 XTX (RADV NAVI31)\n"
    hw = detect(Probe(root=tmp_path, run=runner({"vulkaninfo": vk}), system="Linux", machine="x86_64"))
    choice = pick_tier(hw)
    assert choice.tier == "vulkan" and "RX 7900" in choice.reason
    assert any("ROCm" in a for a in choice.advice)
    (tmp_path / "opt/rocm").mkdir(parents=True)
    assert pick_tier(detect(Probe(root=tmp_path, run=runner({}), system="Linux", machine="x86_64"))).tier == "rocm"


def test_gpu_without_driver_is_reported(tmp_path: Path) -> None:
    dev = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    dev.mkdir(parents=True)
    (dev / "class").write_text("0x030200\n")
    (dev / "vendor").write_text("0x10de\n")
    hw = detect(Probe(root=tmp_path, run=runner({}), system="Linux", machine="x86_64"))
    [gpu] = hw.gpus
    assert gpu.vendor == "nvidia" and not gpu.usable
    choice = pick_tier(hw)
    assert choice.tier == "cpu" and any("install the NVIDIA driver" in a for a in choice.advice)
    assert "no working driver" in report_text(hw, choice, None)


def test_apple_silicon_is_metal() -> None:
    answers = {"sysctl": None}

    def run(argv):  # FAKE sysctl
        return {"hw.memsize": "34359738368\n", "machdep.cpu.brand_string": "Apple M2 Pro\n",
                "hw.logicalcpu": "12\n", "hw.physicalcpu": "12\n"}.get(argv[-1], answers.get(argv[0]))

    hw = detect(Probe(root=Path("/nonexistent"), run=run, system="Darwin", machine="arm64"))
    assert hw.cpu.model == "Apple M2 Pro" and hw.cpu.features == ["NEON"] and hw.memory.total == 32 * GIB
    assert pick_tier(hw).tier == "metal"


LLAMA3_8B = ModelFacts(arch="llama", block_count=32, embedding_length=4096, head_count=32, head_count_kv=8,
                       context_length=131072)


def test_model_fit_on_big_and_small_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert kv_bytes_per_token(LLAMA3_8B) == 2 * 32 * 8 * 128 * 2
    size = int(4.9 * GIB)
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'big', '580.65.06')}{os.pathsep}{os.environ['PATH']}")
    hw = detect()
    plan = plan_model(hw, pick_tier(hw), "llama3", size, LLAMA3_8B)
    assert plan.fits_vram and plan.gpu_layers == 33 and plan.context == 32768
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'small', '550.1', 'RTX 3050', 4096)}{os.pathsep}/usr/bin:/bin")
    hw = detect()
    plan = plan_model(hw, pick_tier(hw), "llama3", size, LLAMA3_8B)
    assert not plan.fits_vram and 0 < plan.gpu_layers < 32
    assert any("does not fit in VRAM" in n for n in plan.notes)


def test_real_smollm2_fits_in_ram_here(smollm2_gguf: Path) -> None:
    hw = detect()
    facts = read_facts(smollm2_gguf)
    plan = plan_model(hw, pick_tier(hw), "smollm2", smollm2_gguf.stat().st_size, facts)
    assert plan.fits_ram and plan.context == 8192 and plan.threads == min(hw.cpu.physical_cores, hw.cpu.usable_cores)


def dx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dx", *args], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_doctor_cli_json_and_model(tmp_path: Path, smollm2_gguf: Path) -> None:
    env = {**os.environ, "DX_HOME": str(tmp_path / "home"), "OLLAMA_MODELS": str(tmp_path / "none"),
           "PATH": f"{fake_nvidia_smi(tmp_path / 'bin', '580.65.06')}{os.pathsep}{os.environ['PATH']}"}
    r = dx("doctor", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tier"]["tier"] == "cuda13" and doc["hardware"]["gpus"][0]["driver"] == "580.65.06"
    assert doc["hardware"]["cpu"]["logical_cores"] == os.cpu_count() and doc["model"] is None
    r = dx("doctor", str(smollm2_gguf), env=env)
    assert r.returncode == 0, r.stderr
    assert "tier      cuda13" in r.stdout and "fits in VRAM" in r.stdout and "--n-gpu-layers 31" in r.stdout
    r = dx("doctor", "no-such-model", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
