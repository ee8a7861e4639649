"""Engine planning and source checks: pure or file-local, fast."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from dxbuild.engine.cmake import Progress, install_tree
from dxbuild.engine.plan import plan_engine
from dxbuild.engine.source import _check_dir, apply_patches, tree_hash, unpack_sdist
from dxbuild.toolchains import Toolchain
from dxmatrix.cell import resolve_cell
from dxmatrix.recipes import EngineSource, get_tier, load_engine_recipe
from dxverify.errors import IntegrityError, MalformedInputError, ToolError

TC = Toolchain(name="host", cmake="/x/cmake", ninja="/x/ninja",
               cmake_defs={"CMAKE_C_COMPILER": "/usr/bin/cc"}, versions={"cmake": "3.31", "cc": "gcc 12"})
PATCHES = (("0001-a.patch", "aa" * 32),)


def _plan(**over: object):  # type: ignore[no-untyped-def]
    recipe = load_engine_recipe()
    cell = resolve_cell(recipe, get_tier(str(over.pop("tier", "cpu"))), "linux", "x86_64",
                        cuda_archs=over.pop("cuda_archs", None))  # type: ignore[arg-type]
    return plan_engine(cell, recipe, over.pop("tc", TC), over.pop("patches", PATCHES))  # type: ignore[arg-type]


def test_key_is_stable_and_sensitive() -> None:
    base = _plan()
    assert base.key == _plan().key
    assert base.dir_name == f"cpu-linux-x86_64-{base.key[:16]}"
    others = {
        "patch content": _plan(patches=(("0001-a.patch", "bb" * 32),)).key,
        "toolchain version": _plan(tc=replace(TC, versions={"cmake": "3.31", "cc": "gcc 13"})).key,
        "tier": _plan(tier="cuda13").key,
        "cuda archs": _plan(tier="cuda13", cuda_archs=("90",)).key,
    }
    assert len({base.key, *others.values()}) == 1 + len(others), others
    # the compiler's path is not identity (its version is): a different path, same key
    moved = replace(TC, cmake_defs={"CMAKE_C_COMPILER": "/opt/bin/cc"})
    assert _plan(tc=moved).key == base.key


def test_plan_sets_relocatable_rpath() -> None:
    defs = dict(_plan().cmake_defs)
    assert defs["CMAKE_INSTALL_RPATH"] == "$ORIGIN/../lib"
    assert defs["CMAKE_BUILD_WITH_INSTALL_RPATH"] == "ON"
    assert defs["GGML_CPU_ALL_VARIANTS"] == "ON"


def test_progress_parses_ninja() -> None:
    seen: list[str] = []
    p = Progress(seen.append)
    p.start("compile")
    for i in range(1, 101):
        p.line(f"[{i}/100] Building CXX object x{i}.o")
    p.line("warning: not a progress line")
    pct_lines = [s for s in seen if s.strip().startswith("compile:")]
    assert pct_lines[0].endswith("[1/100] 1%") and pct_lines[-1].endswith("[100/100] 100%")
    assert len(pct_lines) <= 12


def _tarball(tmp_path: Path, members: dict[str, bytes]) -> Path:
    p = tmp_path / "src.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return p


def test_hash_mismatch_refused_before_unpacking(tmp_path: Path) -> None:
    archive = _tarball(tmp_path, {"pkg/CMakeLists.txt": b"x"})
    dest = tmp_path / "sources" / "deadbeef"
    with pytest.raises(IntegrityError, match=r"SHA-256 mismatch for src\.tar\.gz: expected 0{64}, got [0-9a-f]{64}"):
        unpack_sdist(archive, "0" * 64, dest)
    assert not dest.exists()
    assert not (tmp_path / "sources").exists() or not any((tmp_path / "sources").iterdir())


def test_unpack_with_right_hash(tmp_path: Path) -> None:
    archive = _tarball(tmp_path, {"pkg/CMakeLists.txt": b"project(x)"})
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = unpack_sdist(archive, sha, tmp_path / "sources" / sha)
    assert (dest / "pkg" / "CMakeLists.txt").read_bytes() == b"project(x)"
    assert [p.name for p in dest.parent.iterdir()] == [sha]     # no temp dir left behind


def test_unpack_refuses_path_traversal(tmp_path: Path) -> None:
    archive = _tarball(tmp_path, {"../evil": b"x"})
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(MalformedInputError, match="cannot unpack"):
        unpack_sdist(archive, sha, tmp_path / "sources" / sha)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sources" / sha).exists()


def test_dir_source_hash_checked(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("project(x)\n")
    good = tree_hash(tree)
    assert _check_dir(EngineSource(kind="dir", path=str(tree), sha256=good), tmp_path) == tree
    (tree / "CMakeLists.txt").write_text("project(y)\n")
    with pytest.raises(IntegrityError, match=f"tree hash mismatch: expected {good}"):
        _check_dir(EngineSource(kind="dir", path=str(tree), sha256=good), tmp_path)


def test_patch_that_does_not_apply(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "a.c").write_text("one\ntwo\nthree\n")
    bad = tmp_path / "0001-bad.patch"
    bad.write_text("--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n one\n-TWO\n+2\n three\n")
    with pytest.raises(ToolError, match=r"patch 0001-bad\.patch does not apply cleanly"):
        apply_patches(tree, [bad], tmp_path / "p.log", echo=None)
    assert (tree / "src" / "a.c").read_text() == "one\ntwo\nthree\n"
    good = tmp_path / "0002-good.patch"
    good.write_text("--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n")
    apply_patches(tree, [good], tmp_path / "p.log", echo=None)
    assert (tree / "src" / "a.c").read_text() == "one\n2\nthree\n"


def test_install_tree_layout(tmp_path: Path) -> None:
    built = tmp_path / "build" / "bin"
    built.mkdir(parents=True)
    for name in ("llama-server", "llama-bench", "libllama.so.0.0.1", "libggml-base.so.0.9",
                 "libggml-cpu-haswell.so", "libggml-cuda.so", "test-thing"):
        (built / name).write_bytes(b"\x7fELF" + name.encode())
    (built / "libllama.so.0").symlink_to("libllama.so.0.0.1")
    dest = tmp_path / "engine"
    install_tree(tmp_path / "build", dest, ("llama-server", "llama-bench"))
    assert sorted(p.name for p in (dest / "bin").iterdir()) == [
        "libggml-cpu-haswell.so", "libggml-cuda.so", "llama-bench", "llama-server"]
    assert sorted(p.name for p in (dest / "lib").iterdir()) == ["libggml-base.so.0.9", "libllama.so.0", "libllama.so.0.0.1"]
    assert (dest / "lib" / "libllama.so.0").is_symlink()
    with pytest.raises(ToolError, match="did not produce llama-nope"):
        install_tree(tmp_path / "build", tmp_path / "engine2", ("llama-nope",))


def test_real_patches_apply_to_pinned_source(tmp_path: Path) -> None:
    """Each committed patch applies cleanly (no fuzz) to the pinned source (fetched into the DX cache if not there)."""
    from dxbuild.engine.source import prepare_source
    from dxbuild.paths import cache_dir

    recipe = load_engine_recipe()
    prepare_source(recipe, log=tmp_path / "source.log", echo=None)  # cached: a look at two folders
    root = cache_dir() / "sources" / recipe.source.sha256
    tops = [d for d in root.iterdir() if d.is_dir()]
    assert len(tops) == 1, f"{root}: expected the one unpacked sdist folder, found {tops}"
    assert recipe.patch_paths(), "the engine recipe lists no patches"
    pristine = tops[0] / recipe.source.subdir
    work = tmp_path / "llama.cpp"
    touched = {line[6:].strip() for p in recipe.patch_paths()
               for line in p.read_text().splitlines() if line.startswith("+++ b/")}
    assert "src/llama.cpp" in touched and "tools/server/server-queue.cpp" in touched, touched
    for rel in touched:  # only the files the patches change: the whole tree is ~100 MB
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(pristine / rel), str(work / rel)], check=True)
    apply_patches(work, recipe.patch_paths(), tmp_path / "p.log", echo=None)
    assert "#offset=" in (work / "src" / "llama.cpp").read_text()
    assert "wait_until(lock, deadline)" in (work / "tools" / "server" / "server-queue.cpp").read_text()


@pytest.mark.integration
def test_pip_download_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    """The real pinned sdist fetched by pip against a wrong pin: IntegrityError, nothing kept or unpacked."""
    from dxbuild.engine.source import download_sdist

    src = EngineSource(kind="sdist", package="llama-cpp-python", version="0.3.36", sha256="0" * 64,
                       subdir="vendor/llama.cpp")
    real = load_engine_recipe().source.sha256
    with pytest.raises(IntegrityError, match=f"expected 0{{64}}, got {real}"):
        download_sdist(src, tmp_path, tmp_path / "log.txt", echo=None)
    assert list((tmp_path / "downloads").iterdir()) == []
    assert not (tmp_path / "sources").exists()


def test_scratch_dirs_are_new_folders_at_one_depth_under_the_cache(tmp_path: Path) -> None:
    from dxbuild.engine.cmake import scratch_dir

    a = scratch_dir(tmp_path, "engine-x-")
    b = scratch_dir(tmp_path, "wheel-engine-x-")
    assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())
    assert a.parent == b.parent == tmp_path / "build"
    assert a.name.startswith("engine-x-") and b.name.startswith("wheel-engine-x-")
