"""The whole engine build pipeline (hash-checked dir source → patch → CMake → install → cache),
run for real on a tiny C project that stands in for llama.cpp, so it takes seconds.

Covers what the full llama.cpp build would take minutes to show: the install
layout and rpath, stripping, engine.json, the cache hit, an interrupted build
leaving no cache entry, and a failing compile showing its tail and log path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from support.tools import need
from support.waits import wait_until

from dxbuild.engine.build import build_engine
from dxbuild.engine.source import tree_hash
from dxmatrix.cell import resolve_cell
from dxmatrix.recipes import EngineRecipe, EngineSource, get_tier
from dxverify.errors import IntegrityError, ToolError

pytestmark = pytest.mark.integration

CMAKELISTS = """
cmake_minimum_required(VERSION 3.16)
project(tinyengine C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
option(DX_TEST_SLOW "sleep during the build" OFF)
option(DX_TEST_BROKEN "fail to compile" OFF)
add_library(llama SHARED llama.c)
set_target_properties(llama PROPERTIES VERSION 0.0.1 SOVERSION 0)
add_library(ggml-cpu-test MODULE backend.c)
add_executable(llama-server server.c)
add_executable(llama-bench server.c)
target_link_libraries(llama-server llama)
target_link_libraries(llama-bench llama)
add_dependencies(llama ggml-cpu-test)
if(DX_TEST_SLOW)
  add_custom_target(slow COMMAND ${CMAKE_COMMAND} -E sleep 60)
  add_dependencies(llama slow)
endif()
if(DX_TEST_BROKEN)
  target_compile_definitions(llama PRIVATE DX_TEST_BROKEN)
endif()
"""

SOURCES = {
    "llama.c": "#ifdef DX_TEST_BROKEN\n#error deliberately broken for the test\n#endif\n"
               "int llama_answer(void) { return 42; }\n",
    "backend.c": "int ggml_backend_score(void) { return 1; }\n",
    "server.c": "#include <stdio.h>\nint llama_answer(void);\n"
                "int main(void) { printf(\"%d\\n\", llama_answer()); return 0; }\n"
                "const char *dx_where = __FILE__;\n",
}

PATCH = """--- a/server.c
+++ b/server.c
@@ -1,4 +1,4 @@
 #include <stdio.h>
 int llama_answer(void);
-int main(void) { printf("%d\\n", llama_answer()); return 0; }
+int main(void) { printf("patched %d\\n", llama_answer()); return 0; }
 const char *dx_where = __FILE__;
"""


def _tiny(tmp_path: Path, **cmake: str) -> EngineRecipe:
    src = tmp_path / "tiny-llama"
    src.mkdir(exist_ok=True)
    (src / "CMakeLists.txt").write_text(textwrap.dedent(CMAKELISTS))
    for name, text in SOURCES.items():
        (src / name).write_text(text)
    rdir = tmp_path / "recipes"
    (rdir / "patches").mkdir(parents=True, exist_ok=True)
    (rdir / "patches" / "0001-say-patched.patch").write_text(PATCH)
    return EngineRecipe(
        source=EngineSource(kind="dir", path=str(src), sha256=tree_hash(src)),
        patches=("0001-say-patched.patch",),
        targets=("llama-server", "llama-bench"),
        cmake={"CMAKE_BUILD_TYPE": "Release", **cmake},
        recipe_dir=rdir,
    )


def _cell(recipe: EngineRecipe):  # type: ignore[no-untyped-def]
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS

    return resolve_cell(recipe, get_tier("cpu"), HOST_OS, HOST_ARCH)


def test_build_install_and_cache_hit(tmp_path: Path) -> None:
    recipe = _tiny(tmp_path)
    cache = tmp_path / "cache"
    seen: list[str] = []
    engine = build_engine(_cell(recipe), recipe, cache=cache, echo=seen.append)
    assert engine.parent == cache / "engines" and engine.name.startswith("cpu-")
    assert any("==> compile" in s for s in seen) and any("compile: [" in s for s in seen)
    out = subprocess.run([str(engine / "bin" / "llama-server")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "patched 42"            # DX's patch was applied
    assert (engine / "bin" / "libggml-cpu-test.so").is_file()   # backend module next to the executable
    assert (engine / "lib" / "libllama.so.0").is_symlink()
    assert "$ORIGIN/../lib" in subprocess.run(["readelf", "-d", str(engine / "bin" / "llama-server")],
                                             capture_output=True, text=True).stdout
    assert ".symtab" not in subprocess.run(["readelf", "-S", str(engine / "bin" / "llama-server")],
                                           capture_output=True, text=True).stdout
    info = json.loads((engine / "engine.json").read_text())
    assert info["patches"][0]["file"] == "0001-say-patched.patch" and info["source"].startswith("dir:")
    assert "build_seconds" not in info                   # engine.json is input-decided only
    # moved elsewhere, the engine still runs: nothing points back at the build tree
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(engine), str(moved)], check=True)
    assert subprocess.run([str(moved / "bin" / "llama-server")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}).stdout.strip() == "patched 42"
    # the second run is a cache hit and builds nothing
    seen.clear()
    t0 = time.monotonic()
    again = build_engine(_cell(recipe), recipe, cache=cache, echo=seen.append)
    assert again == engine and any("cache hit" in s for s in seen)
    assert not any("==> compile" in s for s in seen)
    assert time.monotonic() - t0 < 60   # sanity bound only; the number itself is in tests/bench
    assert not list((cache / "engines").glob(".*.tmp-*")) and not list((cache / "build").iterdir())


def test_changed_source_is_refused(tmp_path: Path) -> None:
    recipe = _tiny(tmp_path)
    (Path(recipe.source.path) / "llama.c").write_text("int llama_answer(void) { return 7; }\n")
    with pytest.raises(IntegrityError, match="tree hash mismatch"):
        build_engine(_cell(recipe), recipe, cache=tmp_path / "cache", echo=None)
    engines = tmp_path / "cache" / "engines"
    assert not [p for p in engines.iterdir() if not p.name.endswith(".lock")]


def test_compile_failure_shows_tail_and_log(tmp_path: Path) -> None:
    recipe = _tiny(tmp_path, DX_TEST_BROKEN="ON")
    with pytest.raises(ToolError) as ei:
        build_engine(_cell(recipe), recipe, cache=tmp_path / "cache", echo=None)
    msg = str(ei.value)
    assert msg.startswith("compile failed") and "deliberately broken for the test" in msg
    log = Path(msg.split("full log: ")[1].split("\n")[0])
    assert log.is_file() and "deliberately broken" in log.read_text()
    assert not [p for p in (tmp_path / "cache" / "engines").iterdir() if not p.name.endswith(".lock")]


def _sleep_step_runs(pid: int) -> bool:
    """Is a `cmake -E sleep` running among the descendants of ``pid`` (read from /proc)?"""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])

    def under(p: int) -> bool:
        while p > 1:
            p = parent.get(p, 0)
            if p == pid:
                return True
        return False

    for p in parent:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            if b"-E" in argv and b"sleep" in argv and under(p):
                return True
    return False


def _read_lines(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_build_leaves_no_entry(tmp_path: Path, sig: signal.Signals) -> None:
    recipe = _tiny(tmp_path, DX_TEST_SLOW="ON")
    cache = tmp_path / "cache"
    # SIGINT as Ctrl-C delivers it to a command in the foreground: the suite itself may have been
    # started where SIGINT is ignored (`./test.sh &` from a script, some CI runners), and Python
    # keeps an inherited SIG_IGN, so without this line SIGINT would never reach the build.
    script = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pathlib import Path
        from dxbuild.engine.build import build_engine
        from dxmatrix.recipes import EngineRecipe, EngineSource, get_tier
        from dxmatrix.cell import resolve_cell
        from dxbuild.toolchains.host import HOST_OS, HOST_ARCH
        r = EngineRecipe(source=EngineSource(kind="dir", path={recipe.source.path!r}, sha256={recipe.source.sha256!r}),
                         patches={recipe.patches!r}, targets={recipe.targets!r}, cmake={recipe.cmake!r},
                         recipe_dir=Path({str(recipe.recipe_dir)!r}))
        build_engine(resolve_cell(r, get_tier("cpu"), HOST_OS, HOST_ARCH), r, cache=Path({str(cache)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    said: list[str] = []   # stderr, read on a thread: waiting for a line gets a deadline, the pipe never fills
    reader = threading.Thread(target=_read_lines, args=(proc.stderr, said), daemon=True)
    reader.start()
    try:
        def in_the_sleep_step() -> bool:
            assert proc.poll() is None, "the build ended before its sleep step:\n" + "".join(said)
            return any("==> compile" in s for s in said) and _sleep_step_runs(proc.pid)

        wait_until(in_the_sleep_step, "the build to be inside its 60 s `cmake -E sleep` step", timeout=120)
        proc.send_signal(sig)
        sent = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:      # a failed run leaves no build running into the rest of the suite
            proc.terminate()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    assert proc.returncode != 0
    assert took < 10, f"the build took {took:.1f}s to stop"   # promptly: SIGTERM is enough, no 5 s escalation
    engines = cache / "engines"
    assert not [p for p in engines.iterdir() if not p.name.endswith(".lock")], list(engines.iterdir())
    assert not list((cache / "build").iterdir()), "".join(said)   # an interrupted build keeps no build folder
    # no tool left running in the background
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(cache / "build") not in ps


@pytest.mark.parametrize("launcher", ["", "ccache"])
def test_source_paths_are_mapped_with_and_without_ccache(tmp_path: Path, launcher: str) -> None:
    """__FILE__ reads /dx/llama.cpp/... whether or not ccache rewrote the paths (reproducible bytes)."""

    if launcher:
        need(launcher)
    extra = {"CMAKE_C_COMPILER_LAUNCHER": launcher} if launcher else {}
    recipe = _tiny(tmp_path, **extra)
    engine = build_engine(_cell(recipe), recipe, cache=tmp_path / "cache", echo=None)
    data = (engine / "bin" / "llama-server").read_bytes()
    assert b"/dx/llama.cpp/server.c" in data
    assert str(tmp_path).encode() not in data and b"sources/patched-" not in data
