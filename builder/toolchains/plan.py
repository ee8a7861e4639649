"""The cells this machine builds: the matrix's pure planning (``dxmatrix.expand``) plus this host's toolchains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dxbuild.toolchains import host_problem
from dxbuild.toolchains.host import HOST_ARCH, HOST_OS
from dxmatrix.cell import Cell
from dxmatrix.definition import load_matrix
from dxmatrix.expand import cell_for_host
from dxmatrix.recipes import EngineRecipe, Tier, get_tier, load_engine_recipe


def host_cell(tier: Tier, engine: EngineRecipe, *, arch: str | None = None,
              cuda_archs: Sequence[str] | None = None, runners: Mapping[str, str] | None = None) -> Cell:
    """The cell for building ``tier`` on this machine (``dxbuild engine``).

    ``arch`` (``arm64`` or ``aarch64``) other than this machine's is a cross
    build, accepted when a cross toolchain for it is here (the cpu tier on
    Linux: ``dxbuild.toolchains.cross_gnu``).
    """
    return cell_for_host(tier, engine, host_os=HOST_OS, host_arch=HOST_ARCH, problem=host_problem, arch=arch,
                         cuda_archs=cuda_archs, runners=runners)


def host_plan(cells: Sequence[Cell]) -> list[tuple[Cell, str | None]]:
    """Each cell with the reason this host cannot build it, or None when it can."""
    return [(c, host_problem(c)) for c in cells]


def plan_host_cell(tier: str, *, arch: str | None = None,
                   cuda_archs: Sequence[str] | None = None) -> tuple[Cell, EngineRecipe]:
    """Recipes + matrix resolved into the cell for ``tier`` here, with the engine recipe it builds from."""
    recipe = load_engine_recipe()
    return host_cell(get_tier(tier), recipe, arch=arch, cuda_archs=cuda_archs, runners=load_matrix().runners), recipe
