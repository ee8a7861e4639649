"""Expand the matrix into cells, and plan what this host can build.

:func:`expand` is pure: recipes and the matrix file in, an ordered list of
frozen cells out. Every rule must do something — an exclude that matches no
cell, or an include that adds nothing new, is a mistake in the file and is
reported as one, naming the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dxbuild.recipes import EngineRecipe, Tier, suggest
from dxmatrix.cell import Cell, resolve_cell
from dxmatrix.definition import MatrixFile
from dxverify.errors import ConfigurationError, UnsupportedError


def expand(matrix: MatrixFile, tiers: Mapping[str, Tier], engine: EngineRecipe) -> list[Cell]:
    """All cells of the release matrix, in tier, os, arch order (pure)."""
    where = matrix.source or "matrix"
    for name in matrix.tiers:
        if name not in tiers:
            raise ConfigurationError(f"{where}: tiers: {name!r} is not defined in recipes/tiers.toml"
                                     f"{suggest(name, tiers)}")
    combos: list[tuple[str, str, str]] = [
        (t, o, a) for t in matrix.tiers for o in matrix.os for a in matrix.arch
        if o in tiers[t].os and a in tiers[t].arch
    ]
    for i, rule in enumerate(matrix.exclude):
        kept = [c for c in combos if not rule.matches(*c)]
        if len(kept) == len(combos):
            raise ConfigurationError(f"{where}: exclude[{i}] ({rule.describe()}) matches no cell",
                                     hint="remove the rule or fix its values")
        combos = kept
    for i, rule in enumerate(matrix.include):
        assert rule.tier and rule.os and rule.arch  # MatrixFile checked this
        cell = (rule.tier, rule.os, rule.arch)
        if rule.tier not in tiers:
            raise ConfigurationError(f"{where}: include[{i}]: tier {rule.tier!r} is not defined")
        tier = tiers[rule.tier]
        if rule.os not in tier.os or rule.arch not in tier.arch:
            raise ConfigurationError(
                f"{where}: include[{i}] ({rule.describe()}): tier {rule.tier} is not built for {rule.os}-{rule.arch}",
                hint=f"it applies to os {', '.join(tier.os)} and arch {', '.join(tier.arch)} (recipes/tiers.toml)")
        if cell in combos:
            raise ConfigurationError(f"{where}: include[{i}] ({rule.describe()}) is already in the matrix",
                                     hint="remove the rule")
        combos.append(cell)
    order = {t: i for i, t in enumerate(tiers)}
    combos.sort(key=lambda c: (order.get(c[0], 99), c[1], c[2]))
    cells = []
    for t, o, a in combos:
        if f"{o}-{a}" not in matrix.runners:
            raise ConfigurationError(f"{where}: no runner for {o}-{a} (needed by {t}-{o}-{a})",
                                     hint=f'add {o}-{a} = "<runner label>" under [runners]')
        cells.append(resolve_cell(engine, tiers[t], o, a, runners=matrix.runners))
    return cells


def github_matrix(cells: Sequence[Cell]) -> dict[str, list[dict[str, object]]]:
    """The shape GitHub Actions takes as ``strategy.matrix``: ``{"include": [...]}``."""
    return {"include": [c.as_json() for c in cells]}


def host_plan(cells: Sequence[Cell]) -> list[tuple[Cell, str | None]]:
    """Each cell with the reason this host cannot build it, or None when it can."""
    from dxbuild.toolchains import host_problem

    return [(c, host_problem(c)) for c in cells]


def host_cell(tier: Tier, engine: EngineRecipe, *, arch: str | None = None,
              cuda_archs: Sequence[str] | None = None, runners: Mapping[str, str] | None = None) -> Cell:
    """The cell for building ``tier`` on this machine (``dxbuild engine``).

    ``arch`` (``arm64`` or ``aarch64``) other than this machine's is a cross
    build, accepted when a cross toolchain for it is here (the cpu tier on
    Linux: ``dxbuild.toolchains.cross_gnu``).
    """
    from dxbuild.toolchains import host_problem
    from dxbuild.toolchains.host import HOST_ARCH, HOST_OS
    from dxmatrix.cell import normalize_arch

    arch = normalize_arch(arch) if arch is not None else HOST_ARCH
    if HOST_OS not in tier.os:
        raise UnsupportedError(f"tier {tier.name} cannot be built on {HOST_OS}: it applies to {', '.join(tier.os)}",
                               hint="build it on a runner of that OS (see `dxbuild matrix`)")
    cell = resolve_cell(engine, tier, HOST_OS, arch, runners=runners, cuda_archs=cuda_archs)
    if arch != HOST_ARCH:
        problem = host_problem(cell)
        if problem:
            raise UnsupportedError(f"cannot build {tier.name} for {arch} on this {HOST_ARCH} machine: {problem}")
    return cell
