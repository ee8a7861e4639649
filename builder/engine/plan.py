"""What an engine build will do, decided before doing it: the cache key and the CMake values (pure).

The key is the hash of everything that decides the engine's bytes: source
identity, patch contents, final CMake values, toolchain versions, target and
the layout version below. The engine wheel (``dxbuild.engine.wheel``) plans
from the same function, so its ``engine.json`` key is the cached engine's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass

from dxbuild.toolchains import Toolchain
from dxmatrix.cell import Cell
from dxmatrix.recipes import EngineRecipe
from dxverify.errors import ToolError

LAYOUT_VERSION = 2  # 2: source paths mapped for ccache too (entries built before that differ in __FILE__ strings)
#: Fixed timestamp for reproducible builds (1980-01-01, valid in zip too).
SOURCE_DATE_EPOCH = "315532800"


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

WEBUI_CMAKE = {"LLAMA_BUILD_UI": "ON", "LLAMA_USE_PREBUILT_UI": "OFF"}


def with_webui(cell: Cell) -> Cell:
    """``cell`` with llama.cpp's web UI built into llama-server (its own cache entry).

    llama.cpp's CMake builds the UI from the pinned source's ``tools/ui`` with
    ``npm ci`` (versions pinned by its package-lock.json) and ``npm run build``
    inside the build folder, and embeds the result, gzip-compressed, in the
    server (about 2.5 MB more). It needs npm and the npm registry at build time.
    """
    if not shutil.which("npm"):
        raise ToolError("the web UI needs npm to build it (Node.js 18 or newer)",
                        hint="install Node.js and npm, or leave out --webui")
    return dataclasses.replace(cell, cmake=tuple(sorted({**cell.cmake_dict, **WEBUI_CMAKE}.items())))


def wants_webui(cell: Cell) -> bool:
    return cell.cmake_dict.get("LLAMA_BUILD_UI") == "ON"


