"""Matrix expansion, cell resolution and host planning: pure functions, fast tests."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dxbuild.toolchains.plan import host_cell, host_plan
from dxmatrix.cell import parse_cuda_archs, resolve_cell
from dxmatrix.definition import load_matrix
from dxmatrix.expand import expand, github_matrix
from dxmatrix.recipes import get_tier, load_engine_recipe, load_tiers
from dxverify.errors import ConfigurationError, UnsupportedError

HEAD = """
tiers = ["cpu", "cuda13", "metal"]
os = ["linux", "macos"]
arch = ["x86_64", "arm64"]
[runners]
linux-x86_64 = "ubuntu-24.04"
linux-arm64 = "ubuntu-24.04-arm"
macos-arm64 = "macos-14"
macos-x86_64 = "macos-13"
"""


def _expand(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "matrix.toml"
    p.write_text(textwrap.dedent(text))
    return [c.name for c in expand(load_matrix(p), load_tiers(), load_engine_recipe())]


def test_committed_matrix() -> None:
    cells = expand(load_matrix(), load_tiers(), load_engine_recipe())
    by_name = {c.name: c for c in cells}
    assert len(by_name) == len(cells), "no duplicate cells"
    assert by_name["cpu-linux-x86_64"].runner == "ubuntu-24.04"
    assert by_name["cpu-linux-arm64"].runner == "ubuntu-24.04-arm"
    assert by_name["metal-macos-arm64"].runner == "macos-14"
    assert by_name["cuda13-linux-x86_64"].min_nvidia_driver == 580
    assert by_name["cuda12-linux-x86_64"].min_nvidia_driver == 525
    assert "cpu-windows-arm64" in by_name            # include
    assert "cuda13-windows-arm64" not in by_name     # exclude os=windows arch=arm64
    assert "cpu-macos-x86_64" not in by_name         # exclude os=macos arch=x86_64
    assert "cuda12-linux-arm64" not in by_name       # exclude tier=cuda12 arch=arm64
    assert not any(c.tier == "metal" and c.os != "macos" for c in cells)
    assert all(c.runner for c in cells)
    cpu = by_name["cpu-linux-x86_64"].cmake_dict
    assert cpu["GGML_CPU_ALL_VARIANTS"] == "ON" and cpu["GGML_NATIVE"] == "OFF"
    assert by_name["cpu-linux-arm64"].cmake_dict["GGML_CPU_ALL_VARIANTS"] == "ON"   # the six armv8 variants
    assert "GGML_CPU_ALL_VARIANTS" not in by_name["cpu-windows-arm64"].cmake_dict


def test_github_matrix_shape() -> None:
    cells = expand(load_matrix(), load_tiers(), load_engine_recipe())
    gm = github_matrix(cells)
    assert list(gm) == ["include"] and len(gm["include"]) == len(cells)
    for entry in gm["include"]:
        assert {"tier", "os", "arch", "runner", "min_driver"} <= set(entry)
        assert all(isinstance(v, (str, int)) for v in entry.values())
    json.dumps(gm)


def test_tier_only_expands_where_it_applies(tmp_path: Path) -> None:
    names = _expand(tmp_path, HEAD)
    assert "metal-macos-arm64" in names and "metal-linux-x86_64" not in names
    assert "cuda13-macos-arm64" not in names
    assert "cpu-macos-x86_64" in names


def test_exclude_and_include(tmp_path: Path) -> None:
    names = _expand(tmp_path, HEAD + '[[exclude]]\nos = "macos"\n[[include]]\ntier = "cpu"\nos = "macos"\narch = "arm64"\n')
    assert [n for n in names if "macos" in n] == ["cpu-macos-arm64"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[[exclude]]\ntier = "cuda13"\nos = "macos"\n', r"exclude\[0\] \(tier=cuda13, os=macos\) matches no cell"),
        ('[[include]]\ntier = "cpu"\nos = "linux"\narch = "x86_64"\n', r"include\[0\] .* is already in the matrix"),
        ('[[include]]\ntier = "metal"\nos = "linux"\narch = "x86_64"\n', r"include\[0\] .*tier metal is not built for linux-x86_64"),
        ('[[include]]\ntier = "cpu"\nos = "linux"\n', r"include\[0\] \(tier=cpu, os=linux\): an include must name tier, os and arch"),
        ("[[exclude]]\n", r"exclude\[0\]: empty rule"),
        ('[[exclude]]\nos = "linuks"\n', r"exclude\[0\]\.os: 'linuks' is not allowed \(did you mean \"linux\"\?\)"),
        ('[[exclude]]\nplatform = "linux"\n', r"exclude\[0\]\.platform: unknown key"),
        ('[runners]\nlinux_x86_64 = "x"\n', None),   # runners table twice is a TOML error, checked below
    ],
)
def test_bad_rules(tmp_path: Path, extra: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ConfigurationError, match="not valid TOML"):
            _expand(tmp_path, HEAD + extra)
        return
    with pytest.raises(ConfigurationError, match=expected) as ei:
        _expand(tmp_path, HEAD + extra)
    assert "matrix.toml" in str(ei.value)


def test_unknown_tier_in_matrix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"tiers\[1\]: 'cuda11' is not allowed"):
        _expand(tmp_path, HEAD.replace('"cuda13"', '"cuda11"'))


def test_missing_runner(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no runner for macos-x86_64 \(needed by cpu-macos-x86_64\)"):
        _expand(tmp_path, HEAD.replace('macos-x86_64 = "macos-13"\n', ""))


def test_bad_runner_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"runners\.linux_x86_64: not an os-arch pair"):
        _expand(tmp_path, HEAD.replace("linux-x86_64 =", "linux_x86_64 ="))


def test_resolve_cell_flags_and_cuda_archs() -> None:
    engine = load_engine_recipe()
    cell = resolve_cell(engine, get_tier("cuda13"), "linux", "x86_64")
    flags = cell.cmake_dict
    assert flags["GGML_CUDA"] == "ON" and flags["GGML_CUDA_NO_VMM"] == "ON"
    assert flags["BUILD_SHARED_LIBS"] == "ON"                 # baseline kept
    assert flags["CMAKE_CUDA_ARCHITECTURES"] == ";".join(get_tier("cuda13").cuda_archs)
    narrow = resolve_cell(engine, get_tier("cuda13"), "linux", "x86_64", cuda_archs=("90",))
    assert narrow.cmake_dict["CMAKE_CUDA_ARCHITECTURES"] == "90" and narrow.cuda_archs == ("90",)
    assert narrow != cell and hash(narrow) != hash(cell)
    with pytest.raises(ConfigurationError, match="--cuda-archs applies only to CUDA tiers"):
        resolve_cell(engine, get_tier("cpu"), "linux", "x86_64", cuda_archs=("90",))
    with pytest.raises(UnsupportedError, match="tier metal is not built for linux"):
        resolve_cell(engine, get_tier("metal"), "linux", "arm64")


def test_parse_cuda_archs() -> None:
    assert parse_cuda_archs("86;90") == ("86", "90")
    assert parse_cuda_archs("86, 90-real,120a") == ("86", "90-real", "120a")
    for bad in ("", "sm_90", "9"):
        with pytest.raises(ConfigurationError, match="--cuda-archs"):
            parse_cuda_archs(bad)


def test_host_plan_here() -> None:
    cells = expand(load_matrix(), load_tiers(), load_engine_recipe())
    plan = dict((c.name, why) for c, why in host_plan(cells))
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    assert plan[f"cpu-{HOST_OS}-{HOST_ARCH}"] is None
    assert "macOS" in plan["metal-macos-arm64"] or HOST_OS == "macos"
    other_arch = "arm64" if HOST_ARCH == "x86_64" else "x86_64"
    if f"cuda13-{HOST_OS}-{other_arch}" in plan:   # no cross CUDA: its own runner builds it
        assert "runner" in (plan[f"cuda13-{HOST_OS}-{other_arch}"] or "")
    if HOST_OS == "linux" and f"cpu-linux-{other_arch}" in plan:   # the cpu tier cross-compiles, or says how to
        why = plan[f"cpu-linux-{other_arch}"]
        assert why is None or ("apt-get install -y gcc-" in why and "runner" in why)


def _fake_nvcc(tmp_path: Path, release: str) -> Path:
    """A FAKE nvcc that only answers --version (no CUDA 12 toolkit exists on this machine)."""
    p = tmp_path / f"fake-nvcc-{release}"
    p.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def test_cuda12_refuses_a_cuda13_nvcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dxbuild.toolchains import cuda12_host, host

    monkeypatch.setenv("CUDACXX", str(_fake_nvcc(tmp_path, "13.0")))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    cell = resolve_cell(load_engine_recipe(), get_tier("cuda12"), host.HOST_OS, "x86_64")
    if host.HOST_ARCH != "x86_64":
        pytest.skip("cuda12 cells here are x86_64")
    why = cuda12_host.host_problem(cell)
    assert why and "no CUDA 12 toolkit" in why and "CUDA 13.0" in why
    monkeypatch.setenv("CUDACXX", str(_fake_nvcc(tmp_path, "12.4")))
    assert cuda12_host.find_nvcc()[0] == str(tmp_path / "fake-nvcc-12.4")


def test_host_cell_cross_arch_only_with_a_cross_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    from dxbuild.toolchains import cross_gnu
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    other = "arm64" if HOST_ARCH == "x86_64" else "x86_64"
    spelled = "aarch64" if other == "arm64" else "amd64"
    with pytest.raises(UnsupportedError, match=f"cannot build cuda13 for {other}"):
        host_cell(get_tier("cuda13"), load_engine_recipe(), arch=spelled)
    if HOST_OS != "linux":
        return
    monkeypatch.setattr(cross_gnu, "_tools", lambda arch: {"gcc": None, "g++": None, "strip": None})
    with pytest.raises(UnsupportedError, match=r"apt-get install -y gcc-.*-linux-gnu g\+\+-"):
        host_cell(get_tier("cpu"), load_engine_recipe(), arch=spelled)
    monkeypatch.setattr(cross_gnu, "_tools", lambda arch: {"gcc": "/x/gcc", "g++": "/x/g++", "strip": "/x/strip"})
    cell = host_cell(get_tier("cpu"), load_engine_recipe(), arch=spelled)
    assert cell.name == f"cpu-linux-{other}"


def _dxbuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dxbuild", *args], capture_output=True, text=True,
                          env={**os.environ, "DX_DEBUG": "0"}, timeout=120)


def test_cli_matrix_outputs() -> None:
    table = _dxbuild("matrix")
    assert table.returncode == 0 and "cpu" in table.stdout and "ubuntu-24.04" in table.stdout
    js = _dxbuild("matrix", "--json")
    data = json.loads(js.stdout)
    assert {"tier": "cpu", "os": "linux", "arch": "x86_64"}.items() <= data["include"][1].items() or any(
        e["tier"] == "cpu" and e["os"] == "linux" and e["runner"] == "ubuntu-24.04" for e in data["include"])
    host = _dxbuild("matrix", "--host")
    assert host.returncode == 0
    rows = dict(line.split(None, 1) for line in host.stdout.splitlines())
    assert set(rows) == {e["tier"] + "-" + e["os"] + "-" + e["arch"] for e in data["include"]}
    for name, verdict in rows.items():
        assert verdict.startswith(("builds and runs here (", "builds here; does not run here: ", "no: ")), name
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    if HOST_OS == "linux":
        assert rows[f"cpu-linux-{HOST_ARCH}"] == "builds and runs here (natively)"
    assert rows["metal-macos-arm64"].startswith("no: ")


def test_cli_matrix_host_says_how_a_cell_runs_or_why_not(tmp_path: Path) -> None:
    """The verdicts follow the machine: a missing Vulkan driver or qemu turns 'runs' into 'builds'."""
    from dxbuild.toolchains import run_here
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    if HOST_OS != "linux" or HOST_ARCH != "x86_64":
        pytest.skip("the lavapipe and qemu verdicts are checked on Linux x86_64")
    vulkan = resolve_cell(load_engine_recipe(), get_tier("vulkan"), "linux", "x86_64")
    arm = resolve_cell(load_engine_recipe(), get_tier("cpu"), "linux", "arm64")
    env_before = os.environ.get("VK_ICD_FILENAMES")
    try:
        os.environ["VK_ICD_FILENAMES"] = str(tmp_path / "nonexistent.json")
        why, _ = run_here.run_problem(vulkan)
        assert why and why.startswith("no Vulkan driver: apt-get install -y mesa-vulkan-drivers")
    finally:
        if env_before is None:
            os.environ.pop("VK_ICD_FILENAMES", None)
        else:
            os.environ["VK_ICD_FILENAMES"] = env_before
    if run_here.vulkan_icds() and any("lvp" in p for p in run_here.vulkan_icds()):
        assert run_here.run_problem(vulkan) == (None, "natively, on lavapipe (Mesa's CPU Vulkan driver)")
    if run_here.qemu_user("arm64"):
        assert run_here.run_problem(arm) == (None, "under qemu-aarch64 -L /usr/aarch64-linux-gnu")
    host = subprocess.run([sys.executable, "-m", "dxbuild", "matrix", "--host"], capture_output=True, text=True,
                          env={**os.environ, "VK_ICD_FILENAMES": str(tmp_path / "none.json"), "PATH": "/nonexistent"},
                          timeout=120)
    rows = dict(line.split(None, 1) for line in host.stdout.splitlines())
    if not rows["vulkan-linux-x86_64"].startswith("no: "):   # a PATH without glslc cannot build it either
        assert rows["vulkan-linux-x86_64"].startswith("builds here; does not run here: no Vulkan driver")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["engine", "--tier", "metal"], 5, "tier metal cannot be built on linux"),
        (["engine", "--tier", "cuda12"], 5, "no CUDA 12 toolkit"),
        (["engine", "--tier", "cpux"], 2, 'unknown tier \'cpux\' (did you mean "cpu"?)'),
        (["engine", "--tier", "cpu", "--cuda-archs", "90"], 2, "--cuda-archs applies only to CUDA tiers"),
        (["engine", "--tier", "cuda13", "--cuda-archs", "sm90"], 2, "is not a CUDA architecture"),
        (["engine", "--tier", "rocm"], 5, "no ROCm found"),
    ],
)
def test_cli_engine_fails_fast(args: list[str], code: int, expected: str) -> None:
    from dxbuild.toolchains.host import HOST_OS

    if HOST_OS != "linux":
        pytest.skip("messages checked on Linux")
    r = _dxbuild(*args)
    assert r.returncode == code, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("dxbuild: error: ")
