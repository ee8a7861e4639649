"""Expand the matrix into cells, and resolve the cell a given host builds.

:func:`expand` is pure: recipes and the matrix file in, an ordered list of
frozen cells out. Every rule must do something — an exclude that matches no
cell, or an include that adds nothing new, is a mistake in the file and is
reported as one, naming the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dxmatrix.cell import Cell, normalize_arch, resolve_cell
from dxmatrix.definition import MatrixFile
from dxmatrix.recipes import EngineRecipe, Tier
from dxmatrix.typed_config import suggest
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


def cell_for_host(tier: Tier, engine: EngineRecipe, *, host_os: str, host_arch: str,
                  problem: Callable[[Cell], str | None], arch: str | None = None,
                  cuda_archs: Sequence[str] | None = None, runners: Mapping[str, str] | None = None) -> Cell:
    """The cell for building ``tier`` on a ``host_os``/``host_arch`` machine (pure).

    ``arch`` (``arm64`` or ``aarch64``) other than the host's is a cross build,
    accepted when ``problem(cell)`` (the caller's toolchain check) finds none.
    """
    arch = normalize_arch(arch) if arch is not None else host_arch
    if host_os not in tier.os:
        raise UnsupportedError(f"tier {tier.name} cannot be built on {host_os}: it applies to {', '.join(tier.os)}",
                               hint="build it on a runner of that OS (see `dxbuild matrix`)")
    cell = resolve_cell(engine, tier, host_os, arch, runners=runners, cuda_archs=cuda_archs)
    if arch != host_arch:
        why = problem(cell)
        if why:
            raise UnsupportedError(f"cannot build {tier.name} for {arch} on this {host_arch} machine: {why}")
    return cell
