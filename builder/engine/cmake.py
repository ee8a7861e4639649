"""The CMake build of one planned engine, in pieces both engine builds share.

``dxbuild.engine.build`` (the cached engine directory) and ``dxbuild.engine.wheel``
(scikit-build-core) run the same configure line, environment, job count and
install layout, so both give the same bytes for the same plan.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dxbuild.engine.plan import LAYOUT_VERSION, SOURCE_DATE_EPOCH, EnginePlan
from dxbuild.run_cmd import Echo, run_cmd, stderr_echo
from dxbuild.toolchains import Toolchain
from dxmatrix.recipes import EngineRecipe
from dxverify.errors import ToolError

#: Where the source and build folders appear in debug info and __FILE__.
SRC_PREFIX = "/dx/llama.cpp"
BUILD_PREFIX = "/dx/build"
_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
# ggml's loadable backends, by file name; arm64 CPU variants have dots (libggml-cpu-armv8.2_1.so)
_BACKEND_MODULE = re.compile(r"^(lib)?ggml-(?!base)[a-z0-9_.-]+?\.(so|dll|dylib)$")



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


def scratch_dir(cache: Path, prefix: str) -> Path:
    """A new empty folder ``cache/build/<prefix>…``: every build folder at one depth, which :func:`build_env`'s
    CCACHE_BASEDIR (two levels up) relies on, so ccache's relative paths agree between engine and wheel builds."""
    scratch = cache / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))


def build_env(toolchain: Toolchain, src: Path, build: Path) -> dict[str, str]:
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


def cmake_configure_cmd(plan: EnginePlan, toolchain: Toolchain, src: Path, build: Path) -> list[str]:
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


def jobs() -> str:
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



@contextlib.contextmanager
def build_lock(path: Path, what: str, echo: Echo | None) -> Iterator[None]:
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


