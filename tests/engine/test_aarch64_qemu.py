"""cpu-linux-arm64, cross-built here (Debian's g++-aarch64-linux-gnu, builder/toolchains/cross_gnu.py)
and run under qemu-user: llama-server answers a chat on SmolLM2, and ggml picks the armv8
variant that fits each emulated CPU.

Marked ``aarch64``: the cold cross build is tens of minutes on 2 cores, so it runs with
DX_TEST_AARCH64=1 (cached afterwards; see README). Needs qemu-user-static and the cross
compilers (test.sh installs them).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.engine_run import chat, loaded_cpu_variant, serve
from support.tools import missing

pytestmark = [pytest.mark.integration, pytest.mark.aarch64]

#: qemu CPU model -> the variant ggml must load (the armv9.2 SME ones are not built: recipe patch 0003)
EXPECTED = {
    "cortex-a53": "armv8.0_1",   # plain ARMv8.0: no dotprod, fp16 arithmetic or SVE
    "max": "armv8.6_2",          # everything qemu emulates: dotprod, fp16, SVE, SVE2, i8mm (and SME)
}
VARIANTS = ["armv8.0_1", "armv8.2_1", "armv8.2_2", "armv8.2_3", "armv8.6_1", "armv8.6_2"]


@pytest.fixture(scope="module")
def arm64_engine() -> Path:
    from dxbuild.engine.build import build_engine
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS
    from dxbuild.toolchains.plan import host_cell
    from dxmatrix.definition import load_matrix
    from dxmatrix.recipes import get_tier, load_engine_recipe

    if HOST_OS != "linux":
        pytest.skip("the arm64 engine is cross-built on Linux")
    recipe = load_engine_recipe()
    cell = host_cell(get_tier("cpu"), recipe, arch="aarch64", runners=load_matrix().runners)
    if HOST_ARCH == "arm64":
        pytest.skip("this machine is arm64: the cpu engine tests cover it natively")
    return build_engine(cell, recipe)


def _qemu_argv(cpu: str) -> list[str]:
    from dxbuild.toolchains.cross_gnu import sysroot
    from dxbuild.toolchains.run_here import qemu_user

    exe = qemu_user("arm64")
    if exe is None:
        missing("qemu-aarch64", "qemu-user-static")
    return [exe, "-cpu", cpu, "-L", str(sysroot("arm64"))]


def test_cross_built_engine_is_arm64_with_the_armv8_variants(arm64_engine: Path) -> None:
    info = json.loads((arm64_engine / "engine.json").read_text())
    assert (info["os"], info["arch"]) == ("linux", "arm64")
    assert info["toolchain"]["name"] == "cross-gnu" and info["toolchain"]["cross"] == "aarch64-linux-gnu"
    assert [p["file"] for p in info["patches"]] == ["0001-load-gguf-at-file-offset.patch",
                                                    "0004-stream-opening-and-waiter-deadline.patch",
                                                    "0003-arm64-without-sme-cpu-variants.patch"]
    built = sorted(p.name.removeprefix("libggml-cpu-").removesuffix(".so")
                   for p in (arm64_engine / "bin").glob("libggml-cpu-*.so"))
    assert built == VARIANTS
    header = subprocess.run(["readelf", "-h", str(arm64_engine / "bin" / "llama-server")], capture_output=True,
                            text=True).stdout
    assert "AArch64" in header
    sections = subprocess.run(["readelf", "-S", str(arm64_engine / "bin" / "llama-server")], capture_output=True,
                              text=True).stdout
    assert ".symtab" not in sections, "stripped with the target's strip"


@pytest.mark.parametrize("cpu", list(EXPECTED))
def test_llama_server_answers_under_qemu(cpu: str, arm64_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    log = tmp_path / f"llama-server-{cpu}.log"
    argv = [*_qemu_argv(cpu), str(arm64_engine / "bin" / "llama-server"), "-m", str(smollm2_gguf),
            "-c", "512", "-t", "2", "-np", "1", "-v"]   # -v: the "loaded CPU backend" line
    with serve(argv, log) as (_proc, url):
        text = chat(url, max_tokens=8)
    variant = loaded_cpu_variant(log.read_text(errors="replace"))
    assert variant == EXPECTED[cpu], f"-cpu {cpu}: loaded {variant!r}"
    assert "paris" in text.lower(), text
