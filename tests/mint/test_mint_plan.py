"""Mint planning: output names, output directory checks, tier choice (no build)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

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
    assert mint.pick_tier() == "cpu"


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
