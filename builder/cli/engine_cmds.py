"""`dxbuild engine`, `wheel`, `matrix` and `schema`: the engine and plan commands (listed in `dxbuild.cli.COMMANDS`).

Heavy modules are imported inside the commands so `dxbuild --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("engine")
@click.option("--tier", required=True, metavar="TIER", help="cpu, cuda13, cuda12, vulkan, rocm, metal")
@click.option("--arch", metavar="ARCH", help="x86_64 or arm64 (default: this machine)")
@click.option("--cuda-archs", metavar="LIST", help='CUDA architectures, e.g. "90" or "86;90" (CUDA tiers)')
@click.option("--webui", is_flag=True, help="Build llama.cpp's web UI into llama-server (needs npm; +2.5 MB).")
@click.option("--configure-only", is_flag=True, help="Stop after CMake configure (checks the toolchain).")
@click.option("--json", "as_json", is_flag=True, help="Print engine.json instead of the directory.")
def engine_cmd(tier: str, arch: str | None, cuda_archs: str | None, webui: bool, configure_only: bool,
               as_json: bool) -> None:
    """Build (or find in the cache) llama-server + llama-bench for TIER; print the engine directory."""
    from dxbuild.engine.build import build_engine
    from dxbuild.engine.build import configure_only as do_configure_only
    from dxbuild.engine.plan import with_webui
    from dxbuild.toolchains.plan import host_cell
    from dxmatrix.cell import parse_cuda_archs
    from dxmatrix.definition import load_matrix
    from dxmatrix.recipes import get_tier, load_engine_recipe

    recipe = load_engine_recipe()
    archs = parse_cuda_archs(cuda_archs) if cuda_archs is not None else None
    cell = host_cell(get_tier(tier), recipe, arch=arch, cuda_archs=archs, runners=load_matrix().runners)
    if webui:
        cell = with_webui(cell)
    if configure_only:
        build_dir = do_configure_only(cell, recipe)
        click.echo(str(build_dir))
        return
    path = build_engine(cell, recipe)
    if as_json:
        click.echo((path / "engine.json").read_text(), nl=False)
    else:
        click.echo(str(path))


@click.command("matrix")
@click.option("--json", "as_json", is_flag=True, help="Print a GitHub Actions strategy.matrix ({\"include\": [...]}).")
@click.option("--host", "host_only", is_flag=True,
              help="Each cell: builds and runs here, builds here, or why not (--json: the buildable cells).")
def matrix_cmd(as_json: bool, host_only: bool) -> None:
    """Show the release matrix: tier × os × arch after include/exclude."""
    from dxbuild.toolchains.plan import host_plan
    from dxmatrix.definition import load_matrix
    from dxmatrix.expand import expand, github_matrix
    from dxmatrix.recipes import load_engine_recipe, load_tiers

    cells = expand(load_matrix(), load_tiers(), load_engine_recipe())
    if host_only:
        from dxbuild.toolchains.run_here import run_problem

        plan = host_plan(cells)
        if as_json:
            click.echo(json.dumps(github_matrix([c for c, why in plan if why is None]), indent=2))
            return
        for c, why in plan:
            if why is not None:
                click.echo(f"{c.name:24} no: {why}")
                continue
            run_why, how = run_problem(c)
            if run_why is None:
                click.echo(f"{c.name:24} builds and runs here ({how})")
            else:
                click.echo(f"{c.name:24} builds here; does not run here: {run_why}")
        return
    if as_json:
        click.echo(json.dumps(github_matrix(cells), indent=2))
        return
    rows = [("TIER", "OS", "ARCH", "RUNNER", "TOOLCHAIN", "MIN DRIVER", "BUDGET MB")]
    rows += [(c.tier, c.os, c.arch, c.runner, c.toolchain,
              str(c.min_nvidia_driver) if c.min_nvidia_driver else "-", str(c.size_budget_mb)) for c in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    click.echo(f"{len(cells)} cells")


@click.command("schema")
@click.option("--write", is_flag=True, help="Regenerate the committed JSON schemas.")
def schema_cmd(write: bool) -> None:
    """Check (default) or regenerate the JSON schemas of recipes/*.toml and matrix/matrix.toml."""
    from dxbuild.release.schema_files import check_schemas, write_schemas

    if write:
        for p in write_schemas():
            click.echo(f"wrote {p}")
        return
    stale = check_schemas()
    if stale:
        from dxverify.errors import ConfigurationError

        raise ConfigurationError(f"schemas out of date: {', '.join(map(str, stale))}",
                                 hint="run `dxbuild schema --write` and commit the result")
    click.echo("schemas up to date")


@click.command("wheel")
@click.option("--tier", required=True, metavar="TIER", help="cpu, cuda13, vulkan, …: builds dx-engine-TIER.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"),
              show_default=True, help="Directory to write the wheel to.")
@click.option("--cuda-archs", metavar="LIST", help='Narrow a CUDA tier, e.g. "90" (releases use the recipe\'s list).')
@click.option("--metadata", is_flag=True, help="Print the wheel's METADATA (from scikit-build-core; compiles nothing).")
def wheel_cmd(tier: str, out_dir: Path, cuda_archs: str | None, metadata: bool) -> None:
    """Build the engine wheel dx-engine-TIER with scikit-build-core (cached by the engine key); print its path."""
    from dxbuild.engine.wheel import build_wheel, wheel_metadata
    from dxmatrix.cell import parse_cuda_archs

    if metadata:
        click.echo(wheel_metadata(tier), nl=False)
        return
    archs = parse_cuda_archs(cuda_archs) if cuda_archs is not None else None
    click.echo(str(build_wheel(tier, out_dir, cuda_archs=archs, echo=lambda line: click.echo(line, err=True)).path))
