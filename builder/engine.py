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

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dxbuild import toolchains
from dxbuild.paths import cache_dir
from dxbuild.recipes import EngineRecipe, file_sha256
from dxbuild.run_cmd import Echo, run_cmd, stderr_echo
from dxbuild.source import prepare_source
from dxbuild.toolchains import Toolchain
from dxmatrix.cell import Cell
from dxverify.errors import ToolError

#: Bump when the install layout or engine.json changes meaning.
LAYOUT_VERSION = 2  # 2: source paths mapped for ccache too (entries built before that differ in __FILE__ strings)
#: Fixed timestamp for reproducible builds (1980-01-01, valid in zip too).
SOURCE_DATE_EPOCH = "315532800"
#: Where the source and build folders appear in debug info and __FILE__.
SRC_PREFIX = "/dx/llama.cpp"
BUILD_PREFIX = "/dx/build"

_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
# ggml's loadable backends, by file name; arm64 CPU variants have dots (libggml-cpu-armv8.2_1.so)
_BACKEND_MODULE = re.compile(r"^(lib)?ggml-(?!base)[a-z0-9_.-]+?\.(so|dll|dylib)$")


@dataclass(frozen=True)
class EnginePlan:
    """What an engine build will do, decided before doing it (pure; unit-tested)."""

    cell: Cell
    key: str
    dir_name: str
    cmake_defs: tuple[tuple[str, str], ...]
    targets: tuple[str, ...]
    key_inputs: dict[str, object]


def plan_engine(cell: Cell, recipe: EngineRecipe, toolchain: Toolchain,
                patch_hashes: tuple[tuple[str, str], ...]) -> EnginePlan:
    """The cache key and CMake definitions for ``cell`` (no I/O)."""
    defs = dict(cell.cmake_dict)
    defs.update(toolchain.cmake_defs)
    defs.update({
        "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON",
        "CMAKE_INSTALL_RPATH": "$ORIGIN/../lib",
        "CMAKE_SKIP_INSTALL_RPATH": "OFF",
    })
    key_inputs: dict[str, object] = {
        "layout": LAYOUT_VERSION,
        "source": recipe.source.identity,
        "subdir": recipe.source.subdir,
        "patches": [list(p) for p in patch_hashes],
        "cmake": sorted((k, v) for k, v in defs.items() if k not in toolchain.cmake_defs),
        "toolchain": {"name": toolchain.name, **toolchain.versions},
        "target": f"{cell.os}-{cell.arch}",
        "targets": list(recipe.targets),
    }
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()
    return EnginePlan(cell=cell, key=key, dir_name=f"{cell.name}-{key[:16]}",
                      cmake_defs=tuple(sorted(defs.items())), targets=tuple(recipe.targets),
                      key_inputs=key_inputs)


class Progress:
    """One status line: which step runs, and how far the compile is (from ninja's [n/N])."""

    def __init__(self, echo: Echo | None = stderr_echo) -> None:
        self.echo = echo
        self.tty = sys.stderr.isatty()
        self.last_pct = -1
        self.step = ""

    def start(self, step: str) -> None:
        self.step = step
        self.last_pct = -1
        if self.echo:
            self.echo(f"==> {step}")

    def line(self, text: str) -> None:
        m = _NINJA_PROGRESS.match(text)
        if not m or not self.echo:
            return
        n, total = int(m.group(1)), int(m.group(2))
        pct = n * 100 // max(total, 1)
        if self.tty:
            sys.stderr.write(f"\r    {self.step}: [{n}/{total}] {pct:3d}%")
            if n == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif pct // 10 != self.last_pct // 10 or n == total:
            self.echo(f"    {self.step}: [{n}/{total}] {pct}%")
        self.last_pct = pct


def _build_env(toolchain: Toolchain, src: Path, build: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(toolchain.env)
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"
    # ccache (used by ggml when found): share hits across build folders
    env.setdefault("CCACHE_BASEDIR", str(build.parent.parent))
    env.setdefault("CCACHE_NOHASHDIR", "1")
    env.setdefault("CCACHE_COMPILERCHECK", "content")
    return env


def _repro_flags(src: Path, build: Path) -> str:
    """Map the source and build folders to fixed names in __FILE__ and debug info.

    Both spellings are mapped: the absolute one, and the relative one ccache's
    CCACHE_BASEDIR turns it into (compilers run in the build folder), so an
    engine is the same bytes with or without ccache.
    """
    rel_src = os.path.relpath(src, build)
    maps = [(str(src), SRC_PREFIX), (rel_src, SRC_PREFIX), (str(build), BUILD_PREFIX)]
    return " ".join(f"-f{kind}-prefix-map={old}={new}" for kind in ("file", "debug") for old, new in maps)


def _cmake_configure_cmd(plan: EnginePlan, toolchain: Toolchain, src: Path, build: Path) -> list[str]:
    repro = _repro_flags(src, build)
    defs = dict(plan.cmake_defs)
    defs["CMAKE_C_FLAGS"] = (defs.get("CMAKE_C_FLAGS", "") + " " + repro).strip()
    defs["CMAKE_CXX_FLAGS"] = (defs.get("CMAKE_CXX_FLAGS", "") + " " + repro).strip()
    if "CMAKE_CUDA_ARCHITECTURES" in defs:
        cuda_repro = " ".join(f"-Xcompiler={f}" for f in repro.split())
        defs["CMAKE_CUDA_FLAGS"] = " ".join(x for x in (defs.get("CMAKE_CUDA_FLAGS", ""), toolchain.cuda_flags,
                                                        cuda_repro) if x)
    cmd = [toolchain.cmake, "-S", str(src), "-B", str(build), "-G", "Ninja", "--no-warn-unused-cli"]
    cmd += [f"-D{k}={v}" for k, v in sorted(defs.items())]
    return cmd


def _jobs() -> str:
    return os.environ.get("DX_BUILD_JOBS") or str(max(1, min(os.cpu_count() or 1, 64)))


def _is_elf(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def install_runtime_libs(libs: tuple[str, ...], dest: Path) -> None:
    """Copy the toolchain's run-time libraries (CUDA runtime, cuBLAS) into ``dest/lib``, by their SONAME file name."""
    for lib in libs:
        src = Path(lib)
        if not src.exists():
            raise ToolError(f"run-time library {src} is missing from the toolchain")
        shutil.copy2(src.resolve(), dest / "lib" / src.name)


def install_tree(build: Path, dest: Path, targets: tuple[str, ...]) -> list[Path]:
    """Copy the built executables and libraries from ``build/bin`` into ``dest/{bin,lib}``."""
    built = build / "bin"
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    installed: list[Path] = []
    for t in targets:
        exe = built / (t + (".exe" if os.name == "nt" else ""))
        if not exe.is_file():
            raise ToolError(f"the build did not produce {exe.name} (expected in {built})")
        shutil.copy2(exe, dest / "bin" / exe.name)
        installed.append(dest / "bin" / exe.name)
    for p in sorted(built.iterdir()):
        if not re.search(r"\.(so(\.\d+)*|dylib|dll)$", p.name):
            continue
        to = dest / ("bin" if _BACKEND_MODULE.match(p.name) else "lib") / p.name
        if p.is_symlink():
            os.symlink(os.readlink(p), to)
        else:
            shutil.copy2(p, to)
            installed.append(to)
    return installed


def strip_files(files: list[Path], log: Path, echo: Echo | None, strip: str = "") -> None:
    """Strip symbols the engine does not need at run time (keeps dynamic symbols).

    ``strip``: the target's strip for a cross build (the host's cannot read another arch's ELF).
    """
    elfs = [f for f in files if _is_elf(f)]
    strip = strip or shutil.which("strip") or ""
    if not elfs or not strip:
        return
    run_cmd([strip, "--strip-unneeded", *map(str, elfs)], log=log, echo=echo, what="strip")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def engine_info(plan: EnginePlan, recipe: EngineRecipe, toolchain: Toolchain, source_sha: str,
                commit: str) -> dict[str, object]:
    """engine.json's fields, with ``size_bytes`` and ``files`` still empty (the engine wheel shares them)."""
    cell = plan.cell
    return {
        "tier": cell.tier,
        "os": cell.os,
        "arch": cell.arch,
        "key": plan.key,
        "llama_cpp_commit": commit,
        "source": recipe.source.identity,
        "source_sha256": source_sha,
        "patches": [{"file": n, "sha256": h} for n, h in plan.key_inputs["patches"]],  # type: ignore[attr-defined]
        "cmake_flags": dict(cell.cmake),
        "toolchain": {"name": toolchain.name, **toolchain.versions},
        "cuda_archs": list(cell.cuda_archs),
        "min_nvidia_driver": cell.min_nvidia_driver,
        "runtime_needs": list(cell.runtime_needs),
        "size_bytes": 0,
        "size_budget_mb": cell.size_budget_mb,
        "binaries": {"llama-server": "bin/llama-server", "llama-bench": "bin/llama-bench"},
        "files": {},
        "layout": LAYOUT_VERSION,
    }


def _write_engine_json(dest: Path, plan: EnginePlan, recipe: EngineRecipe, toolchain: Toolchain,
                       source_sha: str, commit: str, build_seconds: float) -> dict[str, object]:
    size = dir_size(dest)
    info = engine_info(plan, recipe, toolchain, source_sha, commit)
    info["size_bytes"] = size
    info["files"] = {p.relative_to(dest).as_posix(): file_sha256(p)
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


WEBUI_CMAKE = {"LLAMA_BUILD_UI": "ON", "LLAMA_USE_PREBUILT_UI": "OFF"}


def with_webui(cell: Cell) -> Cell:
    """``cell`` with llama.cpp's web UI built into llama-server (its own cache entry).

    llama.cpp's CMake builds the UI from the pinned source's ``tools/ui`` with
    ``npm ci`` (versions pinned by its package-lock.json) and ``npm run build``
    inside the build folder, and embeds the result, gzip-compressed, in the
    server (about 2.5 MB more). It needs npm and the npm registry at build time.
    """
    import dataclasses

    if not shutil.which("npm"):
        raise ToolError("the web UI needs npm to build it (Node.js 18 or newer)",
                        hint="install Node.js and npm, or leave out --webui")
    return dataclasses.replace(cell, cmake=tuple(sorted({**cell.cmake_dict, **WEBUI_CMAKE}.items())))


def wants_webui(cell: Cell) -> bool:
    return cell.cmake_dict.get("LLAMA_BUILD_UI") == "ON"


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

    from dxbuild.wheel import installed_engine

    wheel = installed_engine(cell, recipe, echo)   # before provisioning: decided without running a compiler
    if wheel:
        return wheel
    toolchain = toolchains.provision(cell, cache, log)
    patch_hashes = tuple((p.name, file_sha256(p)) for p in recipe.patch_paths())
    plan = plan_engine(cell, recipe, toolchain, patch_hashes)
    hit = cached_engine(plan, cache)
    if hit:
        if echo:
            echo(f"engine {cell.name}: cache hit ({plan.key[:16]})")
        return hit
    with _build_lock(cache / "engines" / f".{plan.dir_name}.lock", cell.name, echo), _sigterm_as_exit():
        hit = cached_engine(plan, cache)
        if hit:   # another process built it while we waited
            if echo:
                echo(f"engine {cell.name}: built by another process ({plan.key[:16]})")
            return hit
        # under the lock, leftovers of this key are from a killed build: remove them
        for stale in [*(cache / "engines").glob(f".{plan.dir_name}.tmp-*"), *(cache / "build").glob(f"{plan.dir_name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        return _build_new(plan, cell, recipe, toolchain, cache, log, progress, echo, t0)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While building, SIGTERM unwinds like Ctrl-C: the tool tree is stopped and temp folders removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _build_lock(path: Path, what: str, echo: Echo | None) -> Iterator[None]:
    """One build per engine key at a time across processes; the others wait, then hit the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; the atomic rename still keeps entries whole
            yield
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if echo:
                echo(f"engine {what}: another process is building it; waiting")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_new(plan: EnginePlan, cell: Cell, recipe: EngineRecipe, toolchain: Toolchain, cache: Path,
               log: Path, progress: Progress, echo: Echo | None, t0: float) -> Path:
    if echo:
        echo(f"engine {cell.name}: building (key {plan.key[:16]}); log: {log}")
    progress.start("fetch and verify source")
    src = prepare_source(recipe, cache=cache, log=log, echo=echo)

    scratch = cache / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f"{plan.dir_name}-", dir=scratch))
    final = cache / "engines" / plan.dir_name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.dir_name}.tmp-", dir=final.parent))
    ok = stopped = False
    try:
        env = _build_env(toolchain, src.path, build)
        progress.start("configure (CMake)")
        run_cmd(_cmake_configure_cmd(plan, toolchain, src.path, build), log=log, env=env, echo=echo,
                what="CMake configure")
        progress.start("compile")
        run_cmd([toolchain.cmake, "--build", str(build), "--target", *plan.targets, "-j", _jobs()],
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
    patch_hashes = tuple((p.name, file_sha256(p)) for p in recipe.patch_paths())
    plan = plan_engine(cell, recipe, toolchain, patch_hashes)
    src = prepare_source(recipe, cache=cache, log=log, echo=echo)
    build = cache / "build" / f"{plan.dir_name}-configured"
    shutil.rmtree(build, ignore_errors=True)
    build.parent.mkdir(parents=True, exist_ok=True)
    if echo:
        echo(f"configure {cell.name}; log: {log}")
    run_cmd(_cmake_configure_cmd(plan, toolchain, src.path, build), log=log,
            env=_build_env(toolchain, src.path, build), echo=echo, what="CMake configure")
    return build


def host_engine(tier: str = "cpu", *, cuda_archs: tuple[str, ...] | None = None, cache: Path | None = None,
                echo: Echo | None = stderr_echo, webui: bool = False) -> Path:
    """The engine directory for ``tier`` on this machine, from the cache or built now.

    The one call other parts use (``dxbuild engine``, the mint pipeline, the
    ``cpu_engine`` test fixture): recipe + matrix resolve into a Cell here.
    """
    from dxbuild.recipes import get_tier, load_engine_recipe
    from dxmatrix.definition import load_matrix
    from dxmatrix.expand import host_cell

    recipe = load_engine_recipe()
    cell = host_cell(get_tier(tier), recipe, cuda_archs=cuda_archs, runners=load_matrix().runners)
    if webui:
        cell = with_webui(cell)
    return build_engine(cell, recipe, cache=cache, echo=echo)
