"""`dxbuild wheel`: the engine as one pip wheel per tier (dx-engine-cpu, dx-engine-cuda13, …).

The wheel is built by scikit-build-core from ``builder/engine/engine_wheel/`` (a
pyproject.toml template and a small CMakeLists.txt), out of the same unpacked,
patched source tree and with the same CMake values as ``dxbuild engine``: the
plan is :func:`dxbuild.engine.plan.plan_engine`'s, so the wheel's ``engine.json``
carries the same key as the cached engine of that cell and ccache serves the
compile. ``wheel.py-api = "py3"``: nothing in it is a Python extension, so one
wheel per tier installs on any Python 3. A GPU tier's vendor libraries (cuBLAS,
cudart) are declared dependencies on NVIDIA's own wheels, never carried.

Built wheels are cached in ``wheels/<cell>-<key16>/`` by the engine key plus
everything else that decides the wheel (its project files, name, version,
dependencies); a repeat run copies the cached file. Every wheel passes
:mod:`dxbuild.engine.wheel_audit` before it is cached, and is tagged with the
manylinux policy its ELF files satisfy.

``dxbuild.engine.installed`` is the other direction: an installed engine wheel
whose key equals the one planned is the engine, and no compiler runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2

from dxbuild import __version__, toolchains
from dxbuild.engine.cmake import (
    Progress,
    build_env,
    build_lock,
    cmake_configure_cmd,
    engine_info,
    jobs,
    scratch_dir,
)
from dxbuild.engine.installed import dist_name, package_name
from dxbuild.engine.plan import plan_engine
from dxbuild.engine.source import prepare_source
from dxbuild.engine.wheel_audit import audit_wheel, retag
from dxbuild.paths import cache_dir
from dxbuild.run_cmd import Echo, run_cmd, stderr_echo
from dxbuild.templates import environment
from dxbuild.toolchains.plan import plan_host_cell
from dxverify.errors import ConfigurationError, ToolError
from dxverify.hashing import sha256_file

PROJECT_DIR = Path(__file__).with_name("engine_wheel")
AUDIT_MODULE = Path(__file__).with_name("wheel_audit.py")   # decides the platform tag: part of the wheel key
#: the executables a wheel ships: the ones a minted executable carries (dxbuild.bundle.nuitka.ENGINE_FILES)
EXECUTABLES = ("llama-server", "ggml-rpc-server")
#: per tier: distribution -> the shared libraries it provides. The wheel declares the
#: distribution (its major version pinned by recipes/tiers.toml's toolkit_wheels) and carries none of them.
DECLARED_LIBS: dict[str, dict[str, tuple[str, ...]]] = {
    "cuda13": {"nvidia-cublas": ("libcublas.so.13", "libcublasLt.so.13"),
               "nvidia-cuda-runtime": ("libcudart.so.13",)},
}
#: where NVIDIA's CUDA 13 wheels put their libraries, seen from the engine's bin/ and lib/ in site-packages
NVIDIA_CU13_RPATH = "$ORIGIN/../../nvidia/cu13/lib"
#: libraries the machine provides with its GPU driver (no wheel has them)
DRIVER_LIBS: dict[str, tuple[str, ...]] = {
    "cuda13": ("libcuda.so.1",), "cuda12": ("libcuda.so.1",), "vulkan": ("libvulkan.so.1",),
}
REQUIRES_PYTHON = ">=3.10"  # dxbuild's and dx's own
#: the tiers whose wheels the release workflow builds (Linux, in the manylinux_2_28 image) and publishes to PyPI;
#: the extras in pyproject.toml name these. Others build locally with `dxbuild wheel --tier TIER`.
PUBLISHED_TIERS = ("cpu", "cuda13")


def dependencies(tier: str) -> list[str]:
    """Requirements on the vendor wheels, e.g. ``nvidia-cublas>=13.0.2.14,<14``.

    The lower bound is the version the toolchain builds against; any later
    release of the same major keeps the SONAME (``libcublas.so.13``) and ABI.
    """
    from dxmatrix.recipes import get_tier

    declared = DECLARED_LIBS.get(tier, {})
    if not declared:
        return []
    pins = dict(spec.split("==", 1) for spec in get_tier(tier).toolkit_wheels)
    out = []
    for dist in declared:
        version = pins.get(dist)
        if version is None:
            raise ConfigurationError(f"recipes/tiers.toml: tier {tier} has no toolkit_wheels entry for {dist}",
                                     hint=f'add "{dist}==VERSION" to [tiers.{tier}.toolkit_wheels]')
        out.append(f"{dist}>={version},<{int(version.split('.')[0]) + 1}")
    return out


def allowed_outside(tier: str) -> frozenset[str]:
    """Libraries an engine wheel of ``tier`` may need without carrying them: declared ones and the driver's."""
    return frozenset(lib for libs in DECLARED_LIBS.get(tier, {}).values() for lib in libs) | frozenset(
        DRIVER_LIBS.get(tier, ()))


# ------------------------------------------------------------------ the project


def _templates() -> jinja2.Environment:
    env = environment()   # DX's [[ ]] delimiters, strict undefined
    env.loader = jinja2.FileSystemLoader(str(PROJECT_DIR))
    return env


def render_project(tier: str, dest: Path, *, commit: str, license_file: Path | None = None) -> Path:
    """Write the wheel project for ``tier`` into ``dest``: pyproject.toml, the CMake files, the package."""
    env = _templates()
    values = {"tier": tier, "dist_name": dist_name(tier), "version": __version__, "commit": commit,
              "requires_python": REQUIRES_PYTHON, "dependencies": dependencies(tier),
              "targets": list(EXECUTABLES), "license_file": license_file is not None}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(env.get_template("pyproject.toml.j2").render(**values))
    for name in ("CMakeLists.txt", "install_engine.cmake"):
        shutil.copy2(PROJECT_DIR / name, dest / name)
    pkg = dest / package_name(tier)
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(env.get_template("__init__.py.j2").render(**values))
    if license_file is not None:
        shutil.copy2(license_file, dest / "LICENSE")
    return dest


def wheel_metadata(tier: str) -> str:
    """The METADATA a wheel of ``tier`` gets, from scikit-build-core without configuring or compiling anything."""
    from scikit_build_core.build import prepare_metadata_for_build_wheel

    from dxmatrix.recipes import load_engine_recipe

    with tempfile.TemporaryDirectory(prefix="dx-wheel-meta-") as tmp:
        project = render_project(tier, Path(tmp) / "project", commit=load_engine_recipe().source.commit)
        out = Path(tmp) / "meta"
        out.mkdir()
        with _cwd(project), contextlib.redirect_stdout(sys.stderr):   # its banner is not metadata
            info = prepare_metadata_for_build_wheel(str(out))
        return (out / info / "METADATA").read_text(encoding="utf-8")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ------------------------------------------------------------------ building


@dataclass(frozen=True)
class WheelResult:
    path: Path          # the wheel in the output directory
    engine_key: str
    reused: bool        # copied from the wheel cache
    seconds: float


def wheel_engine_plan(plan, tier: str):  # type: ignore[no-untyped-def]
    """The engine plan a wheel of ``tier`` builds: the cell's, plus the vendor wheels' folder in the rpath.

    A tier with declared libraries finds them in NVIDIA's wheels next to it in
    site-packages (as torch does); that rpath is a CMake value, so it is in the key.
    """
    if not DECLARED_LIBS.get(tier):
        return plan
    defs = dict(plan.cmake_defs)
    defs["CMAKE_INSTALL_RPATH"] = f"{defs['CMAKE_INSTALL_RPATH']};{NVIDIA_CU13_RPATH}"
    inputs = {**plan.key_inputs, "wheel_rpath": defs["CMAKE_INSTALL_RPATH"]}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return replace(plan, key=key, dir_name=f"{plan.cell.name}-{key[:16]}", cmake_defs=tuple(sorted(defs.items())),
                   key_inputs=inputs)


def wheel_key(engine_key: str, tier: str) -> str:
    """Everything that decides the wheel's bytes beyond the engine: its project files, name, version, deps."""
    h = hashlib.sha256()
    for part in (engine_key, dist_name(tier), __version__, REQUIRES_PYTHON, *dependencies(tier), *EXECUTABLES,
                 *(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in [
                     *sorted(q for q in PROJECT_DIR.iterdir() if q.is_file()), AUDIT_MODULE])):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _cached_wheel(entry: Path) -> Path | None:
    found = sorted(entry.glob("*.whl")) if entry.is_dir() else []
    return found[0] if len(found) == 1 else None


def build_wheel(tier: str, out_dir: Path, *, cuda_archs: tuple[str, ...] | None = None, cache: Path | None = None,
                echo: Echo | None = stderr_echo) -> WheelResult:
    """The ``dx-engine-<tier>`` wheel for this machine in ``out_dir``: from the wheel cache, or built now.

    ``cuda_archs`` narrows a CUDA tier (a local or test build); releases use the recipe's list.
    """
    t0 = time.monotonic()
    cache = cache or cache_dir()
    cell, recipe = plan_host_cell(tier, cuda_archs=cuda_archs)
    recipe = recipe.with_patches(cell.tier_patches)
    log = cache / "logs" / f"wheel-{cell.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    toolchain = toolchains.provision(cell, cache, log)
    patch_hashes = tuple((p.name, sha256_file(p)) for p in recipe.patch_paths())
    plan = wheel_engine_plan(plan_engine(cell, recipe, toolchain, patch_hashes), tier)
    entry = cache / "wheels" / f"{cell.name}-{wheel_key(plan.key, tier)[:16]}"
    out_dir.mkdir(parents=True, exist_ok=True)

    def deliver(wheel: Path, reused: bool) -> WheelResult:
        shutil.copy2(wheel, out_dir / wheel.name)
        seconds = time.monotonic() - t0
        if echo:
            how = "cache hit" if reused else f"built in {seconds:.0f}s"
            echo(f"wheel {dist_name(tier)}: {how} (engine key {plan.key[:16]}), {wheel.stat().st_size / 1e6:.1f} MB")
        return WheelResult(out_dir / wheel.name, plan.key, reused, seconds)

    hit = _cached_wheel(entry)
    if hit:
        return deliver(hit, True)
    with build_lock(entry.parent / f".{entry.name}.lock", f"wheel {dist_name(tier)}", echo):
        hit = _cached_wheel(entry)
        if hit:
            return deliver(hit, True)
        wheel = _build_new(tier, plan, recipe, toolchain, cache, log, echo)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
        shutil.move(str(wheel), tmp / wheel.name)
        shutil.rmtree(wheel.parent, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if _cached_wheel(entry) is None:
                raise
        return deliver(_cached_wheel(entry) or entry, False)


def _build_new(tier: str, plan, recipe, toolchain, cache: Path, log: Path,  # type: ignore[no-untyped-def]
               echo: Echo | None) -> Path:
    """Render the project, run scikit-build-core through pip, audit and tag the result; the wheel's path."""
    progress = Progress(echo)
    if echo:
        echo(f"wheel {dist_name(tier)}: building with scikit-build-core (engine key {plan.key[:16]}); log: {log}")
    progress.start("fetch and verify source")
    src = prepare_source(recipe, cache=cache, log=log, echo=echo)
    # same depth under the cache as `dxbuild engine`'s build folders: ccache's relative paths then agree
    build = scratch_dir(cache, f"wheel-{plan.dir_name}-")
    work = scratch_dir(cache, f"wheel-{plan.dir_name}-project-")
    try:
        license_file = src.path / "LICENSE"
        project = render_project(tier, work / "project", commit=src.llama_cpp_commit,
                                 license_file=license_file if license_file.is_file() else None)
        info = engine_info(plan, recipe, toolchain, src.sha256, src.llama_cpp_commit)
        info["binaries"] = {name: f"bin/{name}" for name in EXECUTABLES}
        (work / "engine-base.json").write_text(json.dumps(info, indent=2) + "\n")
        # exactly `dxbuild engine`'s -D values (tier flags, toolchain, reproducible paths), as config settings
        defs = [a[2:] for a in cmake_configure_cmd(plan, toolchain, src.path, build) if a.startswith("-D")]
        defs += [f"DX_LLAMA_SOURCE_DIR={src.path}", f"DX_ENGINE_PACKAGE={package_name(tier)}",
                 f"DX_ENGINE_JSON={work / 'engine-base.json'}", f"DX_ENGINE_EXECUTABLES={';'.join(EXECUTABLES)}"]
        settings = [f"build-dir={build}", *(f"cmake.define.{d}" for d in defs)]
        env = build_env(toolchain, src.path, build)
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = jobs()
        out = work / "dist"
        progress.start("scikit-build-core: configure, compile, install")
        run_cmd([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "--no-index",
                 "--disable-pip-version-check", "-w", out, *(f"--config-settings={s}" for s in settings), project],
                log=log, env=env, echo=echo, on_line=progress.line, what="pip wheel (scikit-build-core)")
        wheels = list(out.glob("*.whl"))
        if len(wheels) != 1:
            raise ToolError(f"pip wheel produced {len(wheels)} wheels in {out}, expected one (log: {log})")
        progress.start("audit")
        audit = audit_wheel(wheels[0], allowed=allowed_outside(tier))
        if audit.problems:
            raise ToolError(f"wheel {wheels[0].name} fails the audit: {'; '.join(audit.problems[:5])}",
                            hint=f"see {log}")
        final = retag(wheels[0], audit.platform_tag)
        keep = scratch_dir(cache, ".wheel-out-")
        shutil.move(str(final), keep / final.name)
        return keep / final.name
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
