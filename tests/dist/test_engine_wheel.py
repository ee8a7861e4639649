"""The engine wheel per tier (dxbuild.engine.wheel, dxbuild.engine.wheel_audit): built by scikit-build-core,
audited, installed into a fresh venv, served from, and minted from without a compiler.

The cpu wheel build is real (scikit-build-core → CMake → ninja on the pinned, patched
source); with ccache warm a cold build is about 2.5 minutes on 2 cores, and a build of the
same key is a copy from the wheel cache (seconds). The cuda13 wheel's metadata comes
from scikit-build-core's ``prepare_metadata_for_build_wheel`` (nothing compiled); the
cuda13 wheel itself is opt-in (marker ``cuda``, DX_TEST_CUDA=1).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from dxbuild.engine.wheel import REQUIRES_PYTHON, allowed_outside, wheel_metadata
from dxbuild.engine.wheel_audit import audit_wheel, glibc_level, read_elf_deps, retag
from dxmatrix.recipes import get_tier

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("cc", "c++", "gcc", "g++", "cmake", "ninja", "nvcc")


def dxbuild(*args: str, python: str = sys.executable, env: dict[str, str] | None = None,
            timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "dxbuild", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ metadata, ELF parsing (fast)


def test_cuda13_metadata_declares_the_nvidia_wheels_and_carries_none() -> None:
    meta = Parser().parsestr(wheel_metadata("cuda13"))
    assert meta["Name"] == "dx-engine-cuda13"
    assert meta["Requires-Python"] == REQUIRES_PYTHON
    pins = dict(spec.split("==") for spec in get_tier("cuda13").toolkit_wheels)
    requires = sorted(meta.get_all("Requires-Dist") or [])
    assert requires == sorted([f"nvidia-cublas<14,>={pins['nvidia-cublas']}",
                               f"nvidia-cuda-runtime<14,>={pins['nvidia-cuda-runtime']}"]), requires


def test_cpu_metadata_has_no_dependencies() -> None:
    meta = Parser().parsestr(wheel_metadata("cpu"))
    assert meta["Name"] == "dx-engine-cpu" and not meta.get_all("Requires-Dist")


def test_extras_pull_the_engine_wheel_of_this_version() -> None:
    import tomllib

    from dxbuild import __version__

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == [f"dx-engine-cpu=={__version__}"]
    assert extras["cuda13"][0].startswith(f"dx-engine-cuda13=={__version__}")


def _readelf(flag: str, path: Path) -> str:
    return subprocess.run(["readelf", flag, "-W", str(path)], capture_output=True, text=True, check=True).stdout


def test_elf_reader_agrees_with_readelf() -> None:
    exe = Path(os.path.realpath(shutil.which("ls") or "/bin/ls"))
    deps = read_elf_deps(exe.read_bytes(), exe.name)
    dyn = _readelf("-d", exe)
    assert list(deps.needed) == [line.split("[", 1)[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    versions = _readelf("-V", exe)
    assert deps.versions and all(f"Name: {v}" in versions for v in deps.versions)
    assert "GLIBC_2.2.5" in deps.versions or platform.machine() != "x86_64"


def test_glibc_level_follows_auditwheels_policy() -> None:
    assert glibc_level("GLIBC_2.34") == (2, 34)
    assert glibc_level("GLIBCXX_3.4.30") == (2, 35)   # GCC 12's libstdc++: manylinux_2_35
    assert glibc_level("GLIBCXX_3.4.19") == (2, 17)
    assert glibc_level("CXXABI_1.3.13") == (2, 34)
    assert glibc_level("GCC_3.0") == (2, 17)
    assert glibc_level("ZLIB_1.2.9") is None


# ------------------------------------------------------------------ the cpu wheel (real build, cached)


@pytest.fixture(scope="module")
def cpu_wheel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`dxbuild wheel --tier cpu` twice: the first may build (minutes), the second is a cache copy."""
    out1, out2 = tmp_path_factory.mktemp("wheel1"), tmp_path_factory.mktemp("wheel2")
    t0 = time.monotonic()
    first = dxbuild("wheel", "--tier", "cpu", "-o", str(out1))
    t1 = time.monotonic()
    assert first.returncode == 0, first.stderr[-4000:]
    second = dxbuild("wheel", "--tier", "cpu", "-o", str(out2))
    t2 = time.monotonic()
    assert second.returncode == 0, second.stderr[-4000:]
    print(f"\ndxbuild wheel --tier cpu: first {t1 - t0:.1f} s, repeat {t2 - t1:.1f} s")
    return {"path": Path(first.stdout.strip()), "again": Path(second.stdout.strip()), "second": second,
            "repeat_s": t2 - t1}


@pytest.mark.integration
def test_repeat_build_is_a_fast_cache_copy(cpu_wheel: dict[str, object]) -> None:
    first, again = Path(str(cpu_wheel["path"])), Path(str(cpu_wheel["again"]))
    assert "cache hit" in cpu_wheel["second"].stderr  # type: ignore[attr-defined]
    assert float(cpu_wheel["repeat_s"]) < 20, cpu_wheel["repeat_s"]  # type: ignore[arg-type]
    assert first.read_bytes() == again.read_bytes()


@pytest.mark.integration
def test_wheel_metadata_tag_and_layout(cpu_wheel: dict[str, object], cpu_engine: Path) -> None:
    wheel = Path(str(cpu_wheel["path"]))
    name, version, py, abi, plat = wheel.name[:-4].split("-")
    assert (name, py, abi) == ("dx_engine_cpu", "py3", "none")
    assert plat.startswith("manylinux_2_") and plat.endswith("_" + platform.machine()), plat
    with zipfile.ZipFile(wheel) as zf:
        info = f"{name}-{version}.dist-info"
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        assert (meta["Name"], meta["Requires-Python"]) == ("dx-engine-cpu", REQUIRES_PYTHON)
        wheel_file = zf.read(f"{info}/WHEEL").decode()
        assert f"Tag: py3-none-{plat}" in wheel_file and "Root-Is-Purelib: false" in wheel_file
        names = set(zf.namelist())
        for rel in ("bin/llama-server", "bin/ggml-rpc-server", "lib/libllama.so.0", "engine.json", "__init__.py"):
            assert f"dx_engine_cpu/{rel}" in names, rel
        assert not any("llama-bench" in n or "quantize" in n for n in names), "build-only tools do not ship"
        assert zf.getinfo("dx_engine_cpu/bin/llama-server").external_attr >> 16 & 0o111, "executable bit kept"
        # RECORD matches every file (the retag rewrote WHEEL and RECORD)
        for row in zf.read(f"{info}/RECORD").decode().splitlines():
            path, digest, _size = row.rsplit(",", 2)
            if digest:
                algo, want = digest.split("=", 1)
                got = base64.urlsafe_b64encode(hashlib.new(algo, zf.read(path)).digest()).rstrip(b"=").decode()
                assert got == want, path
        engine = json.loads(zf.read("dx_engine_cpu/engine.json"))
    cached = json.loads((cpu_engine / "engine.json").read_text())
    assert set(engine) == set(cached), "engine.json has the cached engine's fields"
    assert engine["key"] == cached["key"], "same plan, same key"
    # same plan, same compiler, same flags: the engine files are the cached engine's bytes
    assert engine["files"]["bin/llama-server"] == cached["files"]["bin/llama-server"]
    assert engine["files"]["lib/libllama.so.0"] == cached["files"][os.path.join(
        "lib", os.readlink(cpu_engine / "lib" / "libllama.so.0"))]


@pytest.mark.integration
def test_audit_passes_and_auditwheel_agrees(cpu_wheel: dict[str, object]) -> None:
    wheel = Path(str(cpu_wheel["path"]))
    audit = audit_wheel(wheel)
    assert audit.problems == [] and audit.elf_files >= 10
    assert wheel.name.endswith(f"-{audit.platform_tag}.whl")
    exe = Path(sysconfig.get_path("scripts")) / "auditwheel"
    if not exe.is_file():
        pytest.fail("auditwheel is missing: install the test extras (pip install -e '.[test]')")
    shown = subprocess.run([str(exe), "show", str(wheel)], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert f'"{audit.platform_tag}"' in " ".join(shown.stdout.split()), shown.stdout


def _rewrite_wheel(wheel: Path, dest: Path, member: str, *patchelf_args: str) -> Path:
    """A copy of ``wheel`` whose ``member`` went through ``patchelf ARGS`` (RECORD left as it was)."""
    work = dest / "x"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(work)
    subprocess.run(["patchelf", *patchelf_args, str(work / member)], check=True)
    out = dest / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, (work / item.filename).read_bytes())
    return out


@pytest.mark.integration
def test_audit_fails_on_a_leaked_host_library(cpu_wheel: dict[str, object], tmp_path: Path) -> None:
    wheel = Path(str(cpu_wheel["path"]))
    leaky = _rewrite_wheel(wheel, tmp_path / "a", "dx_engine_cpu/lib/libllama.so.0", "--add-needed", "libz.so.1")
    problems = audit_wheel(leaky).problems
    assert problems == ["dx_engine_cpu/lib/libllama.so.0 needs libz.so.1: not in the wheel, not on the "
                        "manylinux allowlist, not declared"], problems
    assert audit_wheel(leaky, allowed=frozenset({"libz.so.1"})).problems == []   # declared: fine
    absolute = _rewrite_wheel(wheel, tmp_path / "b", "dx_engine_cpu/bin/llama-server", "--set-rpath", "/usr/local/lib")
    problems = audit_wheel(absolute).problems
    assert any("RUNPATH /usr/local/lib points into the build machine" in p for p in problems), problems
    assert any("needs libllama-server-impl.so" in p and "not on this file's RUNPATH" in p for p in problems)


@pytest.mark.integration
def test_retag_keeps_record_valid(cpu_wheel: dict[str, object], tmp_path: Path) -> None:
    copy = tmp_path / Path(str(cpu_wheel["path"])).name
    shutil.copy2(Path(str(cpu_wheel["path"])), copy)
    new = retag(copy, "manylinux_2_99_x86_64")
    assert new.name.endswith("-py3-none-manylinux_2_99_x86_64.whl") and not copy.exists()
    assert new.stat().st_mode & 0o777 == Path(str(cpu_wheel["path"])).stat().st_mode & 0o777 == 0o644
    with zipfile.ZipFile(new) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
        text = zf.read(info)
        assert b"Tag: py3-none-manylinux_2_99_x86_64" in text
        row = next(r for r in zf.read(info.replace("WHEEL", "RECORD")).decode().splitlines() if r.startswith(info))
        assert row.split(",")[1] == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text).digest()).rstrip(
            b"=").decode()


# ------------------------------------------------------------------ installed into a fresh venv


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory, cpu_wheel: dict[str, object]) -> dict[str, Path]:
    """A new venv with the cpu engine wheel pip-installed; dxbuild and its dependencies come from the
    dev venv through a .pth (site.addsitedir), so nothing else is installed or downloaded."""
    base = tmp_path_factory.mktemp("wheelvenv")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(cpu_wheel["path"])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (site / "zz_dev_venv.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    cache = base / "cache"   # empty engines/; the content-keyed model and bundle caches are shared
    cache.mkdir()
    shared = Path(os.environ.get("DX_CACHE_DIR") or Path.home() / ".cache" / "dx")
    for sub in ("models", "downloads", "bundles"):
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(shared / sub)
    return {"base": base, "python": py, "site": site, "cache": cache}


def _venv_env(v: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if not k.startswith(("DX_ENGINE", "DX_TEST", "VIRTUAL_ENV"))}
    env.update(DX_CACHE_DIR=str(v["cache"]), PYTHONNOUSERSITE="1", **extra)
    return env


@pytest.mark.integration
def test_dx_serve_answers_from_the_installed_wheel(wheel_venv: dict[str, Path], smollm2_gguf: Path,
                                                   tmp_path: Path) -> None:
    from support.serve_harness import start_dx

    from dx.models.catalog import Store

    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, "smollm2-wheel")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "llama-server").exists())
    dx = start_dx(tmp_path, model="smollm2-wheel", python=str(wheel_venv["python"]),
                  env=_venv_env(wheel_venv, PATH=path), timeout=120)
    try:
        client = dx.openai(timeout=120)
        reply = client.chat.completions.create(model="smollm2-wheel", max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content
        engines = dx.children()
        assert engines, "no llama-server child"
        exe = Path(os.readlink(f"/proc/{engines[0]}/exe"))
        assert exe == (wheel_venv["site"] / "dx_engine_cpu" / "bin" / "llama-server").resolve(), exe
    finally:
        dx.stop()
    assert not (wheel_venv["cache"] / "engines").exists()


def _compiler_shims(d: Path, marker: Path) -> Path:
    d.mkdir()
    for name in COMPILERS:
        shim = d / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> {marker}\nexit 1\n')
        shim.chmod(0o755)
    return d


@pytest.mark.integration
def test_dxbuild_mints_from_the_installed_wheel_without_a_compiler(wheel_venv: dict[str, Path],
                                                                   smollm2_gguf: Path, tmp_path: Path) -> None:
    py = str(wheel_venv["python"])
    env = _venv_env(wheel_venv)
    # The Nuitka bundle does need a C compiler: the dev venv makes sure the shared bundle cache has
    # it for this runtime source (keyed by the engine key and file names, not the engine's path, so
    # the wheel's engine shares it; a 2-4 minute build only when the runtime source changed)
    warm = dxbuild("--gpu", "cpu", "--no-bench", "-o", str(tmp_path / "warm"))
    assert warm.returncode == 0, warm.stderr[-4000:]
    marker = tmp_path / "compiler-ran"
    shims = _compiler_shims(tmp_path / "shims", marker)
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    t0 = time.monotonic()
    res = dxbuild("--gpu", "cpu", "--model", "smollm2", "--no-bench", "-o", str(tmp_path / "out"), python=py, env=env)
    print(f"\nmint from the installed engine wheel: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-4000:]
    assert not marker.exists(), f"a compiler ran: {marker.read_text()}"
    assert "from the installed dx-engine-cpu wheel" in res.stderr
    exe = tmp_path / "out" / f"dx-smollm2-cpu-linux-{platform.machine()}"
    assert exe.is_file() and exe.stat().st_size > smollm2_gguf.stat().st_size
    assert not any((wheel_venv["cache"] / d).exists() for d in ("engines", "sources", "build"))

    # an installed wheel of another key is said in one line, and dxbuild goes on to build (here: the shims)
    engine_json = wheel_venv["site"] / "dx_engine_cpu" / "engine.json"
    original = engine_json.read_text()
    try:
        engine_json.write_text(original.replace(json.loads(original)["key"], "0" * 64))
        other = dxbuild("engine", "--tier", "cpu", python=py, env=env, timeout=300)
    finally:
        engine_json.write_text(original)
    assert "the installed dx-engine-cpu has engine key 0000000000000000, this recipe plans" in other.stderr, \
        other.stderr[-2000:]
    assert other.returncode != 0 and marker.exists(), "it went on to provision a compiler"


# ------------------------------------------------------------------ cuda13 (opt-in: compiles CUDA)


@pytest.mark.cuda
@pytest.mark.integration
def test_cuda13_wheel_declares_and_does_not_carry_cublas(tmp_path: Path) -> None:
    res = dxbuild("wheel", "--tier", "cuda13", "--cuda-archs", "90", "-o", str(tmp_path), timeout=3 * 3600)
    assert res.returncode == 0, res.stderr[-4000:]
    wheel = Path(res.stdout.strip())
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "dx_engine_cuda13/bin/libggml-cuda.so" in names
    assert not any("libcublas" in n or "libcudart" in n for n in names), "cuBLAS/cudart come from NVIDIA's wheels"
    assert "Requires-Dist: nvidia-cublas" in meta and "Requires-Dist: nvidia-cuda-runtime" in meta
    assert {"libcublas.so.13", "libcudart.so.13"} <= allowed_outside("cuda13")
    assert audit_wheel(wheel, allowed=allowed_outside("cuda13")).problems == []


# ------------------------------------------------------------------ the release workflow


def test_release_builds_each_published_tier_and_publishes_with_trusted_publishing() -> None:
    import yaml

    from dxbuild.engine.wheel import PUBLISHED_TIERS
    from dxbuild.release.render_ci import ACTIONS, matrix_entries

    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["jobs"]
    build = jobs["engine-wheels"]
    cells = build["strategy"]["matrix"]["include"]
    want = {(e["tier"], e["arch"]) for e in matrix_entries() if e["os"] == "linux" and e["tier"] in PUBLISHED_TIERS}
    assert {(c["tier"], c["arch"]) for c in cells} == want and {"cpu", "cuda13"} <= {t for t, _ in want}
    assert all(c["image"].startswith("quay.io/pypa/manylinux_2_28_") for c in cells)
    assert build["container"] == "${{ matrix.image }}"
    assert any("dxbuild wheel --tier" in (s.get("run") or "") for s in build["steps"])
    publish = jobs["publish-engine-wheels"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert publish["environment"]["name"] == "pypi"
    assert publish["permissions"] == {"id-token": "write"}, "trusted publishing: OIDC only, nothing else"
    assert "engine-wheels" in publish["needs"]
    assert any(s.get("uses") == ACTIONS["pypi_publish"] for s in publish["steps"])
    assert ACTIONS["pypi_publish"].startswith("pypa/gh-action-pypi-publish@")
    assert "password" not in json.dumps(publish), "no API token: PyPI trusts the workflow's identity"
