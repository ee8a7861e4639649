"""Build llama.cpp's ``llama-server`` + ``llama-bench`` for one cell, into a content-addressed cache.

The engine directory ``engines/<tier>-<os>-<arch>-<key16>/`` is keyed by the
hash of everything that decides its bytes: source identity, patch contents,
final CMake values, toolchain versions, target, and this file's layout version.
A second build with the same inputs only recomputes the key (seconds). A new
entry is compiled in a scratch build folder, installed into a temporary
sibling of its final path and renamed into place, so an interrupted build
never leaves a half-populated entry.

Layout: ``bin/`` holds the executables and ggml's loadable backend modules
(ggml searches the executable's folder for ``libggml-<backend>-*.so``),
``lib/`` the shared libraries; everything carries the rpath ``$ORIGIN/../lib``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from dxbuild import toolchains
from dxbuild.engine.cmake import (
    Progress,
    build_env,
    build_lock,
    cmake_configure_cmd,
    dir_size,
    engine_info,
    install_runtime_libs,
    install_tree,
    jobs,
    scratch_dir,
    strip_files,
)
from dxbuild.engine.installed import installed_engine
from dxbuild.engine.plan import EnginePlan, plan_engine, wants_webui, with_webui
from dxbuild.engine.source import prepare_source
from dxbuild.paths import cache_dir
from dxbuild.run_cmd import Echo, run_cmd, sigterm_as_exit, stderr_echo
from dxbuild.toolchains import Toolchain
from dxbuild.toolchains.plan import plan_host_cell
from dxmatrix.cell import Cell
from dxmatrix.recipes import EngineRecipe
from dxverify.errors import ToolError
from dxverify.hashing import sha256_file


def _write_engine_json(dest: Path, plan: EnginePlan, recipe: EngineRecipe, toolchain: Toolchain,
                       source_sha: str, commit: str, build_seconds: float) -> dict[str, object]:
    size = dir_size(dest)
    info = engine_info(plan, recipe, toolchain, source_sha, commit)
    info["size_bytes"] = size
    info["files"] = {p.relative_to(dest).as_posix(): sha256_file(p)
                     for p in sorted(dest.rglob("*")) if p.is_file() and not p.is_symlink()}
    # engine.json holds only what the inputs decide, so two builds are byte-identical;
    # how long this build took goes next to the logs
    (dest / "engine.json").write_text(json.dumps(info, indent=2) + "\n")
    stats = dest.parent.parent / "logs" / f"{plan.dir_name}.build.json"
    stats.write_text(json.dumps({"build_seconds": round(build_seconds, 1), "size_bytes": size}) + "\n")
    return info


def cached_engine(plan: EnginePlan, cache: Path) -> Path | None:
    d = cache / "engines" / plan.dir_name
    return d if (d / "engine.json").is_file() else None


def build_engine(
    cell: Cell,
    recipe: EngineRecipe,
    *,
    cache: Path | None = None,
    echo: Echo | None = stderr_echo,
) -> Path:
    """The engine directory for ``cell``: from the cache, or built now."""
    recipe = recipe.with_patches(cell.tier_patches)
    cache = cache or cache_dir()
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    progress = Progress(echo)
    t0 = time.monotonic()
    log = logs / f"engine-{cell.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"

    wheel = installed_engine(cell, recipe, echo)   # before provisioning: decided without running a compiler
    if wheel:
        return wheel
    toolchain = toolchains.provision(cell, cache, log)
    patch_hashes = tuple((p.name, sha256_file(p)) for p in recipe.patch_paths())
    plan = plan_engine(cell, recipe, toolchain, patch_hashes)
    hit = cached_engine(plan, cache)
    if hit:
        if echo:
            echo(f"engine {cell.name}: cache hit ({plan.key[:16]})")
        return hit
    with build_lock(cache / "engines" / f".{plan.dir_name}.lock", cell.name, echo), sigterm_as_exit():
        hit = cached_engine(plan, cache)
        if hit:   # another process built it while we waited
            if echo:
                echo(f"engine {cell.name}: built by another process ({plan.key[:16]})")
            return hit
        # under the lock, leftovers of this key are from a killed build: remove them
        for stale in [*(cache / "engines").glob(f".{plan.dir_name}.tmp-*"), *(cache / "build").glob(f"{plan.dir_name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        return _build_new(plan, cell, recipe, toolchain, cache, log, progress, echo, t0)


def _build_new(plan: EnginePlan, cell: Cell, recipe: EngineRecipe, toolchain: Toolchain, cache: Path,
               log: Path, progress: Progress, echo: Echo | None, t0: float) -> Path:
    if echo:
        echo(f"engine {cell.name}: building (key {plan.key[:16]}); log: {log}")
    progress.start("fetch and verify source")
    src = prepare_source(recipe, cache=cache, log=log, echo=echo)

    build = scratch_dir(cache, f"{plan.dir_name}-")
    final = cache / "engines" / plan.dir_name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.dir_name}.tmp-", dir=final.parent))
    ok = stopped = False
    try:
        env = build_env(toolchain, src.path, build)
        progress.start("configure (CMake)")
        run_cmd(cmake_configure_cmd(plan, toolchain, src.path, build), log=log, env=env, echo=echo,
                what="CMake configure")
        progress.start("compile")
        run_cmd([toolchain.cmake, "--build", str(build), "--target", *plan.targets, "-j", jobs()],
                log=log, env=env, echo=echo, on_line=progress.line, what="compile")
        if wants_webui(cell) and not (build / "tools" / "ui" / "dist" / "index.html").is_file():
            # llama.cpp's CMake only notes a failed npm step and builds a server without the UI
            raise ToolError("the web UI was asked for but npm did not build it", hint=f"see the npm lines in {log}")
        progress.start("install, strip")
        shutil.rmtree(staging)
        installed = install_tree(build, staging, plan.targets)
        strip_files(installed, log, echo, toolchain.strip)
        install_runtime_libs(toolchain.runtime_libs, staging)
        info = _write_engine_json(staging, plan, recipe, toolchain, src.sha256, src.llama_cpp_commit,
                                  time.monotonic() - t0)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "engine.json").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)   # a concurrent build won; same key, same bytes
        ok = True
        size_mb = int(info["size_bytes"]) / 1e6  # type: ignore[call-overload]
        if echo:
            echo(f"engine {cell.name}: built in {time.monotonic() - t0:.0f}s, {size_mb:.1f} MB")
            if cell.size_budget_mb and size_mb > cell.size_budget_mb:
                echo(f"warning: engine {cell.name} is {size_mb:.1f} MB, over its budget of {cell.size_budget_mb} MB")
    except (KeyboardInterrupt, SystemExit):
        stopped = True   # Ctrl-C or SIGTERM: run_cmd has stopped the tools; nothing here is worth inspecting
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if ok or stopped:
            shutil.rmtree(build, ignore_errors=True)
        elif echo:
            echo(f"engine {cell.name}: build folder kept for inspection: {build}")
    return final


def configure_only(cell: Cell, recipe: EngineRecipe, *, cache: Path | None = None,
                   echo: Echo | None = stderr_echo) -> Path:
    """Provision the toolchain, prepare the source and run CMake configure only.

    Proves a tier's toolchain works on this host without the long compile; the
    configured folder is ``build/<cell>-<key16>-configured`` in the cache.
    """
    recipe = recipe.with_patches(cell.tier_patches)
    cache = cache or cache_dir()
    log = cache / "logs" / f"configure-{cell.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    toolchain = toolchains.provision(cell, cache, log)
    patch_hashes = tuple((p.name, sha256_file(p)) for p in recipe.patch_paths())
    plan = plan_engine(cell, recipe, toolchain, patch_hashes)
    src = prepare_source(recipe, cache=cache, log=log, echo=echo)
    build = cache / "build" / f"{plan.dir_name}-configured"
    # One configure of this folder at a time: a second process would delete it under the first one's
    # CMake ("getcwd() failed" in the CUDA compiler probe).
    with build_lock(cache / "build" / f".{plan.dir_name}-configured.lock", f"{cell.name} configure", echo):
        shutil.rmtree(build, ignore_errors=True)
        build.parent.mkdir(parents=True, exist_ok=True)
        if echo:
            echo(f"configure {cell.name}; log: {log}")
        run_cmd(cmake_configure_cmd(plan, toolchain, src.path, build), log=log,
                env=build_env(toolchain, src.path, build), echo=echo, what="CMake configure")
    return build


def host_engine(tier: str = "cpu", *, cuda_archs: tuple[str, ...] | None = None, cache: Path | None = None,
                echo: Echo | None = stderr_echo, webui: bool = False) -> Path:
    """The engine directory for ``tier`` on this machine, from the cache or built now.

    The one call other parts use (``dxbuild engine``, the mint pipeline, the
    ``cpu_engine`` test fixture): recipe + matrix resolve into a Cell here.
    """
    cell, recipe = plan_host_cell(tier, cuda_archs=cuda_archs)
    if webui:
        cell = with_webui(cell)
    return build_engine(cell, recipe, cache=cache, echo=echo)
