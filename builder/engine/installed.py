"""An installed engine wheel (``dx-engine-<tier>``) as the engine: found, checked against the plan, never rebuilt.

An installed wheel whose ``engine.json`` key is the one this recipe plans is
the engine; ``dxbuild.engine.build`` asks here before provisioning any toolchain.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dxbuild.engine.plan import plan_engine
from dxbuild.run_cmd import Echo, stderr_echo
from dxbuild.toolchains import Toolchain
from dxmatrix.cell import Cell
from dxmatrix.recipes import EngineRecipe
from dxverify.hashing import sha256_file


def dist_name(tier: str) -> str:
    return f"dx-engine-{tier}"


def package_name(tier: str) -> str:
    return f"dx_engine_{tier}"


def installed_engine_dir(tier: str) -> Path | None:
    """The package folder of an importable ``dx_engine_<tier>`` (found, not imported), if it has an engine.json."""
    try:
        spec = importlib.util.find_spec(package_name(tier))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / "engine.json").is_file():
            return Path(loc)
    return None


def installed_engine(cell: Cell, recipe: EngineRecipe, echo: Echo | None = stderr_echo) -> Path | None:
    """An installed engine wheel's folder when it was built from exactly what ``cell`` plans, else None.

    Decided without running a tool: the plan's key is recomputed with the
    toolchain the wheel records (the machine minting from a wheel need not have
    a compiler at all) and compared with the wheel's key, so any other
    difference — source, patches, CMake values, target — is a miss, said in one line.
    """
    folder = installed_engine_dir(cell.tier)
    if folder is None:
        return None
    try:
        info = json.loads((folder / "engine.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (info.get("os"), info.get("arch")) != (cell.os, cell.arch):
        return None
    recorded = dict(info.get("toolchain") or {})
    stand_in = Toolchain(name=str(recorded.pop("name", "")), cmake="", ninja="",
                         versions={k: str(v) for k, v in recorded.items()})
    patch_hashes = tuple((p.name, sha256_file(p)) for p in recipe.patch_paths())
    key = plan_engine(cell, recipe, stand_in, patch_hashes).key
    if key != info.get("key"):
        if echo:
            echo(f"engine {cell.name}: the installed {dist_name(cell.tier)} has engine key "
                 f"{str(info.get('key'))[:16]}, this recipe plans {key[:16]}: building it instead")
        return None
    if echo:
        echo(f"engine {cell.name}: from the installed {dist_name(cell.tier)} wheel ({key[:16]}): {folder}")
    return folder
