"""Per-tier patches and the cross toolchain: which cell gets which patch, that the cache key
follows them, that each applies cleanly to the pinned source, and the generated CMake
toolchain file. Fast (planning only; the source check reads the cached sdist)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from support.tools import need

from dxbuild.engine.plan import plan_engine
from dxbuild.toolchains import Toolchain, cross_gnu, module_for_cell
from dxmatrix.cell import normalize_arch, resolve_cell
from dxmatrix.recipes import get_tier, load_engine_recipe, load_tiers
from dxverify.errors import ConfigurationError
from dxverify.hashing import sha256_file as file_sha256

TC = Toolchain(name="host", cmake="/x/cmake", ninja="/x/ninja", versions={"cmake": "3.25", "cc": "gcc 12"})
VULKAN_PATCH = "0002-vulkan-without-layer-settings-ext.patch"
SME_PATCH = "0003-arm64-without-sme-cpu-variants.patch"


def _cell(tier: str, os_name: str = "linux", arch: str = "x86_64"):  # type: ignore[no-untyped-def]
    return resolve_cell(load_engine_recipe(), get_tier(tier), os_name, arch)


def _key(cell) -> str:  # type: ignore[no-untyped-def]
    recipe = load_engine_recipe().with_patches(cell.tier_patches)
    return plan_engine(cell, recipe, TC, tuple((p.name, file_sha256(p)) for p in recipe.patch_paths())).key


def test_each_cell_gets_its_tiers_patches_only() -> None:
    assert _cell("cpu").tier_patches == ()
    assert _cell("cuda13").tier_patches == ()
    assert _cell("vulkan").tier_patches == (VULKAN_PATCH,)
    assert _cell("vulkan", "windows").tier_patches == (VULKAN_PATCH,)
    assert _cell("cpu", arch="arm64").tier_patches == (SME_PATCH,)
    assert _cell("cpu", "macos", "arm64").tier_patches == ()
    recipe = load_engine_recipe().with_patches(_cell("vulkan").tier_patches)
    assert [p.name for p in recipe.patch_paths()] == ["0001-load-gguf-at-file-offset.patch",
                                                     "0004-stream-opening-and-waiter-deadline.patch", VULKAN_PATCH]


def test_tier_patches_are_in_the_cache_key(tmp_path: Path) -> None:
    vulkan = _cell("vulkan")
    without = load_engine_recipe()   # the same cell built without its tier patch would be another engine
    plain = plan_engine(vulkan, without, TC, tuple((p.name, file_sha256(p)) for p in without.patch_paths())).key
    assert _key(vulkan) != plain
    # the cpu x86_64 engine keeps exactly the key it had before tier patches existed
    cpu = load_engine_recipe()
    assert _key(_cell("cpu")) == plan_engine(_cell("cpu"), cpu, TC,
                                             tuple((p.name, file_sha256(p)) for p in cpu.patch_paths())).key


def test_arm64_linux_builds_the_armv8_variants() -> None:
    assert _cell("cpu", arch="arm64").cmake_dict["GGML_CPU_ALL_VARIANTS"] == "ON"
    assert "GGML_CPU_ALL_VARIANTS" not in _cell("cpu", "windows", "arm64").cmake_dict  # ggml has no list there
    assert "GGML_CPU_ALL_VARIANTS" not in _cell("cpu", "macos", "arm64").cmake_dict


def test_unknown_target_and_missing_patch_are_errors(tmp_path: Path) -> None:
    base = textwrap.dedent("""
        [tiers.cpu]
        summary = "x"
        os = ["linux"]
        arch = ["x86_64"]
        toolchain = "host"
        size_budget_mb = 1
    """)
    (tmp_path / "patches").mkdir()
    p = tmp_path / "tiers.toml"
    p.write_text(base + '[tiers.cpu.patches_by_target]\nlinux-aarch64 = ["x.patch"]\n')
    with pytest.raises(ConfigurationError, match=r"patches_by_target\.linux-aarch64: unknown os-arch.*linux-arm64"):
        load_tiers(p)
    p.write_text(base + 'patches = ["0009-nowhere.patch"]\n')
    with pytest.raises(ConfigurationError, match=r"patch 0009-nowhere\.patch does not exist"):
        load_tiers(p)


def test_arch_spellings() -> None:
    assert normalize_arch("aarch64") == normalize_arch("arm64") == "arm64"
    assert normalize_arch("amd64") == "x86_64"
    with pytest.raises(ConfigurationError, match="unknown architecture 'riscv64'"):
        normalize_arch("riscv64")


def test_cross_toolchain_file_and_dispatch() -> None:
    text = cross_gnu.toolchain_file_text("arm64", "/usr/bin/aarch64-linux-gnu-gcc", "/usr/bin/aarch64-linux-gnu-g++")
    assert "set(CMAKE_SYSTEM_PROCESSOR aarch64)" in text and "set(CMAKE_SYSTEM_NAME Linux)" in text
    assert "set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)" in text
    assert "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)" in text and "MODE_LIBRARY ONLY" in text
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    if HOST_OS != "linux":
        pytest.skip("cross builds are Linux to Linux")
    other = "arm64" if HOST_ARCH == "x86_64" else "x86_64"
    assert module_for_cell(_cell("cpu", arch=other)) is cross_gnu
    assert module_for_cell(_cell("cpu", arch=HOST_ARCH)) is not cross_gnu
    assert module_for_cell(_cell("cuda13", arch=other)) is not cross_gnu   # no cross CUDA: its runner builds it


@pytest.mark.integration
@pytest.mark.parametrize("patch", [VULKAN_PATCH, SME_PATCH])
def test_tier_patch_applies_cleanly_to_the_pinned_source(patch: str, tmp_path: Path) -> None:
    """Against the pinned sdist (downloaded once, cached): no fuzz, and it changes what it says."""
    from dxbuild.engine.source import prepare_source

    need("patch")
    recipe = load_engine_recipe()
    bare = type(recipe)(source=recipe.source, patches=(), targets=recipe.targets, cmake=recipe.cmake,
                        recipe_dir=recipe.recipe_dir)
    tree = prepare_source(bare, log=tmp_path / "log", echo=None).path
    p = recipe.recipe_dir / "patches" / patch
    r = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--fuzz=0", "--batch", "-i", str(p)],
                       cwd=tree, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "offset" not in r.stdout and "fuzz" not in r.stdout, r.stdout
    body = p.read_text()
    if patch == VULKAN_PATCH:
        assert "+#ifdef VK_EXT_layer_settings" in body and "vk::LayerSettingsCreateInfoEXT" in body
    else:
        assert "-            ggml_add_cpu_backend_variant(armv9.2_1" in body
        assert "-            ggml_add_cpu_backend_variant(armv9.2_2" in body
        assert "-            ggml_add_cpu_backend_variant(armv8" not in body


def test_mint_for_another_arch_without_the_qemu_route_fails_fast_in_one_line(tmp_path: Path) -> None:
    """The engine cross-compiles; Nuitka needs qemu + debootstrap: without them, say so before any work."""
    import os
    import sys

    from dxbuild.toolchains.host import HOST_ARCH

    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    # PATH holds only this venv's programs: no debootstrap, chroot or mount
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--arch", other, "--model", "smollm2",
                        "-o", str(tmp_path / "dist")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 5, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dxbuild: error: an "), r.stderr
    assert "Nuitka compiles the dx runtime only for the machine it runs on" in lines[0]
    assert "qemu route is closed here" in lines[0]
    assert "dxbuild engine --tier cpu --arch" in lines[0]
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_arm64_cpu_variants_install_next_to_the_executable(tmp_path: Path) -> None:
    """ggml looks for its backends in the executable's folder; arm64 variant names have dots in them."""
    from dxbuild.engine.cmake import install_tree

    built = tmp_path / "build" / "bin"
    built.mkdir(parents=True)
    for name in ("llama-server", "libggml-cpu-armv8.0_1.so", "libggml-cpu-armv8.6_2.so", "libggml-rpc.so",
                 "libggml-base.so.0.25.3", "libllama.so.0.5.0"):
        (built / name).write_bytes(b"\x7fELF")
    dest = tmp_path / "engine"
    install_tree(tmp_path / "build", dest, ("llama-server",))
    assert sorted(p.name for p in (dest / "bin").iterdir()) == [
        "libggml-cpu-armv8.0_1.so", "libggml-cpu-armv8.6_2.so", "libggml-rpc.so", "llama-server"]
    assert sorted(p.name for p in (dest / "lib").iterdir()) == ["libggml-base.so.0.25.3", "libllama.so.0.5.0"]
