"""Mint planning: output names, output directory checks, tier choice (no build)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dx.host.hardware import GPU, Hardware, Probe, detect
from dxbuild import mint
from dxbuild.steps.write_output import output_name, safe_model_name
from dxverify.errors import ConfigurationError


def test_output_names() -> None:
    cell = SimpleNamespace(tier="cpu", os="linux", arch="x86_64")
    assert output_name(cell, "smollm2") == "dx-smollm2-cpu-linux-x86_64"
    assert output_name(cell, None) == "dx-cpu-linux-x86_64"
    assert output_name(cell, "llama3.2") == "dx-llama3.2-cpu-linux-x86_64"
    assert safe_model_name("../x/y") == "x-y"
    assert safe_model_name("...") == "model"


def test_output_dir_is_created(tmp_path: Path) -> None:
    out = mint.check_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigurationError, match="is a file"):
        mint.check_output_dir(f)


def test_unwritable_output_dir_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/sys/fs")  # read-only even for root
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    with pytest.raises(ConfigurationError, match="not writable"):
        mint.check_output_dir(target)


def test_auto_tier_is_cpu_without_nvidia(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mint.pick_tier().tier == "cpu"


def _machine(tmp_path: Path, gpus: list) -> Hardware:
    from dx.host.hardware import CPUInfo, MemoryInfo

    hw = detect(Probe(root=tmp_path, run=lambda argv, timeout=10.0: None, system="Linux", machine="x86_64"))
    assert isinstance(hw.cpu, CPUInfo) and isinstance(hw.memory, MemoryInfo)
    return dataclasses.replace(hw, gpus=gpus)


@pytest.mark.parametrize("driver, doctor_says", [("590.48.01", "cuda13"), ("535.104", "cuda12"), ("470.1", "cpu")])
def test_auto_tier_is_the_doctors_pick_when_it_builds_here(tmp_path: Path, driver: str, doctor_says: str) -> None:
    """``dxbuild --gpu auto`` and ``dx doctor`` ask the one picker; the builder only adds "can it build here"."""
    from dx.host.tiers import pick_tier as doctor_pick
    from dxbuild.toolchains import host_problem
    from dxbuild.toolchains.plan import plan_host_cell

    hw = _machine(tmp_path, [GPU("nvidia", "NVIDIA H100", 81559, 81000, driver, None, "nvidia-smi")])
    assert doctor_pick(hw).tier == doctor_says
    picked = mint.pick_tier(hw)
    buildable = doctor_says == "cpu" or host_problem(plan_host_cell(doctor_says)[0]) is None
    if buildable:
        assert picked.tier == doctor_says and picked.reason == doctor_pick(hw).reason
    else:
        assert picked.tier == "cpu" and f"the {doctor_says} tier cannot be built here" in picked.reason


def test_default_steps_are_in_order() -> None:
    from dxbuild.pipeline import default_steps

    names = [s.name for s in default_steps()]
    assert names[:6] == ["resolve model", "verify model", "engine", "bundle runtime", "embed model",
                         "write output"]
    assert "checksums" in names


def test_cuda_archs_narrow_a_cuda_tier_and_bad_ones_are_refused() -> None:
    full = mint.plan_cell("cuda13")
    narrow = mint.plan_cell("cuda13", "90")
    assert len(full.cuda_archs) > 1 and tuple(narrow.cuda_archs) != tuple(full.cuda_archs)
    assert [str(a) for a in narrow.cuda_archs] == ["90"]
    with pytest.raises(ConfigurationError, match="not a CUDA architecture"):
        mint.plan_cell("cuda13", "ninety")
